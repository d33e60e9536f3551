import math

import numpy as np
import pytest
import torch
from torch import nn

from tsn.training.losses import cross_entropy, l1_penalty, mixup, mixup_cross_entropy

LOGITS = [[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 3.0, -1.0]]
LABELS = [0, 2, 1]


def neg_log_softmax(row: list[float], c: int) -> float:
    """-log p_c by hand: log(sum_j exp z_j) - z_c."""
    return math.log(sum(math.exp(z) for z in row)) - row[c]


def test_cross_entropy_without_smoothing_matches_hand_values() -> None:
    # row 0: log(e^2 + e + 1) - 2 = log(11.107338) - 2 = 0.407606
    # row 1: log(3) = 1.098612;  row 2: log(e + e^3 + e^-1) - 3 = 0.142932
    expected = (0.40760596 + 1.09861229 + 0.14293163) / 3
    loss = cross_entropy(torch.tensor(LOGITS), torch.tensor(LABELS))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    by_hand = sum(neg_log_softmax(row, y) for row, y in zip(LOGITS, LABELS)) / 3
    assert loss.item() == pytest.approx(by_hand, abs=1e-6)


def test_cross_entropy_with_label_smoothing_matches_hand_values() -> None:
    s, n = 0.1, 3
    # target (1 - s + s/n) on the label and s/n elsewhere: loss = (1 - s) * -log p_y + s/n * sum_c -log p_c
    per_sample = [
        (1 - s) * neg_log_softmax(row, y) + (s / n) * sum(neg_log_softmax(row, c) for c in range(n))
        for row, y in zip(LOGITS, LABELS)
    ]
    loss = cross_entropy(torch.tensor(LOGITS), torch.tensor(LABELS), label_smoothing=s)
    assert loss.item() == pytest.approx(sum(per_sample) / 3, abs=1e-6)
    # the uniform row loses log(3) whatever the target
    assert per_sample[1] == pytest.approx(math.log(3), abs=1e-12)


def test_mixup_mixes_whole_clips_with_one_lambda_and_a_permutation() -> None:
    clips = torch.arange(3 * 2 * 3 * 2 * 2, dtype=torch.float32).view(3, 2, 3, 2, 2)  # (B, T, C, H, W)
    labels = torch.tensor([0, 1, 2])
    out = mixup(clips, labels, alpha=0.4, rng=np.random.default_rng(7))
    # the documented draws: one Beta(alpha, alpha), then one permutation of the batch
    reference = np.random.default_rng(7)
    lam = reference.beta(0.4, 0.4)
    perm = reference.permutation(3)
    assert out.lam == lam
    assert sorted(perm.tolist()) == [0, 1, 2]
    assert out.labels_a.tolist() == [0, 1, 2]
    assert out.labels_b.tolist() == perm.tolist()
    for i in range(3):
        expected = lam * clips[i] + (1 - lam) * clips[perm[i]]
        torch.testing.assert_close(out.clips[i], expected.to(torch.float32), atol=1e-5, rtol=0)
    again = mixup(clips, labels, alpha=0.4, rng=np.random.default_rng(7))
    assert torch.equal(again.clips, out.clips)


def test_mixup_rejects_uint8_and_non_positive_alpha() -> None:
    with pytest.raises(TypeError, match="float"):
        mixup(torch.zeros(2, 3, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]), 0.2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="alpha"):
        mixup(torch.zeros(2, 3, 3, 2, 2), torch.tensor([0, 1]), 0.0, np.random.default_rng(0))


def test_mixup_loss_matches_hand_values() -> None:
    logits = [[1.0, 0.0], [0.0, 2.0]]
    lam = 0.7
    # labels_a = [0, 1], labels_b = [1, 0]
    # row 0: -log p_0 = log(1 + e^-1) = 0.313262, -log p_1 = log(e + 1) = 1.313262
    # row 1: -log p_1 = log(e^-2 + 1) = 0.126928, -log p_0 = log(1 + e^2) = 2.126928
    ce_a = (math.log(1 + math.exp(-1)) + math.log(math.exp(-2) + 1)) / 2
    ce_b = (math.log(math.e + 1) + math.log(1 + math.exp(2))) / 2
    assert ce_a == pytest.approx((0.31326169 + 0.12692801) / 2, abs=1e-7)
    loss = mixup_cross_entropy(torch.tensor(logits), torch.tensor([0, 1]), torch.tensor([1, 0]), lam)
    assert loss.item() == pytest.approx(lam * ce_a + (1 - lam) * ce_b, abs=1e-6)
    # == cross-entropy against the mixed soft target [lam, 1-lam] / [1-lam, lam]
    soft = (lam * math.log(1 + math.exp(-1)) + (1 - lam) * math.log(math.e + 1)) + (
        lam * math.log(math.exp(-2) + 1) + (1 - lam) * math.log(1 + math.exp(2))
    )
    assert loss.item() == pytest.approx(soft / 2, abs=1e-6)


def test_mixup_loss_with_smoothing_matches_hand_values() -> None:
    s, lam = 0.2, 0.25
    row = [0.5, -0.5, 1.5]

    def smoothed(y: int) -> float:
        return (1 - s) * neg_log_softmax(row, y) + (s / 3) * sum(neg_log_softmax(row, c) for c in range(3))

    loss = mixup_cross_entropy(torch.tensor([row]), torch.tensor([2]), torch.tensor([0]), lam, label_smoothing=s)
    assert loss.item() == pytest.approx(lam * smoothed(2) + (1 - lam) * smoothed(0), abs=1e-6)


def test_l1_penalty_covers_trainable_weights_only() -> None:
    linear = nn.Linear(2, 2)
    frozen = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, -0.25]]))
        linear.bias.copy_(torch.tensor([3.0, -4.0]))
        frozen.weight.fill_(100.0)
    frozen.weight.requires_grad_(False)
    model = nn.Sequential(linear, nn.BatchNorm1d(2), frozen)
    penalty = l1_penalty(model, 0.01)
    # |1| + |-2| + |0.5| + |-0.25| = 3.75; biases, BN and the frozen layer excluded
    assert penalty.item() == pytest.approx(0.0375, abs=1e-7)
    penalty.backward()
    torch.testing.assert_close(linear.weight.grad, torch.tensor([[0.01, -0.01], [0.01, -0.01]]))
    assert linear.bias.grad is None


def test_l1_penalty_over_given_tensors() -> None:
    tensors = [torch.tensor([3.0, -4.0]), torch.tensor([[0.5]])]
    assert l1_penalty(tensors, 2.0).item() == pytest.approx(2.0 * 7.5, abs=1e-6)
    assert l1_penalty([], 1.0).item() == 0.0
