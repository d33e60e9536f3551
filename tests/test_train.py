"""The training engine: gradient clipping, resume after a stop, the work dir's files, CLI errors, the demo."""

from __future__ import annotations

import copy
import json
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tiny_training import REPO_ROOT, make_tiny_data, restored_global_state, run_tool, tiny_overrides
from tsn.config import Config, load_config
from tsn.data.synthetic import DemoData
from tsn.build import build_optimizer, build_tsn
from tsn.checkpoint import load_checkpoint
from tsn.apps.demo import run_demo
from tsn.training.build import train
from tsn.training.trainer import LossRecipe, compute_loss, optimizer_step

EPOCHS = 3
# The resume runs use every generator a run draws from: dropout (torch), mixup (numpy),
# training crops and flips (per sample), the shuffled order, and one loader worker.
RESUME_OPTS = ["train.mixup_alpha=0.4", "model.dropout=0.5", "data.num_workers=1",
               "train.scheduler.warmup_epochs=1", "train.scheduler.name=cosine", "train.ema_decay=0.9"]


@pytest.fixture(autouse=True)
def _global_state():
    with restored_global_state():
        yield


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    return make_tiny_data(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="module")
def straight_run(tiny_data: DemoData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Work dir of an uninterrupted 3-epoch run."""
    work = tmp_path_factory.mktemp("straight")
    cfg = load_config(None, [*tiny_overrides(tiny_data, EPOCHS), *RESUME_OPTS])
    with restored_global_state():
        result = train(cfg, work, device="cpu", progress=False)
    assert result.epochs == EPOCHS
    return work


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- gradient clipping


STEP_OPTS = ["model.backbone=resnet18", "model.pretrained=false", "model.dropout=0.0", "data.num_segments=2",
             "train.momentum=0.0", "train.weight_decay=0.0", "train.backbone_lr_mult=1.0", "train.lr=0.5",
             "train.label_smoothing=0.0", "train.optimizer=sgd"]


@pytest.fixture(scope="module")
def step_model() -> torch.nn.Module:
    """A 2-segment ResNet-18 TSN with random weights, in train mode."""
    with restored_global_state():
        torch.manual_seed(0)
        model = build_tsn(load_config(None, STEP_OPTS), num_classes=3)
    return model.train()


def one_step(base: torch.nn.Module, clip: float | None) -> tuple[torch.nn.Module, list[torch.Tensor],
                                                                  float | None]:
    """One training step of a copy of ``base`` on a fixed batch through the trainer's functions,
    with SGD (no momentum, no decay, one lr 0.5) -> (the stepped copy, its parameters before the
    step, the returned pre-clipping norm)."""
    model = copy.deepcopy(base)
    optimizer = build_optimizer(load_config(None, STEP_OPTS).train, model)
    before = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(1)
    clips = torch.randn(2, 2, 3, 32, 32, generator=generator)  # (B, T, C, H, W)
    recipe = LossRecipe(label_smoothing=0.0)
    _, loss = compute_loss(model, model, clips, torch.tensor([0, 2]), recipe, np.random.default_rng(0),
                           torch.device("cpu"))
    norm = optimizer_step(loss, model, optimizer, torch.amp.GradScaler("cpu", enabled=False), clip)
    return model, before, None if norm is None else float(norm)


def grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in model.parameters() if p.grad is not None]


def total_norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors])))


def test_clipping_bounds_the_gradient_norm_and_scales_the_step(step_model: torch.nn.Module) -> None:
    # Reference: the same step without clipping gives the raw gradients.
    unclipped, _, none = one_step(step_model, None)
    assert none is None
    raw = grads(unclipped)
    raw_norm = total_norm(raw)
    assert raw_norm > 0.1 and len(raw) == sum(1 for p in step_model.parameters() if p.requires_grad)

    max_norm = raw_norm / 10  # well below the raw norm, so clipping must act
    model, before, returned = one_step(step_model, max_norm)
    assert returned == pytest.approx(raw_norm, rel=1e-5)
    clipped = grads(model)
    assert total_norm(clipped) <= max_norm * (1 + 1e-5)
    assert total_norm(clipped) == pytest.approx(max_norm, rel=1e-4)
    # Same direction: every gradient scaled by max_norm / raw_norm (torch adds 1e-6 to the norm).
    scale = max_norm / (raw_norm + 1e-6)
    for got, want in zip(clipped, raw):
        torch.testing.assert_close(got, want * scale, rtol=1e-4, atol=1e-7)
    # The SGD step used the clipped gradients: p_new = p_old - 0.5 * g_clipped.
    for param, old in zip(model.parameters(), before):
        if param.grad is not None:
            torch.testing.assert_close(param.detach(), old - 0.5 * param.grad, rtol=0, atol=1e-6)

    # A bound above the norm leaves the gradients as they are.
    loose, _, returned = one_step(step_model, raw_norm * 2)
    assert returned == pytest.approx(raw_norm, rel=1e-5)
    for got, want in zip(grads(loose), raw):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------- resume


def test_resume_after_a_stop_gives_the_same_final_weights(tiny_data: DemoData, straight_run: Path,
                                                          tmp_path: Path) -> None:
    """Stop after epoch 1 of 3, then resume (what ``tools/train.py --resume`` calls) from the saved
    config.yaml: every tensor of the final checkpoint (model, optimizer) equals the uninterrupted
    run's, bit for bit (CPU, deterministic mode)."""
    work = tmp_path / "stopped"
    cfg = load_config(None, [*tiny_overrides(tiny_data, EPOCHS), *RESUME_OPTS])
    result = train(cfg, work, device="cpu", progress=False, stop_after_epoch=1)
    assert result.epochs == 1
    assert load_checkpoint(work / "latest.pth")["epoch"] == 1
    assert len(read_jsonl(work / "metrics.jsonl")) == 1

    result = train(load_config(work / "config.yaml"), work, resume=True, device="cpu", progress=False)
    assert result.epochs == EPOCHS
    assert "resumed from" in (work / "train.log").read_text()

    final = load_checkpoint(work / "latest.pth")
    expected = load_checkpoint(straight_run / "latest.pth")
    assert final["epoch"] == expected["epoch"] == EPOCHS
    assert final["model"].keys() == expected["model"].keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(final["model"][name], tensor), name
    for index, state in expected["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(final["optimizer"]["state"][index][key], value), (index, key)
    assert final["scheduler"] == expected["scheduler"]
    assert final["best_top1"] == expected["best_top1"]
    assert final["ema"]["updates"] == expected["ema"]["updates"] == 3 * 2  # 2 steps per epoch
    for name, tensor in expected["ema"]["model"].items():
        assert torch.equal(final["ema"]["model"][name], tensor), name
    # The per-epoch log continues: epoch 1 from the first process, 2 and 3 from the resumed one.
    resumed, straight = read_jsonl(work / "metrics.jsonl"), read_jsonl(straight_run / "metrics.jsonl")
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for got, want in zip(resumed, straight):
        got.pop("seconds"), want.pop("seconds")
        assert got == want


def test_work_dir_holds_checkpoints_logs_and_config(tiny_data: DemoData, straight_run: Path) -> None:
    names = {path.name for path in straight_run.iterdir()}
    assert {"config.yaml", "latest.pth", "best.pth", "metrics.jsonl", "train.log", "tb"} <= names
    assert not any(name.endswith(".tmp") for name in names)
    assert any((straight_run / "tb").iterdir())
    # the resolved config reloads to the config the run used
    saved = Config.from_dict(yaml.safe_load((straight_run / "config.yaml").read_text()))
    assert saved == load_config(None, [*tiny_overrides(tiny_data, EPOCHS), *RESUME_OPTS])

    records = read_jsonl(straight_run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for record in records:
        assert {"epoch", "train_loss", "val_loss", "val_top1", "lr"} <= record.keys()
        assert record["train_samples"] == 8 and record["val_samples"] == 4
        assert 0.0 <= record["val_top1"] <= 1.0 and record["val_top1"] * 4 == round(record["val_top1"] * 4)
    # The rates the epochs' steps used (2 iterations each) with the default lr 1e-4: warm-up over
    # epoch 1 from 0.1 x 1e-4 (iteration 0: 1e-5, 1: 1e-5 + 9e-5 / 2 = 5.5e-5), then cosine over
    # iterations 2..5 from 1e-4: 1e-4 * (1 + cos(pi * j / 4)) / 2 for j = 0, 1, 2, 3.
    # "lr" is the rate of an epoch's first step, "lr_last" of its last one.
    cosine = [1e-4 * (1 + math.cos(math.pi * j / 4)) / 2 for j in range(4)]
    assert [r["lr"] for r in records] == pytest.approx([1e-5, cosine[0], cosine[2]], abs=1e-14)
    assert [r["lr_last"] for r in records] == pytest.approx([5.5e-5, cosine[1], cosine[3]], abs=1e-14)
    for record in records:  # mean class accuracy beside top-1 (2 classes, 2 val videos each: steps of 1/4)
        assert record["val_mean_class_accuracy"] * 4 == pytest.approx(round(record["val_mean_class_accuracy"] * 4))
        assert 0.0 <= record["train_mean_class_accuracy"] <= 1.0

    latest = load_checkpoint(straight_run / "latest.pth")
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "best_top1", "config", "rng",
            "mixup_rng"} <= latest.keys()
    assert latest["config"] == saved.to_dict()
    best = load_checkpoint(straight_run / "best.pth")
    assert best["best_top1"] == max(r["val_top1"] for r in records)
    # best.pth is the checkpoint of the first epoch that reached the best val top-1
    assert best["epoch"] == next(r["epoch"] for r in records if r["val_top1"] == best["best_top1"])


def test_a_checkpoint_is_refused_under_another_consensus_or_segment_count(tiny_data: DemoData, straight_run: Path,
                                                                          tmp_path: Path) -> None:
    """The weights of an ``avg`` and a ``feature_max`` TSN are the same tensors, so a config whose defaults
    changed since training would load them silently and compute something else: refused, naming the key."""
    from tsn.checkpoint import CheckpointError
    from tsn.evaluation.build import run_test

    trained = load_config(straight_run / "config.yaml")
    assert trained.model.consensus == "feature_max"
    other = load_config(None, [*tiny_overrides(tiny_data, EPOCHS), *RESUME_OPTS, "model.consensus=avg"])
    with pytest.raises(CheckpointError, match=r"trained with model.consensus: feature_max, but the config says avg"):
        run_test(other, straight_run / "latest.pth", tmp_path / "test", device="cpu", progress=False)
    work = tmp_path / "resumed"
    work.mkdir()
    (work / "latest.pth").write_bytes((straight_run / "latest.pth").read_bytes())
    more = load_config(None, [*tiny_overrides(tiny_data, EPOCHS + 1), *RESUME_OPTS, "data.num_segments=3"])
    with pytest.raises(CheckpointError, match=r"trained with data.num_segments: 2, but the config says 3"):
        train(more, work, resume=True, device="cpu", progress=False)


def test_testing_a_checkpoint_needs_no_imagenet_weights(tiny_data: DemoData, straight_run: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint replaces every weight, so ``tools/test.py`` must not read the ImageNet file (an empty torch
    cache here), and scores what the run's own config scores."""
    from tsn.evaluation.build import run_test

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    cfg = load_config(None, [*tiny_overrides(tiny_data, EPOCHS), *RESUME_OPTS, "model.pretrained=true"])
    report = run_test(cfg, straight_run / "best.pth", tmp_path / "test", device="cpu", progress=False)
    trained = run_test(load_config(straight_run / "config.yaml"), straight_run / "best.pth", tmp_path / "own",
                       device="cpu", progress=False)
    assert report.num_videos == 4 and report.top1 == trained.top1
    np.testing.assert_array_equal(np.load(tmp_path / "test" / "scores.npy"), np.load(tmp_path / "own" / "scores.npy"))


def test_load_trained_gives_the_run_model_in_eval_mode_with_its_classes(straight_run: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """One function from checkpoint to inference model: the run's config and class names from the file alone,
    the weight average loaded strictly, eval mode, no ImageNet weight file read."""
    from tsn.evaluation.inference import load_trained

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    state = load_checkpoint(straight_run / "best.pth")
    assert state["class_names"] == ["ball_bouncing", "square_rotating"]
    state["config"]["model"]["pretrained"] = str(tmp_path / "no_such_imagenet_file.pth")  # never read
    torch.save(state, tmp_path / "moved.pth")
    trained = load_trained(tmp_path / "moved.pth")
    assert trained.class_names == ["ball_bouncing", "square_rotating"] and not trained.model.training
    assert trained.config.data.num_segments == 2 and trained.config.model.backbone == "resnet18"
    for name, tensor in trained.model.state_dict().items():
        assert torch.equal(tensor, state["ema"]["model"][name]), name  # the average, not the last weights


def test_load_trained_refuses_what_does_not_fit(straight_run: Path, tmp_path: Path) -> None:
    from tsn.checkpoint import CheckpointError
    from tsn.evaluation.inference import load_trained

    state = load_checkpoint(straight_run / "best.pth")
    cfg = load_config(straight_run / "config.yaml")
    bare = tmp_path / "bare.pth"
    torch.save(state["model"], bare)
    with pytest.raises(CheckpointError, match=r"bare.pth: holds no config \(a bare state dict\): pass the run's config"):
        load_trained(bare)
    assert load_trained(bare, cfg).class_names == ["ball_bouncing", "square_rotating"]  # the config's data.classes

    extra = dict(state["model"], **{"head.extra": torch.zeros(1)})
    torch.save({"model": extra, "config": state["config"], "class_names": state["class_names"]}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=r"x.pth: does not fit backbone 'resnet18' with 2 classes: 1 tensors missing, extra or "
                                              r"of another shape \(first: head.extra\)"):
        load_trained(tmp_path / "x.pth")
    three = dict(state, class_names=["a", "b", "c"])
    three.pop("ema")
    torch.save(three, tmp_path / "three.pth")
    with pytest.raises(CheckpointError, match=r"three.pth: does not fit backbone 'resnet18' with 3 classes"):
        load_trained(tmp_path / "three.pth")


def test_test_tool_refuses_a_class_list_other_than_the_checkpoint_s(tiny_data: DemoData, straight_run: Path,
                                                                    tmp_path: Path) -> None:
    from tsn.checkpoint import CheckpointError
    from tsn.evaluation.build import run_test

    classes = tmp_path / "classes.txt"
    classes.write_text("square_rotating\nball_bouncing\n")  # the same classes reordered: every label would shift
    cfg = load_config(None, [*tiny_overrides(tiny_data, EPOCHS), *RESUME_OPTS, f"data.classes={classes}"])
    with pytest.raises(CheckpointError, match=r"trained on 2 classes \(ball_bouncing, square_rotating\), "
                                              r"but data.classes lists 2 \(square_rotating, ball_bouncing\)"):
        run_test(cfg, straight_run / "best.pth", tmp_path / "test", device="cpu", progress=False)


def test_benchmark_infer_times_a_trained_checkpoint(straight_run: Path) -> None:
    from tsn.measure.build import inference_benchmark

    result = inference_benchmark(straight_run / "best.pth", batch=2, steps=1, warmup=0)
    assert result["mode"] == "infer" and result["backbone"] == "resnet18"
    assert result["segments"] == 2 and result["input_size"] == 64 and result["images_per_s"] > 0


class _Killed(Exception):
    """Stands for a SIGKILL between two checkpoint writes."""


def test_best_checkpoint_is_written_before_the_latest(tiny_data: DemoData, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Epoch 1 is a new best, so it writes both files; killed between the two writes, the run must leave
    ``best.pth`` of epoch 1 (the resumed epoch writes both again), never a ``latest.pth`` that records a best
    which no ``best.pth`` holds."""
    import tsn.training.trainer as trainer

    writes: list[str] = []
    real_save = trainer.save_checkpoint

    def save_then_die(state: dict, path: Path, keep_previous: bool = True) -> None:
        if writes:
            raise _Killed
        writes.append(Path(path).name)
        real_save(state, path, keep_previous=keep_previous)

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        train(load_config(None, tiny_overrides(tiny_data, 1)), tmp_path, device="cpu", progress=False)
    assert writes == ["best.pth"] and not (tmp_path / "latest.pth").exists()
    assert load_checkpoint(tmp_path / "best.pth")["epoch"] == 1


# ---------------------------------------------------------------- command line


def test_train_cli_unknown_key_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  backbone: resnet18\n")
    done = run_tool("train.py", ["--config", str(config), "--work-dir", str(tmp_path / "w"),
                                 "--opt", "train.lr=0.1", "--opt", "train.bogus=1"])
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: train.bogus: unknown key")
    assert not (tmp_path / "w").exists()


def run_train_main(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``tools/train.py ARGS`` in this process (no interpreter start-up); returns the exit status."""
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / "tools" / "train.py"), run_name="__main__")
    return exit_info.value.code


@pytest.mark.parametrize(("opt", "message"), [
    ("train.lr=abc", "error: train.lr: expected float, got 'abc'"),
    ("data.batch_size=0", "error: data.batch_size: must be >= 1, got 0"),
    ("train.scheduler.nme=cosine", "error: train.scheduler.nme: unknown key (did you mean 'name'?)"),
    ("model=resnet18", "error: model: expected a mapping, got 'resnet18'"),
])
def test_train_cli_config_errors_name_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str], opt: str, message: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  backbone: resnet18\n")
    assert run_train_main(["--config", str(config), "--work-dir", str(tmp_path / "w"), "--opt", opt],
                          monkeypatch) == 2
    assert capsys.readouterr().err.splitlines() == [message]
    assert not (tmp_path / "w").exists()


def test_train_cli_missing_config_file_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.yaml"
    assert run_train_main(["--config", str(missing), "--work-dir", str(tmp_path / "w")], monkeypatch) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --config {missing}: no such file"]


# ---------------------------------------------------------------- demo


def test_demo_smoke(tmp_path: Path, tiny_data: DemoData, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo's code path with the demo config (EfficientNet-Lite0, ImageNet weights) on tiny data."""
    work = tmp_path / "demo"
    overrides = ["data.input_size=64", "data.short_side=64", "data.batch_size=4", "data.num_workers=0",
                 "train.epochs=1", "train.scheduler.warmup_epochs=0"]
    result, report = run_demo(REPO_ROOT / "configs" / "demo.yaml", work, overrides, device="cpu", data=tiny_data)
    assert result.epochs == 1 and result.last_val is not None and result.last_val.count == 4
    assert report.num_videos == 4
    assert report.top1 == result.best_top1  # one view per video in the demo: test = validation
    out = capsys.readouterr().out
    assert "precision" in out and "ball_bouncing" in out and "square_rotating" in out
    for name in ("best.pth", "latest.pth", "metrics.jsonl", "config.yaml", "test/metrics.json",
                 "test/per_class.csv", "test/scores.npy"):
        assert (work / name).is_file(), name
    assert load_config(work / "config.yaml").model.backbone == "efficientnet_lite0"


def test_weight_average_follows_the_documented_update() -> None:
    from tsn.training.ema import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema = WeightAverage(model, decay=0.9)
    expected = 1.0
    for step in range(30):
        with torch.no_grad():
            model[0].weight.fill_(float(step + 2))
        model[1].num_batches_tracked += 1
        d = min(0.9, (1 + step) / (10 + step))  # warm-up, then the decay
        ema.update(model)
        expected = d * expected + (1 - d) * (step + 2)
        assert ema.module[0].weight[0, 0].item() == pytest.approx(expected, rel=1e-6)
    assert int(ema.module[1].num_batches_tracked) == 30  # integer buffers are copied
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training


def test_linear_probe_head_init_starts_training_from_the_probe(tiny_data: DemoData, tmp_path: Path) -> None:
    """LP-FT (the default ``train.head_init``): before the first step the head is the probe fitted on
    the training videos' cached features; with a learning rate of ~0 it is still that after an epoch."""
    from tsn.training.linear_probe import fit_probe, load_cached

    opts = [*tiny_overrides(tiny_data, 1), "train.lr=1e-12", "train.weight_decay=0"]
    train(load_config(None, opts), tmp_path / "lp", device="cpu", progress=False)
    cached = sorted((tmp_path / "lp" / "probe_cache").glob("*.npz"))
    assert len(cached) == 1
    features = load_cached(cached[0])
    assert features.features.shape[:2] == (8, 2 * 3)  # 8 training videos, test.num_clips x test.crops views
    fit = fit_probe(features, 2, seed=0)
    head = load_checkpoint(tmp_path / "lp" / "latest.pth")["model"]["head.fc.weight"].numpy()
    np.testing.assert_allclose(head, fit.classifier.weight, rtol=1e-4, atol=1e-5)
    train(load_config(None, [*opts, "train.head_init=random"]), tmp_path / "random", device="cpu", progress=False)
    random_head = load_checkpoint(tmp_path / "random" / "latest.pth")["model"]["head.fc.weight"].numpy()
    assert not np.allclose(random_head, fit.classifier.weight, atol=1e-3)
