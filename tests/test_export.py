"""tools/export.py and tsn.apps.export: the exported file (ONNX through onnxruntime, TorchScript) gives the
probabilities of the PyTorch pipeline (uint8 frames -> normalise -> TSN -> softmax) for batches of 1 and 3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_training import restored_global_state, run_tool, run_tools_together, tool_env
from videos import make_index_video

from tsn.apps import export as export_module
from tsn.apps.export import export
from tsn.apps.predict import Predictor, single_video_dataset
from tsn.build import build_tsn
from tsn.config import Config, load_config
from tsn.evaluation.deployed import ExportError, load_runner, read_description
from tsn.evaluation.inference import load_trained
from tsn.layout import normalize_clips

CLASSES = ["a", "b", "c", "d"]
SIZE = 64
pytest.importorskip("onnxruntime", reason="the export extra (pip install 'tsn[export]') is not installed")


@pytest.fixture(autouse=True)
def _global_state():
    with restored_global_state():
        yield


def make_checkpoint(folder: Path, overrides: list[str]) -> tuple[Config, Path]:
    """A checkpoint as tools/train.py writes it, random ResNet-18 weights with a head scaled up so that the
    probabilities are far from uniform (a wrong normalisation or consensus would move them a lot)."""
    cfg = load_config(None, [f"data.root={folder}", f"data.input_size={SIZE}", f"data.short_side={SIZE}",
                             "data.num_segments=3", "model.backbone=resnet18", "model.pretrained=false", *overrides])
    with restored_global_state():
        torch.manual_seed(0)
        model = build_tsn(cfg, len(CLASSES))
        with torch.no_grad():
            model.head.fc.weight.mul_(30)
    path = folder / "model.pth"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "class_names": CLASSES}, path)
    return cfg, path


def pytorch_probabilities(checkpoint: Path, frames: torch.Tensor) -> np.ndarray:
    """The reference: uint8 (B, T, C, H, W) normalised as the loader's clips are, the TSN, softmax."""
    model = load_trained(checkpoint).model
    with torch.no_grad():
        return model(normalize_clips(frames, model.spec.mean, model.spec.std)).softmax(dim=1).numpy()


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
@pytest.mark.parametrize("modality", ["rgb", "rgbdiff"])
def test_exported_file_equals_pytorch_for_batches_of_1_and_3(format: str, modality: str, tmp_path: Path) -> None:
    _, checkpoint = make_checkpoint(tmp_path, [f"data.modality={modality}"])
    trained = load_trained(checkpoint)
    out = tmp_path / ("model.onnx" if format == "onnx" else "model.pt")
    report = export(trained, format, out)
    assert report.random_difference < 1e-4 and report.real_difference is None
    frames_per_clip = 3 * (6 if modality == "rgbdiff" else 1)  # K L for RGB (L = 1), K (L + 1) for RGB difference (L = 5)
    assert (report.spec.frames, report.spec.channels, report.spec.size) == (frames_per_clip, 3, SIZE)
    run = load_runner(out, format)
    generator = torch.Generator().manual_seed(5)
    for batch in (1, 3):
        frames = torch.randint(0, 256, (batch, frames_per_clip, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
        got = run(frames.numpy())
        expected = pytorch_probabilities(checkpoint, frames)
        assert got.shape == (batch, len(CLASSES))
        # the probabilities are far from uniform, so this compares something
        assert expected.max() > 0.5
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    description = json.loads(out.with_name(out.name + ".json").read_text())
    assert description == read_description(out)  # the file carries its own description
    assert description["class_names"] == CLASSES
    assert description["input"]["shape"] == ["batch", frames_per_clip, 3, SIZE, SIZE]


def test_a_real_clip_gives_what_predict_gives(tmp_path: Path) -> None:
    cfg, checkpoint = make_checkpoint(tmp_path, [])
    video = make_index_video(tmp_path / "v.mp4", 30, width=80, height=64)
    clip = single_video_dataset(cfg, video, num_clips=1, crops=1).load(0, np.random.default_rng(0))  # (1, T, C, H, W)
    report = export(load_trained(checkpoint), "onnx", tmp_path / "m.onnx", [clip[0]])
    assert report.real_difference is not None and report.real_difference < 1e-4
    prediction = Predictor.from_checkpoint(checkpoint, num_clips=1, crops=1).predict(video)
    got = load_runner(tmp_path / "m.onnx", "onnx")(clip.numpy())[0]
    np.testing.assert_allclose(got, prediction.probabilities, rtol=0, atol=1e-4)


def test_a_mismatch_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, checkpoint = make_checkpoint(tmp_path, [])
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export(load_trained(checkpoint), "torchscript", tmp_path / "m.pt", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == [checkpoint]
    # a runtime giving NaN is a mismatch too (max() would pass NaN over as a difference of 0)
    monkeypatch.setattr(export_module, "load_runner", lambda path, format: lambda frames: np.full((len(frames), 4), np.nan))
    with pytest.raises(ExportError, match="non-finite"):
        export(load_trained(checkpoint), "torchscript", tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == [checkpoint]


def test_export_tool_checks_on_real_videos_and_prints_the_differences(tmp_path: Path) -> None:
    make_index_video(tmp_path / "videos" / "v0.mp4", 30, width=80, height=64)
    make_index_video(tmp_path / "videos" / "v1.mp4", 45, width=80, height=64)
    (tmp_path / "test.txt").write_text("videos/v0.mp4 0\nvideos/v1.mp4 1\n")
    _, checkpoint = make_checkpoint(tmp_path, ["data.test_list=test.txt"])
    out = tmp_path / "deploy" / "model.onnx"
    done = run_tool("export.py", ["--checkpoint", str(checkpoint), "--format", "onnx", "--out-file", str(out)],
                    env=tool_env())
    assert done.returncode == 0, done.stderr
    assert "on random frames" in done.stdout and "on 2 real clip(s)" in done.stdout
    assert out.is_file() and (out.parent / "model.onnx.json").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx.json"]
    # a video that cannot be read: one line, exit 2
    (tmp_path / "bad.mp4").write_bytes(b"nothing")
    done = run_tool("export.py", ["--checkpoint", str(checkpoint), "--format", "torchscript", "--out-file",
                                  str(tmp_path / "m.pt"), "--check-video", str(tmp_path / "bad.mp4")], env=tool_env())
    assert done.returncode == 2 and "bad.mp4" in done.stderr and "Traceback" not in done.stderr


def test_the_deployed_benchmark_runs_each_runtime_on_the_same_input(tmp_path: Path) -> None:
    from tsn.measure.build import deployed_benchmark

    _, checkpoint = make_checkpoint(tmp_path, [])
    trained = load_trained(checkpoint)
    export(trained, "onnx", tmp_path / "m.onnx")
    export(load_trained(checkpoint), "torchscript", tmp_path / "m.pt")
    results = {path.suffix: deployed_benchmark(path, batch=2, steps=1, warmup=0)
               for path in (tmp_path / "m.onnx", tmp_path / "m.pt", checkpoint)}
    assert [r["runtime"] for r in results.values()] == ["onnxruntime", "torchscript", "pytorch eager"]
    assert all(r["input"] == [2, 3, 3, SIZE, SIZE] and r["cpu_ms_per_clip"] > 0 for r in results.values())


def test_test_and_predict_run_an_exported_file_as_they_run_the_checkpoint(tmp_path: Path) -> None:
    """tools/test.py --model and Predictor.from_exported give the checkpoint's scores (issue 22)."""
    from tsn.config import save_config
    from tsn.evaluation.build import run_test

    for i in range(3):
        make_index_video(tmp_path / "videos" / f"v{i}.mp4", 30 + 7 * i, width=80, height=64)
    (tmp_path / "test.txt").write_text("videos/v0.mp4 0\nvideos/v1.mp4 1\nvideos/v2.mp4 3\n")
    (tmp_path / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    cfg, checkpoint = make_checkpoint(tmp_path, ["data.test_list=test.txt", "data.num_workers=0",
                                                 "test.num_clips=2", "test.crops=3"])
    run_test(cfg, checkpoint, tmp_path / "eager", device="cpu", progress=False)
    for format, name in (("onnx", "m.onnx"), ("torchscript", "m.pt")):
        export(load_trained(checkpoint), format, tmp_path / name)
        run_test(cfg, tmp_path / name, tmp_path / format, device="cpu", progress=False, exported=True)
        eager, exported = np.load(tmp_path / "eager" / "scores.npy"), np.load(tmp_path / format / "scores.npy")
        assert eager.max() > 0.5  # far from uniform: a wrong view average would show
        np.testing.assert_allclose(exported, eager, rtol=0, atol=1e-4)
        video = tmp_path / "videos" / "v1.mp4"
        from_file = Predictor.from_exported(tmp_path / name, num_clips=2, crops=3)
        assert from_file.runtime == ("onnxruntime (CPUExecutionProvider)" if format == "onnx" else "torchscript (CPU)")
        got = from_file.predict(video, window=0.8)
        expected = Predictor.from_checkpoint(checkpoint, num_clips=2, crops=3).predict(video, window=0.8)
        np.testing.assert_allclose(got.probabilities, expected.probabilities, rtol=0, atol=1e-4)
        assert [w.top[0].name for w in got.windows] == [w.top[0].name for w in expected.windows]
    config = tmp_path / "config.yaml"
    save_config(cfg, config)
    done, refused = run_tools_together(
        ("predict.py", ["--model", str(tmp_path / "m.onnx"), str(tmp_path / "videos" / "v0.mp4"), "--format", "json",
                        "--no-progress"]),
        ("test.py", ["--config", str(config), "--model", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "tool"),
                     "--no-progress", "--opt", "data.num_segments=4"]))
    assert done.returncode == 0, done.stderr
    assert f"running {tmp_path / 'm.onnx'} with onnxruntime (CPUExecutionProvider)" in done.stderr
    assert json.loads(done.stdout)["top"][0]["name"] in CLASSES
    done = refused
    assert done.returncode == 2
    assert f"error: data.num_segments: {tmp_path / 'm.onnx'} was exported with 3, the config says 4" in done.stderr


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
@pytest.mark.parametrize("direction", ["bidirectional", "causal"])
def test_a_tsm_model_exports_and_equals_pytorch(format: str, direction: str, tmp_path: Path) -> None:
    _, checkpoint = make_checkpoint(tmp_path, ["model.temporal=tsm", f"model.shift_direction={direction}",
                                               "model.shift_div=4"])
    out = tmp_path / ("tsm.onnx" if format == "onnx" else "tsm.pt")
    report = export(load_trained(checkpoint), format, out)
    assert report.random_difference < 1e-4
    frames = torch.randint(0, 256, (3, 3, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    got, expected = load_runner(out, format)(frames.numpy()), pytorch_probabilities(checkpoint, frames)
    assert expected.max() > 0.5
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    # the clips of a batch stay apart in the exported graph too: a batch of 3 gives what each gives alone
    alone = np.concatenate([load_runner(out, format)(frames[i:i + 1].numpy()) for i in range(3)])
    np.testing.assert_allclose(got, alone, rtol=0, atol=1e-5)
