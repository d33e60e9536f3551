import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tsn.evaluation.metrics import (
    MetricAccumulator,
    confusion_matrix,
    confusion_matrix_image,
    mean_class_accuracy,
    per_class_metrics,
    plot_confusion_matrix,
    topk_accuracy,
    topk_correct,
    write_confusion_csv,
    write_per_class_csv,
)

# 4 classes: class 2 is never predicted, class 3 never occurs in the labels.
LABELS = [0, 0, 0, 1, 1, 2, 2, 0]
PREDS = [0, 1, 0, 1, 3, 0, 1, 0]
SECOND = [1, 0, 1, 3, 1, 1, 2, 2]  # runner-up class of each sample (top-2: all but sample 5 hit)
# rows = true class, columns = predicted class
EXPECTED_CM = [
    [3, 1, 0, 0],  # samples 0, 1, 2, 7
    [0, 1, 0, 1],  # samples 3, 4
    [1, 1, 0, 0],  # samples 5, 6
    [0, 0, 0, 0],  # absent
]
NAMES = ["run", "jump, high", "swim", "idle"]


def scores() -> torch.Tensor:
    """(8, 4) scores: 3 for PREDS, 2 for SECOND, 1 and 0 for the others (no ties)."""
    out = torch.zeros(8, 4)
    for i, (p, s) in enumerate(zip(PREDS, SECOND)):
        rest = [c for c in range(4) if c not in (p, s)]
        out[i, p], out[i, s], out[i, rest[0]], out[i, rest[1]] = 3.0, 2.0, 1.0, 0.0
    return out


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(torch.tensor(PREDS), torch.tensor(LABELS), 4)
    assert cm.dtype == torch.int64
    assert cm.tolist() == EXPECTED_CM


def test_confusion_matrix_rejects_out_of_range_ids_on_cpu() -> None:
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 4\), got values in \[-1, 3\]"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([-1, 0]), 4)
    with pytest.raises(ValueError, match=r"got values in \[0, 4\]"):
        confusion_matrix(torch.tensor([4]), torch.tensor([0]), 4)


def test_topk() -> None:
    s, y = scores(), torch.tensor(LABELS)
    assert topk_correct(s, y, (1, 2, 5)).tolist() == [4, 7, 8]  # k=5 > 4 classes: capped, all hit
    assert topk_accuracy(s, y, 1) == 0.5
    assert topk_accuracy(s, y, 2) == 7 / 8
    assert topk_accuracy(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 1) == 0.0


def test_per_class_precision_recall_f1_support_by_hand() -> None:
    m = per_class_metrics(torch.tensor(EXPECTED_CM))
    # predicted per class (column sums): 4, 3, 0, 1; support (row sums): 4, 2, 2, 0
    assert m.precision.tolist() == [3 / 4, 1 / 3, 0.0, 0 / 1]  # class 2 never predicted: 0, not NaN
    assert m.recall.tolist() == [3 / 4, 1 / 2, 0 / 2, 0.0]  # class 3 absent: 0, not NaN
    # f1 = 2pr / (p + r): 0.75; 2 * (1/3)(1/2) / (5/6) = 0.4; 0; 0
    assert m.f1 == pytest.approx([0.75, 0.4, 0.0, 0.0], abs=1e-12)
    assert m.support.tolist() == [4, 2, 2, 0]
    assert not np.isnan(m.precision).any() and not np.isnan(m.f1).any()


def test_mean_class_accuracy_over_present_classes() -> None:
    # recalls of the classes in the labels (0, 1, 2): 0.75, 0.5, 0; class 3 not counted
    assert mean_class_accuracy(torch.tensor(EXPECTED_CM)) == pytest.approx((0.75 + 0.5 + 0.0) / 3, abs=1e-12)
    assert mean_class_accuracy(np.zeros((3, 3), dtype=np.int64)) == 0.0


def test_per_class_csv(tmp_path: Path) -> None:
    path = tmp_path / "per_class.csv"
    write_per_class_csv(path, NAMES, per_class_metrics(np.array(EXPECTED_CM)))
    assert path.read_text().splitlines() == [
        "class,precision,recall,f1,support",
        "run,0.750000,0.750000,0.750000,4",
        '"jump, high",0.333333,0.500000,0.400000,2',
        "swim,0.000000,0.000000,0.000000,2",
        "idle,0.000000,0.000000,0.000000,0",
    ]
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        write_per_class_csv(path, NAMES[:3], per_class_metrics(np.array(EXPECTED_CM)))


def test_confusion_csv(tmp_path: Path) -> None:
    path = tmp_path / "cm.csv"
    write_confusion_csv(path, torch.tensor(EXPECTED_CM), NAMES)
    assert path.read_text().splitlines() == [
        'true/pred,run,"jump, high",swim,idle',
        "run,3,1,0,0",
        '"jump, high",0,1,0,1',
        "swim,1,1,0,0",
        "idle,0,0,0,0",
    ]


def test_confusion_png_and_rgb_image(tmp_path: Path) -> None:
    path = tmp_path / "cm.png"
    plot_confusion_matrix(torch.tensor(EXPECTED_CM), NAMES, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = confusion_matrix_image(np.array(EXPECTED_CM), NAMES)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] >= 300 and image.shape[1] >= 300


def test_accumulator_sums_batches_and_computes_once() -> None:
    acc = MetricAccumulator(4, "cpu")
    s, y = scores(), torch.tensor(LABELS)
    acc.update(s[:5], y[:5], torch.tensor(1.0))
    acc.update(s[5:], y[5:], torch.tensor(2.0))
    result = acc.compute()
    assert result.count == 8
    assert result.loss == pytest.approx((1.0 * 5 + 2.0 * 3) / 8, abs=1e-12)
    assert result.top1 == 0.5
    assert result.top5 == 1.0
    assert result.confusion.tolist() == EXPECTED_CM
    assert acc.compute() is result
    with pytest.raises(RuntimeError, match="after compute"):
        acc.update(s, y)


def test_accumulator_without_samples() -> None:
    result = MetricAccumulator(3, "cpu").compute()
    assert (result.count, result.loss, result.top1, result.top5) == (0, 0.0, 0.0, 0.0)
    assert result.confusion.tolist() == [[0] * 3] * 3


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        acc = MetricAccumulator(4, "cpu")
        half = slice(0, 5) if rank == 0 else slice(5, 8)
        acc.update(scores()[half], torch.tensor(LABELS)[half], torch.tensor(1.0 + rank))
        result = acc.compute()
        torch.save(
            {"count": result.count, "loss": result.loss, "top1": result.top1, "cm": result.confusion},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_accumulator_reduces_across_two_gloo_ranks(tmp_path: Path) -> None:
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["count"] == 8
        assert result["loss"] == pytest.approx((1.0 * 5 + 2.0 * 3) / 8, abs=1e-12)
        assert result["top1"] == 0.5
        assert result["cm"].tolist() == EXPECTED_CM


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_accumulator_on_cuda_matches_cpu() -> None:
    acc = MetricAccumulator(4, "cuda")
    acc.update(scores().cuda(), torch.tensor(LABELS).cuda(), torch.tensor(1.5, device="cuda"))
    result = acc.compute()
    assert result.confusion.device.type == "cpu"
    assert result.confusion.tolist() == EXPECTED_CM
    assert (result.top1, result.loss) == (0.5, 1.5)


def test_exact_ties_count_the_same_in_top1_and_the_confusion_matrix() -> None:
    # all five scores equal: argmax (and so the confusion matrix) says class 0; top-1 must agree,
    # whatever order torch.topk gives equal values in (on the CPU it returned class 2 here)
    scores = torch.zeros(3, 5)
    labels = torch.tensor([2, 2, 0])
    assert topk_correct(scores, labels, (1,)).tolist() == [1]  # only the sample of class 0
    cm = confusion_matrix(scores.argmax(dim=1), labels, 5)
    assert int(cm.diag().sum()) == 1
    # ties inside the top k go to the lower class index too: [0.4, 0.4, 0.4, 0.1, 0.1], k=2 -> {0, 1}
    tied = torch.tensor([[0.4, 0.4, 0.4, 0.1, 0.1]] * 3)
    assert topk_correct(tied, torch.tensor([0, 1, 2]), (2,)).tolist() == [2]
    meter = MetricAccumulator(5, "cpu")
    meter.update(scores, labels)
    result = meter.compute()
    assert result.top1 == pytest.approx(int(result.confusion.diag().sum()) / 3)
