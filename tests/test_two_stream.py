"""TSN's second streams: optical flow extracted from generated motion, flow and RGB-difference inputs, the
cross-modality initialisation, the kill-safe flow extractor, and one epoch of each stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from tiny_training import REPO_ROOT, make_tiny_data, restored_global_state, tiny_overrides
from tsn.config import load_config
from tsn.data.transforms import flip_clip
from tsn.training.build import train
from tsn.io import count_flow_frames, read_flow
from tsn.jobs.extract import ExtractJob, FlowSettings, extract_frames
from tsn.jobs.flow import dequantize_flow, quantize_flow
from tsn.layout import normalize_clips
from tsn.models import build_model
from tsn.models.modality import cross_modality_init, first_conv, stack_segments

MOTION = (3.0, -2.0)  # (x, y) pixels per frame
SIZE = 96


def moving_texture_video(path: Path, num_frames: int = 6, motion: tuple[float, float] = MOTION) -> Path:
    """An H.264 video (near lossless) of a smooth random texture moving ``motion`` pixels per frame."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    margin = int(max(abs(m) for m in motion) * num_frames) + 8
    big = cv2.GaussianBlur(rng.integers(0, 256, (SIZE + 2 * margin, SIZE + 2 * margin)).astype(np.float32), (0, 0), 2.0)
    big = cv2.normalize(big, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv444p"
        stream.options = {"crf": "0", "x264-params": "log-level=error"}
        for t in range(num_frames):
            # content moving by +motion: frame t shows the texture shifted by t * motion
            left, top = margin - int(round(t * motion[0])), margin - int(round(t * motion[1]))
            gray = big[top:top + SIZE, left:left + SIZE]
            frame = av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, axis=2), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("method", ["dis", "tvl1"])
def test_extracted_flow_equals_the_generated_motion(tmp_path: Path, method: str) -> None:
    moving_texture_video(tmp_path / "src" / "move.mp4")
    summary = extract_frames(tmp_path / "src", tmp_path / "out", [ExtractJob("move.mp4", 0)], short_side=0,
                             progress=False, flow=FlowSettings(method, 20.0, with_rgb=True))
    assert summary.failed == [] and summary.extracted[0].num_frames == 5  # 6 frames, 5 pairs
    folder = str(tmp_path / "out" / "move")
    assert count_flow_frames(folder) == 5 and len(list(Path(folder).glob("img_*.jpg"))) == 6
    pairs = read_flow(folder, np.arange(5))  # (5, H, W, 2) quantised
    flow = dequantize_flow(pairs[..., 0], pairs[..., 1])  # (5, H, W, 2) pixels
    inner = flow[:, 16:-16, 16:-16]  # away from the borders, where the texture enters and leaves
    # Tolerance: quantisation steps are 40/255 = 0.16 px, JPEG adds about as much; the methods
    # themselves are sub-pixel on a smooth texture.
    np.testing.assert_allclose(np.median(inner, axis=(1, 2)), np.tile(MOTION, (5, 1)), atol=0.25)
    assert np.abs(inner - np.array(MOTION)).mean() < 0.5


def test_quantisation_is_tsn_s_and_a_flip_negates_the_x_flow() -> None:
    flow = np.array([[[-25.0, 0.0], [-20.0, 20.0], [5.0, -5.0]]], dtype=np.float32)  # (1, 3, 2)
    x, y = quantize_flow(flow)
    assert x.tolist() == [[0, 0, 159]] and y.tolist() == [[128, 255, 96]]  # (f + 20) * 255 / 40, rounded
    np.testing.assert_allclose(dequantize_flow(x, y)[0, 2], [4.94, -4.94], atol=0.01)  # 0.16 px steps
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 256, (4, 6, 8, 2), dtype=np.uint8)  # (T, H, W, 2) quantised (x, y)
    flipped = flip_clip(stack)
    np.testing.assert_array_equal(flipped[..., 0], 255 - stack[:, :, ::-1, 0])  # mirrored and negated
    np.testing.assert_array_equal(flipped[..., 1], stack[:, :, ::-1, 1])  # mirrored only
    rgb = rng.integers(0, 256, (4, 6, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(flip_clip(rgb), rgb[:, :, ::-1])  # colour is not flow


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0", "mobilenet_v3_large", "bninception", "vgg16_bn"])
@pytest.mark.parametrize("modality, channels", [("flow", 10), ("rgbdiff", 15)])
def test_first_layer_is_the_rgb_kernel_mean_replicated(backbone: str, modality: str, channels: int) -> None:
    torch.manual_seed(0)
    rgb = build_model(backbone=backbone, pretrained=False, num_classes=3, num_segments=2)
    torch.manual_seed(0)  # the same random "pretrained" weights
    other = build_model(backbone=backbone, pretrained=False, num_classes=3, num_segments=2, modality=modality,
                        new_length=5)
    kernel = first_conv(rgb.backbone)[2].weight  # (O, 3, kh, kw)
    conv = next(m for m in other.backbone.modules() if isinstance(m, torch.nn.Conv2d))  # the first one
    assert conv.in_channels == channels
    expected = kernel.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1) * (3 / channels)
    torch.testing.assert_close(conv.weight, expected)
    # every other weight is the RGB network's
    rgb_state, other_state = rgb.state_dict(), other.state_dict()
    differing = [k for k in rgb_state if not torch.equal(rgb_state[k], other_state[k])]
    assert len(differing) == 1 and rgb_state[differing[0]].shape[1] == 3, differing  # the first kernel only


def test_cross_modality_init_keeps_the_response_of_a_grey_input() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, bias=True)
    holder = torch.nn.Sequential(conv)
    grey = torch.randn(1, 1, 9, 9)
    before = conv(grey.expand(-1, 3, -1, -1))
    after = cross_modality_init(holder, 10)(grey.expand(-1, 10, -1, -1))
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_stacks_flow_pairs_and_rgb_differences_per_segment() -> None:
    b, k, length = 2, 3, 4
    flow = torch.arange(b * k * length * 2 * 5 * 5, dtype=torch.float32).reshape(b, k * length, 2, 5, 5)
    stacked = stack_segments(flow, "flow", k)  # (B, K, 2L, H, W)
    assert stacked.shape == (b, k, 2 * length, 5, 5)
    # segment 1's channels: pair 0 x, pair 0 y, pair 1 x, ... of frames 4..7
    torch.testing.assert_close(stacked[1, 1, 2], flow[1, 1 * length + 1, 0])
    torch.testing.assert_close(stacked[1, 1, 3], flow[1, 1 * length + 1, 1])
    frames = torch.randint(0, 256, (b, k * (length + 1), 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    diff = stack_segments(normalize_clips(frames, mean, std), "rgbdiff", k)  # (B, K, 3L, H, W)
    assert diff.shape == (b, k, 3 * length, 5, 5)
    scale = torch.tensor(std).view(3, 1, 1) * 255
    for segment in range(k):
        for step in range(length):
            first = frames[0, segment * (length + 1) + step].float()
            second = frames[0, segment * (length + 1) + step + 1].float()
            torch.testing.assert_close(diff[0, segment, 3 * step:3 * step + 3], (second - first) / scale,
                                       rtol=1e-5, atol=1e-5)


def _extract_command(src: Path, out: Path) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "tools" / "extract_flow.py"), "--src", str(src), "--out", str(out),
            "--workers", "1", "--rgb", "--short-side", "0"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_extract_flow_killed_and_rerun_gives_the_bytes_of_one_clean_run(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in ("a", "b", "c"):
        moving_texture_video(src / "move" / f"{name}.mp4", num_frames=30)
    clean = tmp_path / "clean"
    done = subprocess.run(_extract_command(src, clean), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    killed = tmp_path / "killed"
    process = subprocess.Popen(_extract_command(src, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(killed.rglob("x_00010.jpg")):
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "flow.txt").exists() or _tree(killed) != _tree(clean)  # it was stopped part way
    again = subprocess.run(_extract_command(src, killed), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _tree(killed) == _tree(clean)
    assert (clean / "flow.txt").read_text().splitlines() == [f"move/{n} 29 0" for n in ("a", "b", "c")]
    assert (clean / "rawframes.txt").read_text().splitlines() == [f"move/{n} 30 0" for n in ("a", "b", "c")]


@pytest.fixture(autouse=True)
def _global_state():
    with restored_global_state():
        yield


@pytest.mark.parametrize("modality", ["flow", "rgbdiff"])
def test_a_flow_and_an_rgb_difference_tsn_train_one_epoch(tmp_path: Path, modality: str) -> None:
    data = make_tiny_data(tmp_path / "data")
    overrides = [*tiny_overrides(data, epochs=1), f"data.modality={modality}", "data.new_length=2"]
    if modality == "flow":
        root = tmp_path / "flow"
        for split in ("train", "val"):
            jobs = [ExtractJob(*line.rsplit(" ", 1)) for line in (data.root / f"{split}.txt").read_text().split("\n")
                    if line]
            jobs = [ExtractJob(job.video, int(job.label)) for job in jobs]
            summary = extract_frames(data.root, root, jobs, short_side=0, progress=False, flow=FlowSettings())
            assert not summary.failed
            (root / f"{split}.txt").write_text("".join(f"{v.frame_dir} {v.num_frames} {v.label}\n"
                                                       for v in summary.extracted))
        (root / "classes.txt").write_text((data.root / "classes.txt").read_text())
        overrides += [f"data.root={root}", "data.format=rawframes"]
    cfg = load_config(None, overrides)
    result = train(cfg, tmp_path / "work", device="cpu", progress=False)
    assert result.epochs == 1 and result.last_val is not None and result.last_val.count == 4
    state = torch.load(tmp_path / "work" / "latest.pth", weights_only=True)
    assert state["model"]["backbone.conv1.weight"].shape[1] == (4 if modality == "flow" else 6)


def test_flow_extraction_never_deletes_frames_extracted_into_the_same_folder(tmp_path: Path) -> None:
    moving_texture_video(tmp_path / "src" / "move.mp4")
    jobs = [ExtractJob("move.mp4", 0)]
    assert not extract_frames(tmp_path / "src", tmp_path / "out", jobs, short_side=0, progress=False).failed
    frames = sorted((tmp_path / "out" / "move").glob("img_*.jpg"))
    summary = extract_frames(tmp_path / "src", tmp_path / "out", jobs, short_side=0, progress=False,
                             flow=FlowSettings())
    assert [f.reason for f in summary.failed] == [
        f"{tmp_path / 'out' / 'move'} holds frames (tools/extract_frames.py): write the flow to another --out, "
        f"or frames and flow together there with extract_flow.py --rgb after removing it"]
    assert sorted((tmp_path / "out" / "move").glob("img_*.jpg")) == frames  # untouched


def test_flow_models_give_features_and_the_probe_needs_the_frozen_first_batchnorm() -> None:
    from tsn.config import ConfigError
    from tsn.apps.features import video_features

    model = build_model(backbone="resnet18", pretrained=False, num_classes=3, num_segments=2, modality="flow",
                        new_length=3).eval()
    with torch.no_grad():
        features = video_features(model, torch.randn(2, 6, 2, 32, 32))  # (B, K*L, 2, H, W)
    assert features.shape == (2, 512)
    with pytest.raises(ConfigError, match="model.freeze_bn: data.modality flow with train.head_init linear_probe "
                                          "needs model.freeze_bn: true"):
        load_config(None, ["data.modality=flow", "data.format=rawframes", "model.freeze_bn=false"])
    load_config(None, ["data.modality=flow", "data.format=rawframes", "model.freeze_bn=false", "train.head_init=random"])
    with pytest.raises(ConfigError, match="data.format: modality flow reads flow folders"):
        load_config(None, ["data.modality=flow"])
