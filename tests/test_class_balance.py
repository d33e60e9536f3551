"""train.class_balance: inverse-frequency loss weights, the class-balanced order, the balanced probe, and
validation with several views (train.val_num_clips, train.val_crops)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_training import make_tiny_data, restored_global_state, tiny_overrides
from tsn.build import build_clip_dataset, build_dataset, build_loader
from tsn.config import ConfigError, load_config
from tsn.data.loader import ClassBalancedOrder, EpochSampler
from tsn.training.build import train
from tsn.training.linear_probe import ViewFeatures, fit_probe
from tsn.training.losses import cross_entropy, inverse_frequency_weights, mixup_cross_entropy


def test_inverse_frequency_weights_by_hand() -> None:
    # 4 labels, 2 present classes of 3: N / (K * n_c) = 4 / (2 * 3) and 4 / (2 * 1); the absent class 0
    assert inverse_frequency_weights([0, 0, 0, 1], 3) == pytest.approx((2 / 3, 2.0, 0.0))
    # the mean weight over the training labels is 1
    weights = inverse_frequency_weights([0, 0, 0, 1, 2, 2], 3)
    assert np.mean([weights[y] for y in (0, 0, 0, 1, 2, 2)]) == pytest.approx(1.0)
    assert inverse_frequency_weights([1, 0, 1, 0], 2) is None  # balanced: the unweighted loss


def test_weighted_cross_entropy_by_hand() -> None:
    logits = torch.zeros(2, 2)  # -log p = ln 2 for every sample
    labels = torch.tensor([0, 1])
    weights = torch.tensor([1.0, 3.0])
    # (1 * ln2 + 3 * ln2) / 2 samples: divided by the batch, not by the weights' sum
    assert float(cross_entropy(logits, labels, class_weights=weights)) == pytest.approx(2 * math.log(2))
    assert float(cross_entropy(logits, labels)) == pytest.approx(math.log(2))
    mixed = mixup_cross_entropy(logits, labels, labels.flip(0), 0.25, class_weights=weights)
    assert float(mixed) == pytest.approx(2 * math.log(2))  # both label sets hold one sample of each class


def test_class_balanced_order_draws_every_class_as_often_as_the_largest() -> None:
    labels = [0, 0, 0, 0, 1, 2, 2]  # 4, 1 and 2 videos
    order = ClassBalancedOrder(labels, seed=3)
    assert len(order) == 12
    for epoch in range(3):
        order.set_epoch(epoch)
        drawn = list(order)
        per_class = Counter(labels[i] for i in drawn)
        assert per_class == {0: 4, 1: 4, 2: 4}
        per_video = Counter(drawn)
        assert set(per_video) == set(range(7))  # every video seen
        assert [per_video[i] for i in range(7)] == [1, 1, 1, 1, 4, 2, 2]
    order.set_epoch(0)
    first = list(order)
    assert first == list(ClassBalancedOrder(labels, seed=3))  # a function of (seed, epoch)
    order.set_epoch(1)
    assert list(order) != first


def test_class_balanced_order_splits_between_ranks() -> None:
    labels = [0, 0, 0, 1, 1]  # 3 per class: 6 draws, padded to 8 for 4 ranks
    whole = ClassBalancedOrder(labels, seed=0).epoch_order()
    ranks = [list(ClassBalancedOrder(labels, seed=0, num_replicas=4, rank=r)) for r in range(4)]
    assert [len(part) for part in ranks] == [2, 2, 2, 2]
    padded = whole + whole[:2]
    assert [padded[r::4] for r in range(4)] == ranks


@pytest.fixture(scope="module")
def imbalanced_data(tmp_path_factory: pytest.TempPathFactory):
    """Tiny demo data whose training list keeps 1 of class 1's 4 videos."""
    data = make_tiny_data(tmp_path_factory.mktemp("imbalanced") / "data")
    train_list = Path(data.root) / "train.txt"
    lines = train_list.read_text().splitlines()
    ones = [line for line in lines if line.split()[-1] == "1"]
    train_list.write_text("\n".join([line for line in lines if line.split()[-1] == "0"] + ones[:1]) + "\n")
    return data


def test_sampler_mode_builds_a_balanced_training_loader(imbalanced_data) -> None:
    cfg = load_config(None, [*tiny_overrides(imbalanced_data), "train.class_balance=sampler"])
    dataset = build_dataset(cfg, "train", 2)
    loader = build_loader(cfg, dataset, train=True, distributed=False)
    assert isinstance(loader.sampler, EpochSampler) and isinstance(loader.sampler.order, ClassBalancedOrder)
    assert len(loader.sampler) == 8  # 4 + 4 draws from 4 + 1 videos
    val_loader = build_loader(cfg, build_dataset(cfg, "val", 2), train=False, distributed=False)
    assert not isinstance(val_loader.sampler.order, ClassBalancedOrder)  # validation counts each video once


def _train_losses(data, work: Path, balance: str, extra: tuple[str, ...] = ()) -> list[dict]:
    cfg = load_config(None, [*tiny_overrides(data, 2), f"train.class_balance={balance}", *extra])
    with restored_global_state():
        train(cfg, work, device="cpu", progress=False)
    return [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]


def test_each_balance_trains_and_loss_weights_change_the_loss(imbalanced_data, tmp_path: Path) -> None:
    runs = {balance: _train_losses(imbalanced_data, tmp_path / balance, balance)
            for balance in ("none", "sampler", "loss")}
    assert runs["sampler"][0]["train_samples"] == 8  # 4 + 4 draws, not the 5 videos
    assert runs["none"][0]["train_samples"] == runs["loss"][0]["train_samples"] == 4  # one full batch of 4
    assert runs["loss"][0]["train_loss"] != runs["none"][0]["train_loss"]
    assert all(math.isfinite(r["train_loss"]) for run in runs.values() for r in run)


def test_loss_weights_on_a_balanced_list_are_the_unweighted_run(tmp_path: Path) -> None:
    data = make_tiny_data(tmp_path / "data")
    runs = [_train_losses(data, tmp_path / balance, balance) for balance in ("none", "loss")]
    without_seconds = [[{k: v for k, v in record.items() if k != "seconds"} for record in run] for run in runs]
    assert without_seconds[0] == without_seconds[1]  # every loss and metric, bit for bit


def test_balanced_probe_recalls_the_rare_class() -> None:
    rng = np.random.default_rng(0)
    # two overlapping classes in 2-D, 90 against 10 videos, one view each
    common = rng.normal(0.0, 1.0, size=(90, 1, 2))
    rare = rng.normal(1.0, 1.0, size=(10, 1, 2))
    features = np.concatenate([common, rare]).astype(np.float32)
    labels = np.array([0] * 90 + [1] * 10)
    train = ViewFeatures(features, labels, (), np.ones(100, dtype=bool))
    plain = fit_probe(train, 2, l2=0.01)
    balanced = fit_probe(train, 2, l2=0.01, balanced=True)

    def rare_recall(fit) -> float:
        return float((fit.classifier.video_scores(features[90:]).argmax(1) == 1).mean())
    assert rare_recall(plain) <= 0.2
    assert rare_recall(balanced) >= 0.6


def test_validation_with_several_views(tmp_path: Path) -> None:
    data = make_tiny_data(tmp_path / "data")
    opts = (*tiny_overrides(data, 1), "train.val_num_clips=2", "train.val_crops=3")
    cfg = load_config(None, list(opts))
    val_set = build_dataset(cfg, "val", 2)
    assert (val_set.num_clips, val_set.mode) == (2, "test")
    assert tuple(val_set[0].clip.shape[:2]) == (6, 2)  # (V, T, ...): 2 clips x 3 crops of 2 frames
    cfg = load_config(None, [*tiny_overrides(data, 1)])
    assert build_dataset(cfg, "val", 2).mode == "val"  # one view: the centre frames, as before
    with restored_global_state():
        train(load_config(None, list(opts)), tmp_path / "work", device="cpu", progress=False)
    record = json.loads((tmp_path / "work" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val_samples"] == 4


def test_ten_validation_crops_need_a_flip() -> None:
    cfg = load_config(None, ["data.flip=false", "train.val_crops=10"])
    with pytest.raises(ConfigError, match="train.val_crops"):
        build_clip_dataset(cfg, "val", [], Path("."))


def test_class_balanced_order_pads_for_more_ranks_than_draws() -> None:
    ranks = [list(ClassBalancedOrder([5], seed=0, num_replicas=4, rank=r)) for r in range(4)]
    assert ranks == [[0], [0], [0], [0]]  # one draw, repeated so that every rank takes as many steps
