"""tools/test.py (multi-view testing and its report files) and tools/fuse_scores.py."""

from __future__ import annotations

import csv
import itertools
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_training import REPO_ROOT, restored_global_state, run_tool, tool_env
from tsn.config import Config, load_config, save_config
from tsn.data.sampling import test_indices
from tsn.build import build_dataset, build_tsn
from tsn.io import probe, read
from tsn.layout import normalize_clips
from videos import make_index_video_set

CLASSES = ["run", "jump", "swim"]
LABELS = [0, 0, 1, 1, 2, 2]
NUM_FRAMES = [20, 27, 33, 20, 41, 24]
CLIPS, CROPS, SEGMENTS, SIZE = 2, 3, 2, 48


@pytest.fixture(autouse=True)
def _global_state():
    with restored_global_state():
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path, Path]:
    """6 index videos of 64x48 (3 classes), their config and a random-weight ResNet-18 checkpoint."""
    root = tmp_path_factory.mktemp("views")
    lines = make_index_video_set(root, LABELS, NUM_FRAMES, CLASSES, width=64, height=48)
    (root / "val.txt").write_text("".join(lines))
    # input_size = short side = 48: the three crops are the 48x48 squares at x = 0, 8, 16, unscaled
    cfg = load_config(None, [f"data.root={root}", "data.test_list=val.txt", f"data.num_segments={SEGMENTS}",
                             f"data.input_size={SIZE}", f"data.short_side={SIZE}", "data.batch_size=4",
                             "data.num_workers=0", "model.backbone=resnet18", "model.pretrained=false"])
    config = root / "config.yaml"
    save_config(cfg, config)
    with restored_global_state():
        torch.manual_seed(0)
        model = build_tsn(cfg, len(CLASSES))
    checkpoint = root / "model.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    return cfg, config, checkpoint


def test_three_crops_by_two_clips_gives_six_views_of_the_right_frames(setup: tuple[Config, Path, Path]) -> None:
    cfg, _, _ = setup
    dataset = build_dataset(cfg, "test", len(CLASSES), num_clips=CLIPS, crops=CROPS)
    assert len(dataset) == len(LABELS)
    root = Path(cfg.data.root)
    for i, frames in enumerate(NUM_FRAMES):
        sample = dataset[i]
        assert sample.clip.dtype == torch.uint8
        assert tuple(sample.clip.shape) == (CLIPS * CROPS, SEGMENTS, 3, SIZE, SIZE)  # (V, T, C, H, W)
        assert sample.label == LABELS[i] and sample.index == i
        # view c * 3 + k (clip-major) = crop k of the frames of temporal clip c, read by hand
        path = root / "videos" / f"v{i}.mp4"
        assert probe(path).num_frames == frames
        for c, indices in enumerate(test_indices(frames, SEGMENTS, 1, CLIPS)):
            clip_frames = read(path, indices)  # (T, 48, 64, 3)
            for k, left in enumerate((0, 8, 16)):
                expected = torch.from_numpy(clip_frames[:, :, left:left + SIZE]).permute(0, 3, 1, 2)  # (T, 3, H, W)
                assert torch.equal(sample.clip[c * CROPS + k], expected), (i, c, k)
        for a, b in itertools.combinations(range(CLIPS * CROPS), 2):
            assert not torch.equal(sample.clip[a], sample.clip[b]), (i, a, b)


def hand_metrics(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Confusion matrix and metrics computed here with plain numpy loops."""
    preds = scores.argmax(axis=1)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p in zip(labels, preds):
        cm[t, p] += 1
    rows = []
    for c in range(num_classes):
        tp, predicted, support = cm[c, c], cm[:, c].sum(), cm[c].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append((precision, recall, f1, int(support)))
    present = [c for c in range(num_classes) if cm[c].sum()]
    return {"cm": cm, "rows": rows, "top1": float(np.mean(preds == labels)),
            "mean_class_accuracy": float(np.mean([cm[c, c] / cm[c].sum() for c in present]))}


def check_report(out: Path, scores: np.ndarray, labels: np.ndarray, names: list[str], top5: float) -> None:
    """The five report files of ``out`` against metrics computed by hand from ``scores``."""
    expected = hand_metrics(scores, labels, len(names))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) - {"checkpoint_chosen_on_this_list"} == {"top1", "top5", "mean_class_accuracy", "num_videos",
                                                                 "num_skipped", "conventions"}
    assert metrics["num_skipped"] == 0 and not metrics.get("checkpoint_chosen_on_this_list")
    assert "classes present in the labels" in metrics["conventions"]["mean_class_accuracy"]
    assert metrics["num_videos"] == len(labels)
    assert metrics["top1"] == pytest.approx(expected["top1"], abs=1e-12)
    assert metrics["top5"] == pytest.approx(top5, abs=1e-12)
    assert metrics["mean_class_accuracy"] == pytest.approx(expected["mean_class_accuracy"], abs=1e-12)
    assert all(0.0 <= metrics[key] <= 1.0 for key in ("top1", "top5", "mean_class_accuracy"))
    with open(out / "per_class.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["class", "precision", "recall", "f1", "support"]
    assert [row[0] for row in rows[1:]] == names
    for row, (precision, recall, f1, support) in zip(rows[1:], expected["rows"]):
        assert [float(v) for v in row[1:4]] == pytest.approx([precision, recall, f1], abs=1e-6)
        assert int(row[4]) == support
    with open(out / "confusion_matrix.csv", newline="") as handle:
        cm_rows = list(csv.reader(handle))
    assert cm_rows[0] == ["true/pred", *names]
    assert [row[0] for row in cm_rows[1:]] == names
    assert np.array([[int(v) for v in row[1:]] for row in cm_rows[1:]]).tolist() == expected["cm"].tolist()
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_test_tool_scores_every_view_and_writes_the_report(setup: tuple[Config, Path, Path],
                                                          tmp_path: Path) -> None:
    cfg, config, checkpoint = setup
    out = tmp_path / "report"
    done = run_tool("test.py", ["--config", str(config), "--checkpoint", str(checkpoint), "--out", str(out),
                                "--list", str(Path(cfg.data.root) / "val.txt"), "--num-clips", str(CLIPS),
                                "--crops", str(CROPS), "--device", "cpu"], env=tool_env())
    assert done.returncode == 0, done.stderr
    assert "6 view(s) each" in done.stderr
    assert "precision" in done.stdout and "swim" in done.stdout

    # scores.npy: one row per video in list order, the mean softmax of the model over all 6 views
    scores = np.load(out / "scores.npy")
    assert scores.shape == (len(LABELS), len(CLASSES))
    model = build_tsn(cfg, len(CLASSES))
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    model.eval()
    dataset = build_dataset(cfg, "test", len(CLASSES), num_clips=CLIPS, crops=CROPS)
    with torch.no_grad():
        for i in range(len(LABELS)):
            views = normalize_clips(dataset[i].clip, model.spec.mean, model.spec.std)  # (6, T, C, H, W)
            expected = model(views).softmax(dim=1).mean(dim=0)  # (6, classes) -> (classes,)
            np.testing.assert_allclose(scores[i], expected.double().numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)
    check_report(out, scores, np.array(LABELS), CLASSES, top5=1.0)
    # --batch-size 1: one video's views at a time in the loader, the same scores
    assert cfg.data.batch_size > 1
    one = tmp_path / "one_at_a_time"
    done = run_tool("test.py", ["--config", str(config), "--checkpoint", str(checkpoint), "--out", str(one),
                                "--list", str(Path(cfg.data.root) / "val.txt"), "--num-clips", str(CLIPS),
                                "--crops", str(CROPS), "--device", "cpu", "--batch-size", "1"], env=tool_env())
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(one / "scores.npy"), scores, rtol=0, atol=1e-6)


def test_a_test_batch_holds_at_most_clips_per_forward_clips() -> None:
    from tsn.evaluation.testing import videos_per_test_batch

    # (data.batch_size, views per video, test.clips_per_forward) -> videos per loader batch
    assert videos_per_test_batch(4, 250, 16) == 1  # 25 clips x 10 crops: one video at a time
    assert videos_per_test_batch(4, 6, 16) == 2
    assert videos_per_test_batch(32, 1, 16) == 16
    assert videos_per_test_batch(4, 1, 16) == 4
    assert videos_per_test_batch(4, 17, 16) == 1


# ---------------------------------------------------------------- score fusion

FUSE_NAMES = ["a", "b", "c", "d"]
FUSE_LABELS = [1, 1, 2, 0]
RGB = np.array([[0.6, 0.3, 0.1, 0.0], [0.2, 0.5, 0.3, 0.0], [0.1, 0.2, 0.7, 0.0], [0.5, 0.3, 0.2, 0.0]])
FLOW = np.array([[0.1, 0.8, 0.1, 0.0], [0.1, 0.1, 0.8, 0.0], [0.3, 0.3, 0.4, 0.0], [0.1, 0.1, 0.8, 0.0]])


@pytest.fixture()
def fuse_inputs(tmp_path: Path) -> Path:
    np.save(tmp_path / "rgb.npy", RGB)
    np.save(tmp_path / "flow.npy", FLOW)
    (tmp_path / "test.txt").write_text("".join(f"v{i}.mp4 {label}\n" for i, label in enumerate(FUSE_LABELS)))
    (tmp_path / "classes.txt").write_text("\n".join(FUSE_NAMES) + "\n")
    return tmp_path


def run_fuse_main(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``tools/fuse_scores.py ARGS`` in this process (no interpreter start-up); returns the exit status."""
    monkeypatch.setattr(sys, "argv", ["fuse_scores.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / "tools" / "fuse_scores.py"), run_name="__main__")
    return exit_info.value.code


def test_fuse_scores_equals_hand_computed_fusion(fuse_inputs: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = fuse_inputs / "fused"
    assert run_fuse_main(["--scores", str(fuse_inputs / "rgb.npy"), str(fuse_inputs / "flow.npy"),
                          "--weights", "1", "0.5", "--list", str(fuse_inputs / "test.txt"),
                          "--classes", str(fuse_inputs / "classes.txt"), "--out", str(out)], monkeypatch) == 0
    # rgb + 0.5 flow, by hand:
    #   [0.65, 0.70, 0.15, 0]  -> 1 (label 1, right)
    #   [0.25, 0.55, 0.70, 0]  -> 2 (label 1, wrong; label second: top-2 hit)
    #   [0.25, 0.35, 0.90, 0]  -> 2 (label 2, right)
    #   [0.55, 0.35, 0.60, 0]  -> 2 (label 0, wrong)
    fused = np.array([[0.65, 0.7, 0.15, 0.0], [0.25, 0.55, 0.7, 0.0], [0.25, 0.35, 0.9, 0.0], [0.55, 0.35, 0.6, 0.0]])
    np.testing.assert_allclose(np.load(out / "scores.npy"), fused, rtol=0, atol=1e-12)
    # confusion (rows true): [[0,0,1,0], [0,1,1,0], [0,0,1,0], [0,0,0,0]]; class a never predicted,
    # class d neither predicted nor present
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("conventions")
    assert metrics == pytest.approx({"top1": 0.5, "top5": 1.0, "mean_class_accuracy": 0.5, "num_videos": 4,
                                     "num_skipped": 0})
    assert (out / "per_class.csv").read_text().splitlines() == [
        "class,precision,recall,f1,support",
        "a,0.000000,0.000000,0.000000,1",
        "b,1.000000,0.500000,0.666667,2",
        "c,0.333333,1.000000,0.500000,1",
        "d,0.000000,0.000000,0.000000,0",
    ]
    assert (out / "confusion_matrix.csv").read_text().splitlines() == [
        "true/pred,a,b,c,d", "a,0,0,1,0", "b,0,1,1,0", "c,0,0,1,0", "d,0,0,0,0"]
    check_report(out, fused, np.array(FUSE_LABELS), FUSE_NAMES, top5=1.0)
    assert "mean class accuracy 0.5000" in capsys.readouterr().out


def test_fuse_scores_rejects_mismatched_inputs(fuse_inputs: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    np.save(fuse_inputs / "short.npy", RGB[:3])
    common = ["--list", str(fuse_inputs / "test.txt"), "--classes", str(fuse_inputs / "classes.txt"),
              "--out", str(fuse_inputs / "o")]
    rgb, short = str(fuse_inputs / "rgb.npy"), str(fuse_inputs / "short.npy")
    assert run_fuse_main(["--scores", rgb, short, *common], monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and short in err[0] and "(3, 4)" in err[0]
    assert run_fuse_main(["--scores", short, *common], monkeypatch) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: scores of shape (3, 4) do not fit 4 videos x 4 classes"]
    assert run_fuse_main(["--scores", rgb, rgb, "--weights", "1", *common], monkeypatch) == 2  # argparse
    assert "2 score files but 1 weights" in capsys.readouterr().err
    (fuse_inputs / "notes.npy").write_text("not an array\n")
    notes, missing = str(fuse_inputs / "notes.npy"), str(fuse_inputs / "missing.npy")
    assert run_fuse_main(["--scores", rgb, notes, *common], monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {notes}: not a .npy score array")
    assert run_fuse_main(["--scores", missing, *common], monkeypatch) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: --scores {missing}: no such file"]
    np.save(fuse_inputs / "flat.npy", RGB[0])
    assert run_fuse_main(["--scores", str(fuse_inputs / "flat.npy"), *common], monkeypatch) == 2
    assert "expected scores of shape (videos, classes), got (4,)" in capsys.readouterr().err
    assert not (fuse_inputs / "o").exists()


@pytest.mark.parametrize("clips_per_forward", [1, 4, 7])
@pytest.mark.parametrize("channels_last", [False, True])
def test_chunked_view_scores_equal_one_pass(clips_per_forward: int, channels_last: bool) -> None:
    from tsn.evaluation.evaluate import view_scores
    from tsn.models import build_model

    torch.manual_seed(0)
    model = build_model(backbone="resnet18", pretrained=False, num_classes=4, num_segments=2).eval()
    clips = torch.randn(3, 5, 2, 3, 32, 32)  # (B, V, T, C, H, W): 15 clips
    with torch.no_grad():
        whole = view_scores(model, clips)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        chunked = view_scores(model, clips, clips_per_forward, channels_last)
        single = view_scores(model, clips[:, 0], clips_per_forward, channels_last)  # (B, T, C, H, W) logits
        model.to(memory_format=torch.contiguous_format)
        single_whole = view_scores(model, clips[:, 0])
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(single, single_whole, rtol=1e-4, atol=1e-5)


def test_uint8_views_are_normalised_chunk_by_chunk_with_the_same_scores() -> None:
    # Only one chunk is ever float (a video's 250 views of 8 frames are 1.2 GB as float32 at 224 px).
    from tsn.evaluation.evaluate import view_scores
    from tsn.layout import normalize_clips
    from tsn.models import build_model

    torch.manual_seed(0)
    model = build_model(backbone="resnet18", pretrained=False, num_classes=4, num_segments=2).eval()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    clips = torch.randint(0, 256, (2, 5, 2, 3, 32, 32), dtype=torch.uint8)  # (B, V, T, C, H, W)
    seen: list[int] = []  # clips per forward
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    with torch.no_grad():
        whole = view_scores(model, normalize_clips(clips, mean, std))
        seen.clear()
        chunked = view_scores(model, clips, 3, False, mean, std)
    assert seen == [3, 3, 3, 1]
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="give both the mean and the std"):
        view_scores(model, clips, 3, False, mean, None)
