"""Recognition on a stream (issue 23): the causal TSM one frame at a time equals the offline causal model frame
by frame, its per-frame ONNX graph equals PyTorch, and predict.py --stream reads files in real time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_training import restored_global_state, run_tools_together
from tsn.config import ConfigError
from tsn.data.transforms import ResizedCenterCrop, to_tensor_clip
from tsn.apps.stream import (StreamRecognizer, offline_frame_logits, run_stream, segment_stride, softmax,
                               torch_recognizer)
from tsn.io.live import LiveSourceError, open_live
from tsn.layout import normalize_clips
from tsn.models import build_model
from videos import make_index_video

SIZE, SHORT, CLASSES, FRAMES = 32, 36, 5, 9


@pytest.fixture(autouse=True)
def _global_state():
    with restored_global_state():
        yield


def causal_model(consensus: str = "feature_max", temporal: str = "tsm"):
    torch.manual_seed(0)
    model = build_model(backbone="resnet18", pretrained=False, num_classes=CLASSES, num_segments=4,
                        consensus=consensus, temporal=temporal, shift_direction="causal").eval()
    with torch.no_grad():
        model.head.fc.weight.mul_(20)  # probabilities far from uniform, so that a difference shows
    return model


def random_frames(count: int = FRAMES) -> list[np.ndarray]:
    generator = np.random.default_rng(1)
    return [generator.integers(0, 256, (40, 52, 3), dtype=np.uint8) for _ in range(count)]


def offline(model, frames: list[np.ndarray]) -> torch.Tensor:
    """The offline causal model on all the frames as one clip: each segment's own logits (T, classes)."""
    crops = ResizedCenterCrop(SIZE, SHORT)(np.stack(frames), None)  # (T, S, S, 3)
    clip = normalize_clips(to_tensor_clip(crops)[None], model.spec.mean, model.spec.std)  # (1, T, 3, S, S)
    with torch.no_grad():
        return offline_frame_logits(model, clip)


@pytest.mark.parametrize("consensus, temporal", [("feature_max", "tsm"), ("avg", "tsm"), ("max", "tsm"),
                                                 ("feature_max", "none")])
def test_streaming_scores_equal_the_offline_causal_model_frame_by_frame(consensus: str, temporal: str) -> None:
    model = causal_model(consensus, temporal)
    frames = random_frames()
    expected = offline(model, frames)  # (T, classes)
    recognizer = torch_recognizer(model, window=3, input_size=SIZE, short_side=SHORT)
    scores = [recognizer.push(frame) for frame in frames]
    # 1e-4: one frame at a time and T frames in one batch take other convolution kernels (1.5e-5 apart in
    # probability on an AVX2-only CPU); a shift by one frame moves them by more than 1e-3 (checked here)
    probabilities = np.stack([softmax(row.numpy()) for row in expected])  # (T, classes)
    assert np.abs(probabilities[1:] - probabilities[:-1]).max(axis=1).min() > 1e-3
    for t, got in enumerate(scores):
        assert got.index == t
        np.testing.assert_allclose(got.frame, probabilities[t], rtol=0, atol=1e-4)
    # the window: the model's consensus over the last 3 frames
    last = expected[-3:]
    if consensus == "feature_max":
        crops = ResizedCenterCrop(SIZE, SHORT)(np.stack(frames), None)
        clip = normalize_clips(to_tensor_clip(crops)[None], model.spec.mean, model.spec.std)
        model.num_segments = FRAMES
        with torch.no_grad():
            features = model.head.pool(model.forward_features(clip)[0])  # (T, F)
            window = model.head.classify(features[-3:].amax(dim=0, keepdim=True))[0]
        model.num_segments = 4
    else:
        window = last.mean(dim=0) if consensus == "avg" else last.amax(dim=0)
    np.testing.assert_allclose(scores[-1].window, softmax(window.numpy()), rtol=0, atol=1e-4)
    if temporal == "tsm":  # the shift makes a frame's scores depend on the frames before it
        recognizer.reset()
        alone = recognizer.push(frames[4])
        assert not np.allclose(alone.frame, scores[4].frame, atol=1e-3)
        np.testing.assert_allclose(alone.frame, softmax(offline(model, [frames[4]])[0].numpy()), rtol=0, atol=1e-5)


def test_a_bidirectional_model_cannot_stream() -> None:
    torch.manual_seed(0)
    model = build_model(backbone="resnet18", pretrained=False, num_classes=3, num_segments=4, temporal="tsm")
    with pytest.raises(ConfigError, match="model.shift_direction: bidirectional needs the next frame"):
        torch_recognizer(model, 3, SIZE, SHORT)


def test_the_per_frame_onnx_graph_equals_pytorch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from tsn.config import load_config
    from tsn.apps.export import export_stream, stream_recognizer_from_file
    from tsn.evaluation.inference import TrainedModel

    model = causal_model()
    cfg = load_config(None, [f"data.input_size={SIZE}", f"data.short_side={SHORT}", "data.num_segments=4",
                             "model.backbone=resnet18", "model.temporal=tsm", "model.shift_direction=causal"])
    report = export_stream(TrainedModel(model, [f"c{i}" for i in range(CLASSES)], cfg), tmp_path / "s.onnx")
    assert report.difference < 1e-4 and len(report.cache_shapes) == 8
    frames = random_frames()
    reference = torch_recognizer(model, 3, SIZE, SHORT)
    exported = stream_recognizer_from_file(tmp_path / "s.onnx", 3)
    for frame in frames:
        want, got = reference.push(frame), exported.push(frame)
        np.testing.assert_allclose(got.frame, want.frame, rtol=0, atol=1e-4)
        np.testing.assert_allclose(got.window, want.window, rtol=0, atol=1e-4)


class SlowRecognizer:
    """Takes ``seconds`` per frame and remembers which frames it saw."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.seen = seconds, []

    def reset(self) -> None:
        self.seen = []

    def push(self, frame: np.ndarray):
        import time

        from tsn.apps.stream import FrameScores

        time.sleep(self.seconds)
        self.seen.append(int(frame[0, 0, 0]))
        return FrameScores(len(self.seen) - 1, np.ones(2) / 2, np.ones(2) / 2, self.seconds)


def test_a_file_is_scored_every_stride_frames_and_in_real_time_frames_are_dropped(tmp_path: Path) -> None:
    video = make_index_video(tmp_path / "v.mp4", 50, fps=50.0)
    fast = SlowRecognizer(0.0)
    summary = run_stream(fast, open_live(str(video)), 4, False, lambda update: None)
    assert (summary.frames_read, summary.frames_scored, summary.frames_dropped) == (50, 13, 0)
    run_stream(fast, open_live(str(video)), 4, False, lambda update: None)  # a second source starts afresh
    assert len(fast.seen) == 13
    slow = SlowRecognizer(0.2)  # 4 frames of 50 fps arrive every 0.08 s, each takes 0.2 s to score
    summary = run_stream(slow, open_live(str(video)), 4, True, lambda update: None)
    assert summary.frames_read == 50 and summary.frames_scored + summary.frames_dropped == 13
    assert summary.frames_dropped >= 5 and summary.stopped == "end of the source"
    assert max(summary.latencies) < 0.5  # always the newest frame: the latency does not build up
    assert segment_stride(30.0, 0.5) == 15 and segment_stride(25.0, None) == 6 and segment_stride(0.0, 1.0) == 1
    with pytest.raises(LiveSourceError, match="no such file, camera or stream URL"):
        open_live(str(tmp_path / "none.mp4"))


def test_a_stream_that_breaks_is_raised_once_after_the_frames_before_it(tmp_path: Path) -> None:
    from tsn.io.live import LiveFrame, LiveSource

    def frames():
        for number in range(6):
            yield LiveFrame(number / 25, np.zeros((8, 8, 3), np.uint8))
            time.sleep(0.01)
        raise LiveSourceError("rtsp://cam/1", "the stream broke")

    model = SlowRecognizer(0.0)
    with pytest.raises(LiveSourceError, match=r"^rtsp://cam/1: the stream broke$"):
        run_stream(model, LiveSource("rtsp://cam/1", 25.0, False, frames()), 1, False, lambda update: None)
    assert len(model.seen) >= 1  # what arrived before the break was scored, then the error, once
    with pytest.raises(LiveSourceError, match="the camera cannot be opened"):
        open_live("/dev/video97")


def test_predict_stream_prints_json_lines_and_a_summary(tmp_path: Path) -> None:
    from tsn.config import load_config

    video = make_index_video(tmp_path / "v.mp4", 30, width=64, height=48)
    cfg = load_config(None, [f"data.input_size={SIZE}", f"data.short_side={SHORT}", "data.num_segments=4",
                             "model.backbone=resnet18", "model.pretrained=false", "model.temporal=tsm",
                             "model.shift_direction=causal", "model.consensus=feature_max"])
    model = causal_model()
    checkpoint = tmp_path / "m.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "class_names": [f"c{i}" for i in range(CLASSES)],
                "segment_seconds": 0.12}, checkpoint)
    done, missing = run_tools_together(
        ("predict.py", ["--checkpoint", str(checkpoint), "--stream", str(video), "--format", "json", "--print-every", "2",
                        "--top-k", "2"]),
        ("predict.py", ["--checkpoint", str(checkpoint), "--stream", str(tmp_path / "no.mp4")]))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["frame"] for line in lines] == [0, 6, 12, 18, 24]  # every 3 frames (0.12 s at 25 fps), every 2nd
    assert all(len(line["top"]) == 2 and line["latency_ms"] >= 0 for line in lines)
    summary = json.loads(done.stderr.strip().splitlines()[-1])
    assert (summary["frames_read"], summary["frames_scored"], summary["frames_dropped"]) == (30, 10, 0)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'no.mp4'}: no such file, camera or stream URL"
