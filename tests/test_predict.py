"""tools/predict.py and tsn.apps.predict: the same scores as tools/test.py, windows of long videos
with bounded memory, bad files among good ones, the output formats and the labelled copy."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_training import REPO_ROOT, restored_global_state, run_tool, tool_env
from tsn.config import Config, load_config, save_config
from tsn.data.sampling import test_indices
from tsn.build import build_tsn
from tsn.apps.predict import ClassScore, Predictor, VideoPrediction, WindowPrediction, label_at, split_windows
from tsn.io import iter_frames, probe
from videos import frame_index, make_index_video, make_index_video_set

CLASSES = ["run", "jump", "swim"]
LABELS = [0, 1, 2, 0]
NUM_FRAMES = [20, 27, 33, 41]
SEGMENTS, SIZE = 3, 48


@pytest.fixture(autouse=True)
def _global_state():
    with restored_global_state():
        yield


def save_trained(cfg: Config, path: Path) -> Path:
    """A checkpoint as tools/train.py writes it (weights, config, class names), random ResNet-18 weights."""
    with restored_global_state():
        torch.manual_seed(0)
        model = build_tsn(cfg, len(CLASSES))
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "class_names": CLASSES}, path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path, Path]:
    """4 square index videos of 48x48 (so that the centre crop is the whole frame), config and checkpoint."""
    root = tmp_path_factory.mktemp("predict")
    lines = make_index_video_set(root, LABELS, NUM_FRAMES, CLASSES, width=SIZE, height=SIZE)
    (root / "test.txt").write_text("".join(lines))
    cfg = load_config(None, [f"data.root={root}", "data.test_list=test.txt", f"data.num_segments={SEGMENTS}",
                             f"data.input_size={SIZE}", f"data.short_side={SIZE}", "data.batch_size=3",
                             "data.num_workers=0", "model.backbone=resnet18", "model.pretrained=false",
                             "test.num_clips=2", "test.crops=3"])
    save_config(cfg, root / "config.yaml")
    return cfg, root / "config.yaml", save_trained(cfg, root / "model.pth")


def test_predict_gives_the_probabilities_of_the_test_tool(setup: tuple[Config, Path, Path], tmp_path: Path) -> None:
    cfg, config, checkpoint = setup
    root = Path(cfg.data.root)
    for views in (["--num-clips", "1", "--crops", "1"], []):  # one view, and the config's 2 clips x 3 crops
        done = run_tool("test.py", ["--config", str(config), "--checkpoint", str(checkpoint), "--out",
                                    str(tmp_path / "report"), "--device", "cpu", "--no-progress", *views],
                        env=tool_env())
        assert done.returncode == 0, done.stderr
        scores = np.load(tmp_path / "report" / "scores.npy")
        clips, crops = (1, 1) if views else (None, None)
        predictor = Predictor.from_checkpoint(checkpoint, num_clips=clips, crops=crops)
        for i in range(len(LABELS)):
            prediction = predictor.predict(root / "videos" / f"v{i}.mp4", top_k=2)
            np.testing.assert_allclose(prediction.probabilities, scores[i], rtol=0, atol=1e-6)
            order = np.argsort(-scores[i], kind="stable")[:2]
            assert [score.class_id for score in prediction.top] == order.tolist()
            assert [score.name for score in prediction.top] == [CLASSES[j] for j in order]
            assert prediction.num_frames == NUM_FRAMES[i] and prediction.duration == pytest.approx(NUM_FRAMES[i] / 25)
    # the tool: JSON lines in order, the same top classes and probabilities
    done = run_tool("predict.py", ["--checkpoint", str(checkpoint), str(root / "videos"), "--format", "json",
                                   "--top-k", "3", "--num-clips", "1", "--crops", "1", "--device", "cpu", "--no-progress"],
                    env=tool_env())
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [Path(line["video"]).name for line in lines] == [f"v{i}.mp4" for i in range(len(LABELS))]
    one_view = [Predictor.from_checkpoint(checkpoint, num_clips=1, crops=1).predict(root / "videos" / f"v{i}.mp4")
                for i in range(len(LABELS))]
    for line, prediction in zip(lines, one_view):
        assert len(line["top"]) == 3
        for score in line["top"]:
            assert score["name"] == CLASSES[score["class_id"]]
            assert score["probability"] == pytest.approx(prediction.probabilities[score["class_id"]], abs=1e-6)
        assert line["top"][0]["probability"] >= line["top"][1]["probability"] >= line["top"][2]["probability"]


def test_window_split_covers_the_video_in_order() -> None:
    times = np.arange(100) / 10.0  # 100 frames at 10 fps: 10 s
    windows = split_windows(times, 0.1, window=4.0, stride=2.0)
    assert [(w.first, w.stop) for w in windows] == [(0, 40), (20, 60), (40, 80), (60, 100)]
    assert [(w.start, w.end) for w in windows] == [(0, 4), (2, 6), (4, 8), (6, 10)]
    # side by side, the last one shorter
    windows = split_windows(times, 0.1, window=3.0, stride=3.0)
    assert [(w.first, w.stop) for w in windows] == [(0, 30), (30, 60), (60, 90), (90, 100)]
    assert windows[-1].end == pytest.approx(10.0)
    # a video shorter than a window: one window, the whole video
    assert [(w.first, w.stop) for w in split_windows(times, 0.1, 60.0, 30.0)] == [(0, 100)]
    # a variable frame rate with a gap of 3 s: the window inside the gap holds no frame and is left out
    gap = np.concatenate([np.arange(10) / 10.0, 4.0 + np.arange(10) / 10.0])
    assert [(w.first, w.stop) for w in split_windows(gap, 0.1, 1.0, 1.0)] == [(0, 10), (10, 20)]
    with pytest.raises(ValueError, match="never be seen"):
        split_windows(times, 0.1, window=1.0, stride=2.0)


def test_windows_read_their_own_frames(setup: tuple[Config, Path, Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each window's views are the test views of its frames alone, found by the frames' own index."""
    cfg, _, checkpoint = setup
    video = make_index_video(tmp_path / "long.mp4", 250, width=SIZE, height=SIZE)  # 10 s at 25 fps
    predictor = Predictor.from_checkpoint(checkpoint, num_clips=2, crops=1)
    seen: list[list[int]] = []
    original = predictor.model.forward

    def record(x: torch.Tensor) -> torch.Tensor:
        # x: normalised (n, T, 3, H, W); undo the normalisation to read each frame's index
        mean = torch.tensor(predictor.model.spec.mean).view(1, 1, 3, 1, 1)
        std = torch.tensor(predictor.model.spec.std).view(1, 1, 3, 1, 1)
        frames = ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2)
        seen.extend([[frame_index(f.numpy()) for f in clip] for clip in frames])
        return original(x)

    monkeypatch.setattr(predictor.model, "forward", record)
    prediction = predictor.predict(video, top_k=1, window=4.0, stride=3.0)
    starts = [w.first_frame for w in prediction.windows]
    assert starts == [0, 75, 150] and [w.last_frame for w in prediction.windows] == [99, 174, 249]
    expected = []
    for w in prediction.windows:
        expected += (w.first_frame + test_indices(w.last_frame - w.first_frame + 1, SEGMENTS, 1, 2)).tolist()
    assert seen == expected
    assert [(w.start, w.end) for w in prediction.windows] == [(0, 4), (3, 7), (6, 10)]
    assert all(len(w.top) == 1 for w in prediction.windows)
    # the whole video: every frame weighs the same. Frames 75-99 and 150-174 lie in two windows, so
    # window 0 weighs 75 + 25/2, window 1 25/2 + 50 + 25/2, window 2 25/2 + 75 (of 250 frames)
    whole = np.array(prediction.probabilities)
    weights = np.array([87.5, 75.0, 87.5]) / 250
    np.testing.assert_allclose(whole, weights @ np.array([w.probabilities for w in prediction.windows]), atol=1e-12)
    assert whole.sum() == pytest.approx(1.0)
    assert prediction.top[0].class_id == int(np.argmax(whole))


def test_the_label_drawn_on_a_frame_is_that_of_the_nearest_window_holding_it() -> None:
    def window(first: int, last: int, name: str) -> WindowPrediction:
        return WindowPrediction(first / 10, (last + 1) / 10, first, last, (ClassScore(0, name, 0.9),), (0.9,))

    prediction = VideoPrediction("v.mp4", 100, 10.0, (ClassScore(1, "all", 0.5),), (0.5,),
                                 (window(0, 39, "a"), window(20, 59, "b"), window(40, 79, "c"), window(60, 99, "d")))
    # frame 25 lies in a (middle 19.5) and b (middle 39.5): a is nearer; frame 35: b; frame 50: c (59.5, not 39.5)
    assert [label_at(prediction, frame).name for frame in (0, 25, 35, 50, 99)] == ["a", "a", "b", "c", "d"]
    assert label_at(VideoPrediction("v.mp4", 10, 1.0, (ClassScore(1, "all", 0.5),), (0.5,)), 3).name == "all"


PEAK_RSS = """
import resource, runpy, sys
sys.argv = ["predict.py", *sys.argv[1:]]
try:
    runpy.run_path({tool!r}, run_name="__main__")
finally:
    print("peak_rss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def peak_rss_mb(args: list[str]) -> float:
    script = PEAK_RSS.format(tool=str(REPO_ROOT / "tools" / "predict.py"))
    import subprocess
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=tool_env(),
                          timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    line = [line for line in done.stderr.splitlines() if line.startswith("peak_rss_kb")][-1]
    return int(line.split()[1]) / 1024


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_video_length(setup: tuple[Config, Path, Path], tmp_path: Path) -> None:
    """20 s and 80 s of 320x240 video (decoding all of the long one would hold 346 MB more): the same peak."""
    _, _, checkpoint = setup
    rss = []
    for seconds in (20, 80):
        video = make_index_video(tmp_path / f"{seconds}s.avi", 25 * seconds, width=320, height=240, fourcc="MJPG")
        rss.append(peak_rss_mb(["--checkpoint", str(checkpoint), str(video), "--window", "4", "--num-clips", "1",
                                "--crops", "1", "--device", "cpu", "--no-progress", "--format", "json"]))
    assert rss[1] - rss[0] < 40, rss


def test_a_bad_file_is_reported_and_the_others_predicted(setup: tuple[Config, Path, Path], tmp_path: Path) -> None:
    cfg, _, checkpoint = setup
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in (0, 1):
        (folder / f"v{i}.mp4").write_bytes((Path(cfg.data.root) / "videos" / f"v{i}.mp4").read_bytes())
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    args = ["--checkpoint", str(checkpoint), str(folder), "--format", "csv", "--top-k", "2", "--num-clips", "1",
            "--crops", "1", "--device", "cpu", "--no-progress"]
    done = run_tool("predict.py", args, env=tool_env())
    assert done.returncode == 0, done.stderr
    failures = [line for line in done.stderr.splitlines() if line.startswith("failed:")]
    assert len(failures) == 1 and "broken.mp4" in failures[0] and len(failures[0].split(": ", 2)[2]) > 0
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [(Path(row["video"]).name, row["window"], row["rank"]) for row in rows] == [
        ("v0.mp4", "all", "1"), ("v0.mp4", "all", "2"), ("v1.mp4", "all", "1"), ("v1.mp4", "all", "2")]
    assert all(row["class"] == CLASSES[int(row["class_id"])] for row in rows)
    assert run_tool("predict.py", [*args, "--strict"], env=tool_env()).returncode == 1
    # every file failing is an error even without --strict
    done = run_tool("predict.py", ["--checkpoint", str(checkpoint), str(folder / "broken.mp4"), str(tmp_path / "no.mp4"),
                                   "--device", "cpu", "--no-progress"], env=tool_env())
    assert done.returncode == 1 and done.stderr.count("failed:") == 2 and "no.mp4" in done.stderr


def test_the_labelled_copy_has_every_frame_and_the_label(setup: tuple[Config, Path, Path], tmp_path: Path) -> None:
    cfg, _, checkpoint = setup
    source = make_index_video(tmp_path / "clip.avi", 50, width=160, height=120, fourcc="MJPG")
    out = tmp_path / "labelled.mp4"
    done = run_tool("predict.py", ["--checkpoint", str(checkpoint), str(source), "--window", "1", "--out-video",
                                   str(out), "--num-clips", "1", "--crops", "1", "--device", "cpu", "--no-progress"],
                    env=tool_env())
    assert done.returncode == 0, done.stderr
    assert probe(out).num_frames == 50 and not list(tmp_path.glob(".*partial*"))
    for i, (copy, original) in enumerate(zip(iter_frames(out), iter_frames(source))):
        assert frame_index(copy) == i  # the index cells are below the label
        # the label is drawn in the top left (white text over the red marker cell)
        assert np.abs(copy[:30, :80].astype(int) - original[:30, :80].astype(int)).mean() > 5
    # windows' labels are written in the table, one line per window of 1 s
    assert done.stdout.count(" s  ") == 2
    # two videos whose copies would have one name, a copy over its own video, a stride longer than the window
    twin = tmp_path / "other" / "clip.avi"
    twin.parent.mkdir()
    twin.write_bytes(source.read_bytes())
    mp4 = Path(cfg.data.root) / "videos" / "v0.mp4"
    for videos, args, message in (([source, twin], ["--out-video", str(tmp_path / "copies")], "would both be copied"),
                                  ([mp4], ["--out-video", str(mp4.parent)], "would replace the video"),
                                  ([source, twin], ["--window", "1", "--stride", "2"], "never be seen")):
        done = run_tool("predict.py", ["--checkpoint", str(checkpoint), *map(str, videos), *args, "--device", "cpu"],
                        env=tool_env())
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_flow_models_are_refused_with_a_reason(setup: tuple[Config, Path, Path], tmp_path: Path) -> None:
    cfg, _, _ = setup
    flow = load_config(None, [f"data.root={cfg.data.root}", "data.modality=flow", "data.format=rawframes",
                              "model.backbone=resnet18",
                              "model.pretrained=false", f"data.num_segments={SEGMENTS}"])
    checkpoint = save_trained(flow, tmp_path / "flow.pth")
    video = Path(cfg.data.root) / "videos" / "v0.mp4"
    done = run_tool("predict.py", ["--checkpoint", str(checkpoint), str(video), "--device", "cpu"], env=tool_env())
    assert done.returncode == 2 and "flow" in done.stderr and "Traceback" not in done.stderr

