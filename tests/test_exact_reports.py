"""Every number a run reports is exact: each list entry counted at most once, non-finite scores refused,
the LP-FT probe fitted on what the head sees, and checkpoints chosen on the test list flagged (issue 21)."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from badfiles import make_text_as_mp4, write_list
from tiny_training import (REPO_ROOT, make_tiny_data, restored_global_state, run_tool, run_tools_together,
                           tiny_overrides, tool_env)
from tsn.config import ConfigError, load_config
from tsn.data import transforms as T
from tsn.data.builders import VALIDATION_GROUPS, DatasetLists, carve_validation_splits
from tsn.data.dataset import ClipDataset
from tsn.data.lists import VideoRecord, read_video_list
from tsn.data.loader import build_dataloader
from tsn.data.splits import carve_validation, group_of
from tsn.build import build_tsn
from tsn.evaluation.evaluate import NonFiniteError, evaluate
from tsn.training.build import probe_init_head, train
from tsn.training.linear_probe import extract_view_features
from videos import make_index_video

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(autouse=True)
def _global_state():
    with restored_global_state():
        yield


class ScriptedModel(nn.Module):
    """Returns the next rows of ``outputs`` on every call, whatever the clips (one row per clip)."""

    def __init__(self, outputs: list[list[float]]) -> None:
        super().__init__()
        self.outputs = torch.tensor(outputs, dtype=torch.float32)
        self.calls = 0
        self.spec = type("Spec", (), {"mean": MEAN, "std": STD})()

    def forward(self, clips: torch.Tensor) -> torch.Tensor:  # (N, T, C, H, W) -> (N, classes)
        rows = self.outputs[self.calls:self.calls + clips.shape[0]]
        self.calls += clips.shape[0]
        return rows

    def video_descriptor(self, clips: torch.Tensor) -> torch.Tensor:
        return self.forward(clips)


def _val_loader(root: Path, entries: list[tuple[str, int]], mode: str = "val") -> torch.utils.data.DataLoader:
    records = [VideoRecord(path, label) for path, label in entries]
    transform = T.val_transform(32, 32) if mode == "val" else T.test_transform(1, 32, 32)
    dataset = ClipDataset(records, root, "video", "auto", mode, 2, 1, transform, on_error="skip")
    return build_dataloader(dataset, 1, shuffle=False, num_workers=0, seed=0, drop_last=False)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("exact")
    for name in ("v0", "v1", "v2", "v3"):
        make_index_video(root / f"{name}.mp4", 12)
    make_text_as_mp4(root, "bad.avi")
    return root


def test_validation_counts_a_video_once_when_another_is_skipped(videos: Path) -> None:
    # v0 (label 0), bad.avi, v1 (1), v2 (1) and a model that always says 1: bad.avi is replaced by v1, which
    # must not count twice: 3 videos, top-1 2/3, recall 0 and 1 -> mean class accuracy 0.5, one skipped
    loader = _val_loader(videos, [("v0.mp4", 0), ("bad.avi", 0), ("v1.mp4", 1), ("v2.mp4", 1)])
    model = ScriptedModel([[0.0, 1.0]] * 4)
    metrics, predictions = evaluate(model, loader, torch.device("cpu"), 2, MEAN, STD)
    assert model.calls == 4  # the stand-in is still run, only not counted
    assert (metrics.count, metrics.skipped, metrics.nonfinite) == (3, 1, 0)
    assert metrics.top1 == pytest.approx(2 / 3)
    assert metrics.mean_class_accuracy == pytest.approx(0.5)
    assert metrics.confusion.tolist() == [[0, 1], [0, 2]]
    assert predictions.indices.tolist() == [0, 2, 3] and predictions.labels.tolist() == [0, 1, 1]
    assert [item.path for item in predictions.skipped] == [str(videos / "bad.avi")]


def test_non_finite_scores_of_videos_read_are_an_error_naming_them(videos: Path) -> None:
    entries = [("v0.mp4", 0), ("v1.mp4", 1), ("v2.mp4", 0), ("v3.mp4", 0)]
    rows = [[0.9, 0.1], [0.2, 0.8], [float("nan")] * 2, [float("inf"), 0.0]]
    for mode in ("val", "test"):  # logits of one view; probabilities averaged over views
        with pytest.raises(NonFiniteError) as caught:
            evaluate(ScriptedModel(rows), _val_loader(videos, entries, mode), torch.device("cpu"), 2, MEAN, STD)
        lines = str(caught.value).splitlines()
        assert lines[0].startswith("scores are NaN or infinite for 2 video(s) that were read: a diverged model")
        assert lines[1:] == [f"{videos / 'v2.mp4'}: scores not finite", f"{videos / 'v3.mp4'}: scores not finite"]
    metrics, predictions = evaluate(ScriptedModel(rows), _val_loader(videos, entries), torch.device("cpu"), 2,
                                    MEAN, STD, on_nonfinite="skip")
    assert (metrics.count, metrics.nonfinite, metrics.top1) == (2, 2, 1.0)
    assert [index for index, _ in predictions.nonfinite] == [2, 3]
    assert predictions.indices.tolist() == [0, 1]


def test_probe_features_of_videos_read_must_be_finite(videos: Path) -> None:
    entries = [("v0.mp4", 0), ("bad.avi", 1), ("v1.mp4", 1), ("v2.mp4", 0)]
    rows = [[1.0, 2.0], [3.0, 4.0], [3.0, 4.0], [float("nan"), 0.0]]  # v0, v1 (for bad.avi), v1, v2
    with pytest.raises(NonFiniteError, match=re.escape(f"{videos / 'v2.mp4'}: features not finite")):
        extract_view_features(ScriptedModel(rows), _val_loader(videos, entries, "test"), torch.device("cpu"), 4)
    features = extract_view_features(ScriptedModel(rows), _val_loader(videos, entries, "test"), torch.device("cpu"),
                                     4, on_nonfinite="skip")
    assert features.read.tolist() == [True, False, True, False]
    assert features.features[0, 0].tolist() == [1.0, 2.0] and features.features[2, 0].tolist() == [3.0, 4.0]
    assert {(Path(item.path).name, item.reason.split(" (")[0]) for item in features.skipped} == {
        ("bad.avi", "no backend can read it: pyav: cannot open it"), ("v2.mp4", "non-finite features")}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A one-epoch tiny run whose val list (also its test list) holds an unreadable video."""
    root = tmp_path_factory.mktemp("tiny")
    data = make_tiny_data(root / "data")
    make_text_as_mp4(data.root, "broken.mp4")
    val = (data.root / "val.txt").read_text().splitlines()
    (data.root / "val.txt").write_text("\n".join([val[0], "broken.mp4 1", *val[1:]]) + "\n")
    overrides = tiny_overrides(data, epochs=1)
    with restored_global_state():
        train(load_config(None, overrides), root / "work", progress=False)
    return root / "work", overrides


def test_training_counts_skipped_val_videos_and_flags_the_test_list(tiny_run: tuple[Path, list[str]]) -> None:
    work, _ = tiny_run
    record = json.loads((work / "metrics.jsonl").read_text().splitlines()[-1])
    assert (record["val_samples"], record["val_skipped"], record["val_is_test_list"]) == (4, 1, True)
    log = (work / "train.log").read_text()
    assert "the validation list is the test list" in log and "on 4 videos (1 skipped)" in log
    assert torch.load(work / "best.pth", weights_only=False)["selected_on"].endswith("val.txt")
    assert "selected_on" not in torch.load(work / "latest.pth", weights_only=False)


def test_test_tool_flags_a_checkpoint_chosen_on_its_list_and_lists_skipped_rows(
        tiny_run: tuple[Path, list[str]], tmp_path: Path) -> None:
    work, overrides = tiny_run
    opts = [item for o in overrides for item in ("--opt", o)]
    names = ("best.pth", "latest.pth")
    results = run_tools_together(*[("test.py", ["--checkpoint", str(work / name), "--out", str(tmp_path / name),
                                                "--no-progress", *opts, "--config", str(work / "config.yaml")])
                                   for name in names])
    for name, chosen, result in zip(names, (True, False), results):
        out = tmp_path / name
        assert result.returncode == 0, result.stderr
        assert ("was chosen as the best on this list" in result.stderr) == chosen
        metrics = json.loads((out / "metrics.json").read_text())
        assert (metrics["num_videos"], metrics["num_skipped"], metrics["checkpoint_chosen_on_this_list"]) == \
            (4, 1, chosen)
        rows = list(csv.DictReader(open(out / "skipped.csv")))
        assert [(row["index"], Path(row["path"]).name) for row in rows] == [("1", "broken.mp4")]
        assert np.isnan(np.load(out / "scores.npy")[1]).all()


def test_test_tool_refuses_a_model_whose_scores_are_not_finite(tiny_run: tuple[Path, list[str]],
                                                                tmp_path: Path) -> None:
    work, overrides = tiny_run
    state = torch.load(work / "latest.pth", weights_only=False)
    state["model"]["head.fc.bias"][0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    opts = [item for o in overrides for item in ("--opt", o)]
    args = ["--checkpoint", str(tmp_path / "nan.pth"), "--no-progress", *opts, "--config", str(work / "config.yaml")]
    result, skipped = run_tools_together(("test.py", [*args, "--out", str(tmp_path / "out")]),
                                         ("test.py", [*args, "--out", str(tmp_path / "skip"),
                                                      "--opt", "test.on_nonfinite=skip"]))
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert lines[0] == ("error: scores are NaN or infinite for 4 video(s) that were read: a diverged model (see the "
                        "training loss), an fp16 overflow (train.amp: bf16 or none) or a corrupt checkpoint")
    assert len(lines) == 5 and all(re.fullmatch(r"error: \S+\.mp4: scores not finite", line) for line in lines[1:])
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert skipped.returncode == 0, skipped.stderr
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert (metrics["num_videos"], metrics["num_skipped"]) == (0, 5)


def test_fuse_scores_accepts_only_the_nan_rows_its_runs_listed(tmp_path: Path) -> None:
    write_list(tmp_path / "test.txt", ["a.mp4 0", "b.mp4 1", "c.mp4 0", "d.mp4 0"])
    (tmp_path / "classes.txt").write_text("x\ny\n")
    for case in ("unlisted", "listed"):  # flow's infinite row of d.mp4 is in its skipped list only in "listed"
        for name, rows in (("rgb", [[0.9, 0.1], [0.2, 0.8], [np.nan, np.nan], [0.6, 0.4]]),
                           ("flow", [[0.7, 0.3], [0.4, 0.6], [0.5, 0.5], [np.inf, 0.0]])):
            (tmp_path / case / name).mkdir(parents=True)
            np.save(tmp_path / case / name / "scores.npy", np.array(rows))
        (tmp_path / case / "rgb" / "skipped.csv").write_text("index,path,reason\n2,/v/c.mp4,empty file (0 bytes)\n")
    (tmp_path / "listed" / "flow" / "skipped.csv").write_text("index,path,reason\n3,/v/d.mp4,empty file (0 bytes)\n")

    def args(case: str) -> list[str]:
        return ["--scores", str(tmp_path / case / "rgb" / "scores.npy"), str(tmp_path / case / "flow" / "scores.npy"),
                "--list", str(tmp_path / "test.txt"), "--classes", str(tmp_path / "classes.txt"),
                "--out", str(tmp_path / case / "fused")]

    refused, fused = run_tools_together(("fuse_scores.py", args("unlisted")), ("fuse_scores.py", args("listed")))
    assert refused.returncode == 2
    assert [line for line in refused.stderr.splitlines() if line.startswith("error: ")][1:] == [
        f"error: d.mp4: scores in {tmp_path / 'unlisted' / 'flow' / 'scores.npy'} not finite"]
    assert fused.returncode == 0, fused.stderr
    metrics = json.loads((tmp_path / "listed" / "fused" / "metrics.json").read_text())
    assert (metrics["num_videos"], metrics["num_skipped"], metrics["top1"]) == (2, 2, 1.0)
    rows = list(csv.DictReader(open(tmp_path / "listed" / "fused" / "skipped.csv")))
    assert [(row["index"], row["path"]) for row in rows] == [("2", "c.mp4"), ("3", "d.mp4")]


# ---------------------------------------------------------------- LP-FT sees what the probe saw


def _first_step_descriptor(model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """What ``head.fc`` receives in a training-mode forward of ``clips``."""
    seen: list[torch.Tensor] = []
    handle = model.head.fc.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    model.train()
    model(clips)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("opts", [
    ["model.head=bilinear", "model.bilinear_dim=8"],
    ["model.head=bilinear", "model.bilinear_dim=8", "model.consensus=avg"],
    ["model.partial_bn=true", "model.freeze_bn=false", "model.frozen_stages=1"],
    ["model.freeze_bn=false", "model.freeze_backbone=true"],
    ["data.modality=rgbdiff"],
])
def test_the_probe_fits_the_descriptor_the_head_gets_in_the_first_step(opts: list[str]) -> None:
    cfg = load_config(None, ["model.backbone=resnet18", "model.pretrained=false", "data.num_segments=2", *opts])
    torch.manual_seed(0)
    model = build_tsn(cfg, 3)
    assert model.batch_statistics_layers() == []
    frames = 2 * cfg.data.frames_read_per_segment
    clips = torch.randn(4, frames, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        fitted_on = model.video_descriptor(clips)  # what extract_view_features gives the probe
        seen = _first_step_descriptor(model, clips)
    if cfg.model.consensus == "avg":  # the head classifies each segment; the probe fits their mean
        seen = seen.reshape(4, 2, -1).mean(dim=1)
    torch.testing.assert_close(seen, fitted_on, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opts", [
    ["model.partial_bn=true", "model.freeze_bn=false"],
    ["model.partial_bn=false", "model.freeze_bn=false"],
    ["model.freeze_bn=false", "model.head=bilinear"],
])
def test_lp_ft_refuses_a_batchnorm_on_batch_statistics(opts: list[str], tmp_path: Path) -> None:
    # flow and RGB difference: at once, by the config; every modality: when training starts, on the built model
    with pytest.raises(ConfigError, match=r"^model\.freeze_bn: data\.modality rgbdiff with train\.head_init "
                                          r"linear_probe needs model\.freeze_bn: true"):
        load_config(None, [*opts, "data.modality=rgbdiff"])
    cfg = load_config(None, [*opts, "model.backbone=resnet18", "model.pretrained=false"])
    model = build_tsn(cfg, 3)
    assert model.batch_statistics_layers()[0] == "backbone.bn1"
    with pytest.raises(ConfigError, match=r"^train\.head_init: linear_probe: \d+ BatchNorm layer\(s\) would train on "
                                          r"batch statistics \(first: backbone\.bn1\)"):
        probe_init_head(cfg, model, 3, torch.device("cpu"), None)
    data = make_tiny_data(tmp_path / "data")
    overrides = [*tiny_overrides(data, epochs=1), *opts]
    with pytest.raises(ConfigError, match=r"^train\.head_init: linear_probe: "):
        train(load_config(None, overrides), tmp_path / "work", progress=False)


def test_bilinear_head_statistics_stay_fixed_under_lp_ft_only() -> None:
    base = ["model.backbone=resnet18", "model.pretrained=false", "model.head=bilinear", "model.bilinear_dim=8"]
    lp = build_tsn(load_config(None, base), 3).train()
    assert not lp.head.reduce[1].training and lp.head.reduce[1].weight.requires_grad
    random_head = build_tsn(load_config(None, [*base, "train.head_init=random"]), 3).train()
    assert random_head.head.reduce[1].training


# ---------------------------------------------------------------- a validation split carved from training


def _ucf_records() -> list[VideoRecord]:
    return [VideoRecord(f"{name}/v_{name}_g{g:02d}_c{c:02d}.avi", label)
            for label, name in enumerate(("Archery", "Bowling", "Diving")) for g in range(8, 26) for c in (1, 2, 3)]


def test_carved_validation_keeps_groups_whole_and_every_video_once() -> None:
    records = _ucf_records()
    pattern = re.compile(VALIDATION_GROUPS["ucf101"])
    rest, held = carve_validation(records, 0.1, seed=3, group=VALIDATION_GROUPS["ucf101"])
    assert sorted(rest + held, key=records.index) == records  # every video in exactly one part, order kept
    assert rest == [r for r in records if r in rest] and held == [r for r in records if r in held]
    rest_groups = {group_of(r.path, pattern) for r in rest}
    held_groups = {group_of(r.path, pattern) for r in held}
    assert held_groups and not rest_groups & held_groups
    assert 0.05 <= len(held) / len(records) <= 0.17
    assert {r.label for r in held} == {0, 1, 2}  # stratified: every class validated


def test_hmdb51_groups_are_the_clips_source_film() -> None:
    pattern = re.compile(VALIDATION_GROUPS["hmdb51"])
    assert group_of("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", pattern) == "April_09_brush_hair"
    assert group_of("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_2.avi", pattern) == "April_09_brush_hair"
    assert group_of("kick/Pirates_kick_f_cm_np2_le_bad_11.avi", pattern) == "Pirates_kick"


def test_build_lists_carves_a_grouped_validation_split(tmp_path: Path) -> None:
    lists = carve_validation_splits(DatasetLists(["a", "b", "c"], {"train_split1": _ucf_records(),
                                                                   "test_split1": _ucf_records()[:3]}), 0.2)
    assert set(lists.splits) == {"train_split1", "test_split1", "train_split1_val", "train_split1_minus_val"}
    src = tmp_path / "videos"
    for label in ("run", "jump"):
        for actor in range(4):
            for take in range(2):
                video = src / "train" / label / f"{label}_actor{actor}_t{take}.mp4"
                video.parent.mkdir(parents=True, exist_ok=True)
                video.write_bytes(b"x")
    result = run_tool("build_lists.py", ["--dataset", "folder", "--src", str(src), "--out", str(tmp_path / "lists"),
                                         "--split", "train", "--carve-val", "0.25", "--group", r"actor(\d)"],
                      env=tool_env())
    assert result.returncode == 0, result.stderr
    train = read_video_list(tmp_path / "lists" / "train.txt")
    held = read_video_list(tmp_path / "lists" / "train_val.txt")
    rest = read_video_list(tmp_path / "lists" / "train_minus_val.txt")
    assert sorted(held + rest, key=train.index) == train and len(held) == 4
    actors = lambda records: {re.search(r"actor(\d)", r.path).group(1) for r in records}  # noqa: E731
    assert not actors(held) & actors(rest)
    bad = run_tool("build_lists.py", ["--dataset", "folder", "--src", str(src), "--out", str(tmp_path / "x"),
                                      "--split", "train", "--carve-val", "0.25", "--group", "nomatch(\\d)"],
                   env=tool_env())
    assert bad.returncode == 2 and "does not match it" in bad.stderr
