"""The temporal shift module (issue 23): exact channel moves on hand-built tensors, per clip and per view, the
backbones it fits, and a TSM that moves nothing equal to TSN bit for bit."""

from __future__ import annotations

import pytest
import torch

from tsn.config import ConfigError, load_config
from tsn.build import build_tsn
from tsn.evaluation.evaluate import view_scores
from tsn.models import build_model
from tsn.models.temporal import ShiftedConv2d, shifted_convs, temporal_shift

N, T, C = 3, 4, 16  # clips, segments, channels: fold 2 with shift_div 8


def coded(clips: int = N, segments: int = T, channels: int = C) -> torch.Tensor:
    """(clips * segments, channels, 2, 2): every value says its clip, segment and channel: 1000 n + 100 t + c + 1."""
    n, t, c = torch.meshgrid(torch.arange(clips), torch.arange(segments), torch.arange(channels), indexing="ij")
    values = (1000 * n + 100 * t + c + 1).float().reshape(clips * segments, channels, 1, 1)
    return values.expand(-1, -1, 2, 2).contiguous()


def value(n: int, t: int, c: int) -> float:
    return float(1000 * n + 100 * t + c + 1)


@pytest.mark.parametrize("direction", ["bidirectional", "causal"])
def test_the_shift_moves_one_fold_each_way_within_each_clip_with_zeros_at_the_ends(direction: str) -> None:
    out = temporal_shift(coded(), T, 8, direction)[:, :, 0, 0].reshape(N, T, C)
    fold = C // 8
    for n in range(N):
        for t in range(T):
            for c in range(C):
                if direction == "bidirectional" and c < fold:  # from the next segment of the same clip
                    expected = value(n, t + 1, c) if t + 1 < T else 0.0
                elif direction == "bidirectional" and c < 2 * fold:  # from the previous one
                    expected = value(n, t - 1, c) if t > 0 else 0.0
                elif direction == "causal" and c < fold:
                    expected = value(n, t - 1, c) if t > 0 else 0.0
                else:
                    expected = value(n, t, c)
                assert out[n, t, c] == expected, (n, t, c)


def test_the_shift_keeps_channels_last_and_refuses_broken_clips() -> None:
    x = coded().to(memory_format=torch.channels_last)
    out = temporal_shift(x, T, 8, "bidirectional")
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, temporal_shift(coded(), T, 8, "bidirectional"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not whole clips of 4 segments"):
        temporal_shift(coded()[:-1], T, 8, "bidirectional")
    assert temporal_shift(x, T, 32, "causal") is x  # 16 channels // 32: nothing moves


def test_views_of_one_video_and_videos_of_a_batch_never_mix() -> None:
    """Scores of a batch of videos with several views each equal the scores of every view alone."""
    torch.manual_seed(0)
    model = build_model(backbone="resnet18", pretrained=False, num_classes=5, num_segments=T, temporal="tsm").eval()
    clips = torch.randn(2, 3, T, 3, 32, 32)  # (B, V, T, C, H, W)
    with torch.no_grad():
        together = model(clips.flatten(0, 1))  # (B*V, classes)
        alone = torch.cat([model(clips[b, v][None]) for b in range(2) for v in range(3)])
        torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
        averaged = view_scores(model, clips, clips_per_forward=4)  # chunks of 4 views cut across videos
        torch.testing.assert_close(averaged, together.softmax(1).view(2, 3, -1).mean(1), rtol=1e-5, atol=1e-6)


def test_tsm_that_moves_nothing_equals_tsn_bit_for_bit() -> None:
    clips = torch.randn(2, T, 3, 32, 32)
    outputs = {}
    for temporal in ("none", "tsm"):
        torch.manual_seed(0)
        model = build_model(backbone="resnet18", pretrained=False, num_classes=5, num_segments=T, temporal=temporal,
                            shift_div=10_000).eval()
        assert len(shifted_convs(model)) == (8 if temporal == "tsm" else 0)
        with torch.no_grad():
            outputs[temporal] = model(clips)
    assert torch.equal(outputs["tsm"], outputs["none"])


def test_tsm_sees_the_order_of_segments_and_tsn_does_not() -> None:
    clips = torch.randn(1, T, 3, 32, 32)
    backwards = clips.flip(1)
    for temporal, same in (("none", True), ("tsm", False)):
        torch.manual_seed(0)
        model = build_model(backbone="resnet18", pretrained=False, num_classes=5, num_segments=T, temporal=temporal,
                            consensus="feature_max").eval()
        with torch.no_grad():
            forward, reverse = model(clips), model(backwards)
        assert torch.allclose(forward, reverse, atol=1e-5) == same, temporal


# EfficientNet-Lite: every block but the first of each of its 7 stages keeps its shape (16 or 21 blocks)
@pytest.mark.parametrize("backbone, blocks", [("resnet18", 8), ("resnet50", 16), ("mobilenet_v3_large", 10),
                                              ("efficientnet_lite0", 9), ("efficientnet_lite1", 14),
                                              ("efficientnet_lite2", 14)])
def test_tsm_goes_into_every_residual_block_and_keeps_the_state_dict(backbone: str, blocks: int) -> None:
    plain = build_model(backbone=backbone, pretrained=False, num_classes=5, num_segments=T)
    shifted = build_model(backbone=backbone, pretrained=False, num_classes=5, num_segments=T, temporal="tsm",
                          shift_direction="causal")
    convs = shifted_convs(shifted)
    assert len(convs) == blocks and all(isinstance(conv, ShiftedConv2d) for conv in convs)
    assert all(conv.direction == "causal" and conv.segments == T for conv in convs)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in shifted.state_dict().items()}
    shifted.num_segments = 6
    assert all(conv.segments == 6 for conv in convs) and shifted.temporal_shift == "causal"


@pytest.mark.parametrize("backbone", ["vgg16_bn", "bninception"])
def test_backbones_without_residual_blocks_are_refused(backbone: str) -> None:
    cfg = load_config(None, [f"model.backbone={backbone}", "model.pretrained=false", "model.temporal=tsm"])
    with pytest.raises(ConfigError, match=rf"^model\.temporal: tsm shifts channels inside residual blocks, and "
                                          rf"backbone '{backbone}' has none"):
        build_tsn(cfg, 3)


@pytest.mark.parametrize("modality", ["flow", "rgbdiff"])
def test_tsm_shifts_the_segment_stacks_of_flow_and_rgb_difference(modality: str) -> None:
    torch.manual_seed(0)
    model = build_model(backbone="resnet18", pretrained=False, num_classes=5, num_segments=T, temporal="tsm",
                        modality=modality, new_length=2).eval()
    channels, frames = (2, 2) if modality == "flow" else (3, 3)
    with torch.no_grad():
        out = model(torch.randn(2, T * frames, channels, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


# ---------------------------------------------------------------- mirrors that swap classes


def test_a_flipped_training_clip_of_a_mapped_class_gets_the_mapped_label(tmp_path) -> None:
    import numpy as np

    from tsn.data import transforms as T
    from tsn.data.dataset import ClipDataset
    from tsn.data.lists import VideoRecord
    from videos import make_index_video

    for i in range(3):
        make_index_video(tmp_path / f"v{i}.mp4", 12)
    records = [VideoRecord(f"v{i}.mp4", i) for i in range(3)]  # classes: left, right, still
    dataset = ClipDataset(records, tmp_path, "video", "auto", "train", 2, 1, T.ClipTransform((T.Flip(0.5),)),
                          label_mirror=[1, 0, 2])
    seen = set()
    for epoch in range(6):
        for index in range(3):
            sample = dataset[ClipKeyOf(epoch, index)]
            frame = sample.clip[0].permute(1, 2, 0).numpy()  # (H, W, 3): red marker top left unless mirrored
            mirrored = frame[2, -2, 0] > 150 and frame[2, -2, 1] < 100  # the red cell is at the top right
            assert sample.label == ([1, 0, 2][index] if mirrored else index), (epoch, index)
            seen.add((index, bool(mirrored)))
    assert {(0, True), (0, False), (1, True), (1, False)} <= seen


def ClipKeyOf(epoch: int, index: int):
    from tsn.data.dataset import ClipKey

    return ClipKey(epoch, index)


def test_mirrored_test_views_count_for_the_swapped_class() -> None:
    from tsn.evaluation.evaluate import view_scores

    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]]))  # view 0 plain, view 1 mirrored

    def model(clips: torch.Tensor) -> torch.Tensor:
        return logits[: clips.shape[0]]

    clips = torch.zeros(1, 2, 1, 3, 4, 4)  # (B, V, T, C, H, W)
    mirror = (torch.tensor([False, True]), torch.tensor([1, 0, 2]))
    scores = view_scores(model, clips, mirror=mirror)
    torch.testing.assert_close(scores, torch.tensor([[(0.7 + 0.3) / 2, (0.2 + 0.6) / 2, 0.1]]))


def test_flip_settings_are_checked(tmp_path) -> None:
    from tsn.build import build_dataset

    (tmp_path / "test.txt").write_text("v.mp4 0\n")
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    base = [f"data.root={tmp_path}", "data.flip=false"]
    with pytest.raises(ConfigError, match="^test.crops: 10 crops include mirrored views"):
        build_dataset(load_config(None, [*base, "test.crops=10"]), "test", 3)
    with pytest.raises(ConfigError, match="^test.crops: 10 crops include mirrored views"):
        build_dataset(load_config(None, base), "test", 3, crops=10)  # tools/test.py --crops 10
    mapped = build_dataset(load_config(None, [*base, "data.flip_label_map=[[a, b]]"]), "test", 3, crops=10)
    # 2 clips x 10 crops, clip-major: the last 5 crops of each clip are mirrored
    assert mapped.view_mirror()[0].tolist() == ([False] * 5 + [True] * 5) * 2
    assert mapped.view_mirror()[1].tolist() == [1, 0, 2]
    with pytest.raises(ConfigError, match="^data.flip_label_map: 'x' is not one of the classes"):
        build_dataset(load_config(None, [*base, "data.flip_label_map=[[a, x]]"]), "test", 3)
    with pytest.raises(ConfigError, match="^data.flip_label_map: expected pairs of two different class names"):
        load_config(None, ["data.flip_label_map=[[a, a]]"])
    with pytest.raises(ConfigError, match="^data.flip_label_map: a class is in two pairs"):
        load_config(None, ["data.flip_label_map=[[a, b], [b, c]]"])



# ---------------------------------------------------------------- a synthetic order set


@pytest.fixture(scope="module")
def order_data(tmp_path_factory: pytest.TempPathFactory):
    from tsn.data.synthetic import make_order_dataset

    return make_order_dataset(tmp_path_factory.mktemp("order"), videos_train=16, videos_val=10, num_frames=8, size=64)


def _order_run(data, work, temporal: str, epochs: int) -> float:
    from tiny_training import restored_global_state
    from tsn.training.build import train

    overrides = [f"data.root={data.root}", "data.test_list=val.txt", "data.num_segments=8", "data.input_size=64",
                 "data.short_side=64", "data.batch_size=8", "data.num_workers=0", "data.train_scales=[1.0]",
                 f"model.temporal={temporal}", f"train.epochs={epochs}", f"train.val_every={epochs}", "train.lr=0.001",
                 "train.deterministic=true"]
    with restored_global_state():
        result = train(load_config(None, overrides), work, progress=False)
    return result.last_val.top1


def test_tsn_is_at_chance_on_order_and_tsm_learns_it(order_data, tmp_path) -> None:
    """Forwards and backwards copies of the same frames: TSN pools them without order (exactly chance, since it
    samples all 8 frames of each, so that both copies of a clip get the same scores whatever it learns: a short
    run says as much as a long one), TSM tells them apart."""
    assert abs(_order_run(order_data, tmp_path / "tsn", "none", epochs=3) - 0.5) <= 0.1
    assert _order_run(order_data, tmp_path / "tsm", "tsm", epochs=10) >= 0.95
