"""The linear probe: its classifier against scikit-learn's, its l2 choice, the head it initialises, the tool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_training import make_tiny_data, restored_global_state, run_tool, tiny_overrides, tool_env
from tsn.config import ConfigError, load_config
from tsn.training import linear_probe as P
from tsn.training.build import probe_init_head
from tsn.models import build_model


@pytest.fixture(autouse=True)
def _global_state():
    with restored_global_state():
        yield


def blobs(n_per_class: int, num_classes: int, dim: int, seed: int, spread: float = 1.5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (num_classes, dim))
    labels = np.repeat(np.arange(num_classes), n_per_class)
    features = centres[labels] + spread * rng.normal(0, 1, (labels.size, dim))
    return features, labels


@pytest.mark.parametrize("l2", [1e-2, 1e-1, 1.0])
def test_logistic_regression_equals_scikit_learn(l2: float) -> None:
    from sklearn import linear_model as sklearn  # the reference solution (in the test extra)
    features, labels = blobs(15, 3, 5, seed=1)
    ours = P.fit_logistic_regression(features, labels, 3, l2, max_iter=1000, tolerance=1e-12)
    # scikit-learn minimises C * sum_i CE_i + ||W||^2 / 2, i.e. ours with l2 = 1 / (C * N)
    reference = sklearn.LogisticRegression(C=1.0 / (l2 * labels.size), tol=1e-12, max_iter=10000)
    reference.fit(features, labels)
    np.testing.assert_allclose(ours.weight, reference.coef_, atol=2e-5, rtol=1e-4)
    # the bias is unpenalised and the softmax ignores a common shift: compare it centred
    np.testing.assert_allclose(ours.bias - ours.bias.mean(), reference.intercept_ - reference.intercept_.mean(),
                               atol=2e-5)
    probs = ours.video_scores(features[:, None, :])  # one view per sample
    np.testing.assert_allclose(probs, reference.predict_proba(features), atol=1e-6)


def test_logistic_regression_hand_checked_two_points() -> None:
    # x = +1 (class 1) and x = -1 (class 0), one feature: by symmetry b = 0 and w1 = -w0 = w with
    # d/dw [log(1 + exp(-2w)) + l2 * w^2] = 0  <=>  -2 / (1 + exp(2w)) + 2 * l2 * w = 0
    fit = P.fit_logistic_regression(np.array([[1.0], [-1.0]]), np.array([1, 0]), 2, l2=0.5,
                                    max_iter=1000, tolerance=1e-12)
    w = fit.weight[1, 0]
    assert fit.weight[0, 0] == pytest.approx(-w, abs=1e-8)
    assert fit.bias[1] - fit.bias[0] == pytest.approx(0.0, abs=1e-8)
    assert -2.0 / (1.0 + np.exp(2 * w)) + 2 * 0.5 * w == pytest.approx(0.0, abs=1e-8)


def test_standardized_fit_takes_raw_features() -> None:
    features, labels = blobs(10, 3, 4, seed=2)
    raw = features * np.array([100.0, 0.01, 1.0, 5.0]) + 7.0
    fit = P.fit_standardized(raw, labels, 3, 0.1)
    z = (raw - raw.mean(0)) / raw.std()  # centred per dimension, one overall scale
    direct = P.fit_logistic_regression(z, labels, 3, 0.1)
    np.testing.assert_allclose(fit.logits(raw), direct.logits(z), atol=1e-6)


def test_video_scores_average_view_probabilities() -> None:
    clf = P.LinearClassifier(weight=np.array([[1.0, 0.0], [0.0, 1.0]]), bias=np.zeros(2))
    views = np.array([[[2.0, 0.0], [0.0, 2.0]]])  # one video, two views, opposite votes
    np.testing.assert_allclose(clf.video_scores(views), [[0.5, 0.5]])


def test_stratified_folds_balanced_and_seeded() -> None:
    labels = np.repeat(np.arange(3), [7, 5, 9])
    folds = P.stratified_folds(labels, 4, seed=3)
    for label in range(3):
        counts = np.bincount(folds[labels == label], minlength=4)
        assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(folds, P.stratified_folds(labels, 4, seed=3))
    assert not np.array_equal(folds, P.stratified_folds(labels, 4, seed=4))


def test_fit_probe_picks_the_lowest_cross_validated_log_loss() -> None:
    features, labels = blobs(12, 3, 6, seed=5, spread=2.0)
    train = P.ViewFeatures(features[:, None, :].astype(np.float32), labels, (), np.ones(labels.size, dtype=bool))
    fit = P.fit_probe(train, 3, seed=0)
    assert set(fit.cv_nll) == set(P.L2_GRID) and fit.l2 == min(fit.cv_nll, key=fit.cv_nll.get)
    assert all(0.0 <= v <= 1.0 for v in fit.cv_top1.values())
    # a given l2 is used as it is, without cross-validation
    fixed = P.fit_probe(train, 3, l2=0.5)
    assert fixed.l2 == 0.5 and fixed.cv_nll == {}
    # unread videos (NaN rows) take no part
    holes = train.features.copy()
    holes[0] = np.nan
    read = np.ones(labels.size, dtype=bool)
    read[0] = False
    partial = P.fit_probe(P.ViewFeatures(holes, labels, (), read), 3, l2=0.5)
    reference = P.fit_standardized(features[1:], labels[1:], 3, 0.5)
    np.testing.assert_allclose(partial.classifier.weight, reference.weight, atol=1e-5)


@pytest.mark.parametrize("consensus", ["avg", "feature_max"])
def test_init_head_makes_the_tsn_compute_the_probe(consensus: str) -> None:
    torch.manual_seed(0)
    model = build_model(backbone="resnet18", pretrained=False, num_classes=3, num_segments=2, dropout=0.5,
                        consensus=consensus).eval()
    clips = torch.randn(4, 2, 3, 32, 32)  # (B, T, C, H, W)
    with torch.no_grad():
        segments = model.segment_descriptors(clips)  # (B, K, F)
        pooled = segments.mean(dim=1) if consensus == "avg" else segments.amax(dim=1)  # (B, F)
        np.testing.assert_allclose(model.video_descriptor(clips).numpy(), pooled.numpy(), atol=1e-6)
        descriptors = pooled.numpy()  # as the probe sees them
    classifier = P.LinearClassifier(np.random.default_rng(0).normal(0, 1, (3, descriptors.shape[1])),
                                    np.array([0.1, -0.2, 0.3]))
    P.init_head(model, classifier)
    with torch.no_grad():
        logits = model(clips).double().numpy()
    np.testing.assert_allclose(logits, classifier.logits(descriptors), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="does not fit"):
        P.init_head(model, P.LinearClassifier(np.zeros((4, descriptors.shape[1])), np.zeros(4)))


def test_linear_probe_tool_writes_the_report_and_reuses_its_cache(tmp_path: Path) -> None:
    data = make_tiny_data(tmp_path / "data")
    overrides = [*tiny_overrides(data), "test.num_clips=2", "test.crops=1"]
    out = tmp_path / "probe"
    args = ["--out", str(out), "--config", str(data.root / "none.yaml"), "--no-progress"]
    (data.root / "none.yaml").write_text("{}\n")
    for item in overrides:
        args += ["--opt", item]
    first = run_tool("linear_probe.py", args, env=tool_env())
    assert first.returncode == 0, first.stderr
    for name in ("metrics.json", "per_class.csv", "confusion_matrix.csv", "scores.npy", "probe.json",
                 "classifier.npz"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_videos"] == 4
    cached = sorted((out / "cache").glob("*.npz"))
    assert len(cached) == 2  # train and test features
    stamps = [path.stat().st_mtime_ns for path in cached]
    second = run_tool("linear_probe.py", [*args, "--l2", "0.1"], env=tool_env())
    assert second.returncode == 0, second.stderr
    assert [path.stat().st_mtime_ns for path in cached] == stamps  # read, not recomputed
    assert json.loads((out / "probe.json").read_text())["l2"] == 0.1
    # the scores are the saved classifier's on the cached test features
    cfg = load_config(None, overrides)
    assert cfg.data.test_list == "val.txt"
    scores = np.load(out / "scores.npy")
    assert scores.shape == (4, 2) and np.allclose(scores.sum(axis=1), 1.0)


def test_lp_ft_refuses_the_maximum_of_scores_whose_classifier_no_probe_computes() -> None:
    cfg = load_config(None, ["model.consensus=max"])
    model = build_model(backbone="resnet18", pretrained=False, num_classes=3, num_segments=2, consensus="max")
    with pytest.raises(ConfigError, match="train.head_init: linear_probe needs model.consensus: avg or feature_max"):
        probe_init_head(cfg, model, 3, torch.device("cpu"), None)
