"""tools/extract_features.py and tsn.apps.features: pooled video features and batched kNN.

kNN is checked against a brute-force numpy search (blocks smaller than N, so the batching
runs) and on hand-made ties; the tool end to end on generated videos each present twice under
two names, where every video's nearest neighbour must be its own copy at distance 0.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tsn.config import load_config
from tsn.data.synthetic import make_demo_dataset
from tsn.checkpoint import CheckpointError
from tsn.apps.build import run_extract
from tsn.apps.features import knn_search, nearest_neighbours, precision_at_k, video_features
from tsn.layout import normalize_clips
from tsn.models import build_model

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "extract_features.py"


def brute_force_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairwise distances in float64, self excluded, sorted: (N, k) indices and distances."""
    d = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


def test_nearest_neighbours_matches_brute_force_with_small_blocks() -> None:
    x = np.random.default_rng(0).normal(size=(37, 6)).astype(np.float32)
    d = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(axis=2))
    upper = d[np.triu_indices(37, 1)]
    assert np.diff(np.sort(upper)).min() > 1e-6  # no ties, so the order is unique
    expected_idx, expected_dist = brute_force_knn(x, 5)
    # 37 rows in query blocks of 8 and key blocks of 3 (smaller than k): every path of the merge runs
    idx, dist = nearest_neighbours(torch.from_numpy(x), 5, query_batch=8, key_batch=3)
    assert idx.dtype == torch.int64 and idx.shape == (37, 5)
    np.testing.assert_array_equal(idx.numpy(), expected_idx)
    np.testing.assert_allclose(dist.numpy(), expected_dist, rtol=1e-12, atol=0)
    # one block holding everything gives the same answer
    idx1, dist1 = nearest_neighbours(torch.from_numpy(x), 5)
    np.testing.assert_array_equal(idx1.numpy(), expected_idx)
    np.testing.assert_array_equal(dist1.numpy(), dist.numpy())


def test_nearest_neighbours_duplicates_are_zero_and_ties_go_to_the_lower_row() -> None:
    # rows 0, 1 and 3 identical; row 2 at distance 5 (3-4-5) from them; large offset so that the
    # matrix-product form alone would not give an exact 0
    base = np.array([1000.0, 2000.0], dtype=np.float32)
    x = np.stack([base, base, base + np.float32([3.0, 4.0]), base])
    idx, dist = nearest_neighbours(torch.from_numpy(x), 3, query_batch=2, key_batch=2)
    assert idx.tolist() == [[1, 3, 2], [0, 3, 2], [0, 1, 3], [0, 1, 2]]
    assert dist.tolist() == [[0.0, 0.0, 5.0], [0.0, 0.0, 5.0], [5.0, 5.0, 5.0], [0.0, 0.0, 5.0]]


def test_nearest_neighbours_rejects_bad_input() -> None:
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"k=4 nearest neighbours need 1 <= k <= N-1 = 3"):
        nearest_neighbours(x, 4)
    with pytest.raises(ValueError, match="NaN"):
        nearest_neighbours(torch.tensor([[0.0], [float("nan")]]), 1)


def test_precision_at_k_hand_computed() -> None:
    labels = np.array([0, 0, 1])
    neighbour_labels = np.array([[0, 1], [1, 1], [1, 0]])
    assert precision_at_k(labels, neighbour_labels) == pytest.approx((0.5 + 0.0 + 0.5) / 3, abs=1e-15)


def test_knn_search_leaves_out_unread_rows() -> None:
    features = np.array([[0.0], [np.nan], [1.0], [3.0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 0])
    result = knn_search(features, labels, 1, torch.device("cpu"))
    assert result.rows.tolist() == [0, 2, 3]
    assert result.neighbours.tolist() == [[2], [0], [2]]
    assert result.distances.tolist() == [[1.0], [1.0], [2.0]]
    assert result.precision_at_k == pytest.approx(0.0)
    with pytest.raises(ValueError, match="--knn 3 needs at least 4 readable videos, got 3"):
        knn_search(features, labels, 3, torch.device("cpu"))


@pytest.fixture(scope="module")
def duplicated_list(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[tuple[str, int]]]:
    """9 demo videos (3 classes) and a byte-identical copy of each under another name: config, list, entries.

    List order: the originals, then the copies in reverse order, so a copy is never next to its original.
    """
    root = tmp_path_factory.mktemp("features")
    demo = make_demo_dataset(root, num_classes=3, videos_per_class_train=2, videos_per_class_val=1,
                             num_frames=12, size=64)
    originals = []
    for list_file in (demo.train_list, demo.val_list):
        for line in list_file.read_text().splitlines():
            path, label = line.rsplit(" ", 1)
            originals.append((path, int(label)))
    copies = []
    for path, label in originals:
        copy = f"copies/{Path(path).parent.name}-{Path(path).stem}-dup.mp4"
        (root / copy).parent.mkdir(exist_ok=True)
        shutil.copyfile(root / path, root / copy)
        copies.append((copy, label))
    entries = originals + copies[::-1]
    list_file = root / "all.txt"
    list_file.write_text("".join(f"{path} {label}\n" for path, label in entries))
    config = root / "config.yaml"
    # batch 6 divides the 18 videos: every batch has the same size, so the same kernels run for a video and its
    # copy (a smaller last batch may pick other CPU kernels whose rounding differs)
    config.write_text(
        f"data:\n  root: {root}\n  classes: classes.txt\n  num_segments: 3\n  input_size: 64\n  short_side: 64\n"
        "  batch_size: 6\n  num_workers: 0\n  on_error: raise\n"
        "model:\n  backbone: resnet18\n  pretrained: false\n  partial_bn: false\n")
    return config, list_file, entries


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_tool_finds_each_videos_duplicate(duplicated_list, tmp_path: Path) -> None:
    config, list_file, entries = duplicated_list
    out = tmp_path / "out"
    # random weights suffice: identical files decode to identical clips and so identical features
    done = subprocess.run([sys.executable, str(TOOL), "--config", str(config), "--list", str(list_file),
                           "--out", str(out), "--knn", "5", "--knn-batch", "4", "--device", "cpu",
                           "--opt", "train.seed=3"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    n = len(entries)
    twin = {i: n - 1 - i for i in range(n)}  # originals, then the copies reversed
    assert all(entries[i][0] != entries[twin[i]][0] and twin[twin[i]] == i for i in range(n))

    features = np.load(out / "features.npy")
    assert features.dtype == np.float32 and features.shape == (18, 512)
    assert np.isfinite(features).all()
    for i in range(n):
        np.testing.assert_array_equal(features[i], features[twin[i]])
    assert read_csv(out / "index.csv") == [{"row": str(i), "path": p, "label": str(lab)}
                                           for i, (p, lab) in enumerate(entries)]

    rows = read_csv(out / "neighbours.csv")
    assert len(rows) == n * 5
    assert list(rows[0]) == ["row", "path", "label", "rank", "neighbour_row", "neighbour_path",
                             "neighbour_label", "distance"]
    same = 0
    for i in range(n):
        mine = rows[5 * i:5 * i + 5]
        assert [int(r["row"]) for r in mine] == [i] * 5 and [int(r["rank"]) for r in mine] == [1, 2, 3, 4, 5]
        assert all(r["path"] == entries[i][0] and int(r["label"]) == entries[i][1] for r in mine)
        assert int(mine[0]["neighbour_row"]) == twin[i] and mine[0]["neighbour_path"] == entries[twin[i]][0]
        assert float(mine[0]["distance"]) == 0.0
        distances = [float(r["distance"]) for r in mine]
        assert all(d > 0 for d in distances[1:]) and distances == sorted(distances)
        for r in mine:
            j = int(r["neighbour_row"])
            assert j != i and r["neighbour_path"] == entries[j][0] and int(r["neighbour_label"]) == entries[j][1]
            assert float(r["distance"]) == pytest.approx(float(np.linalg.norm(features[i] - features[j])), rel=1e-5)
            same += entries[j][1] == entries[i][1]
    summary = json.loads((out / "knn.json").read_text())
    assert summary == {"k": 5, "precision_at_k": pytest.approx(same / (5 * n)), "num_queries": 18,
                       "metric": "euclidean"}
    assert f"precision@5: {same / (5 * n):.4f}" in done.stdout


def test_checkpoint_and_layer(duplicated_list, tmp_path: Path) -> None:
    config, full_list, _ = duplicated_list
    list_file = tmp_path / "part.txt"  # the first 6 videos keep this test short
    list_file.write_text("".join(full_list.read_text().splitlines(keepends=True)[:6]))
    cfg = load_config(config, ["model.head=bilinear"])
    torch.manual_seed(1)
    trained = build_model(backbone="resnet18", pretrained=False, head="bilinear", num_classes=3, num_segments=3)
    checkpoint = tmp_path / "ckpt.pth"
    # saved as DataParallel would: every key prefixed with "module."
    torch.save({"model": {f"module.{k}": v for k, v in trained.state_dict().items()}, "epoch": 2}, checkpoint)
    result = run_extract(cfg, list_file, tmp_path / "l3", checkpoint=checkpoint, layer="layer3",
                         batch_size=4, device="cpu", progress=False)
    features = np.load(tmp_path / "l3" / "features.npy")
    assert features.shape == (6, 256) and result.knn is None
    np.testing.assert_array_equal(features, result.features.features)

    # the same numbers by hand: layer3 of the checkpoint's backbone, spatial mean, segment mean
    from tsn.build import build_dataset

    dataset = build_dataset(cfg, "val", 3, list_file=list_file)
    trained.eval()
    body = trained.backbone
    with torch.no_grad():
        for i in (0, 5):
            frames = normalize_clips(dataset[i].clip, trained.spec.mean, trained.spec.std)  # (T, C, H, W)
            x = frames
            for name, module in body.named_children():
                x = module(x)
                if name == "layer3":
                    break
            expected = x.mean(dim=(2, 3)).mean(dim=0)  # (T, 256, h, w) -> (256,)
            np.testing.assert_allclose(features[i], expected.numpy(), rtol=1e-4, atol=1e-5)
            # and the last feature layer is the default feature
            last = video_features(trained, frames[None], "layer4")
            np.testing.assert_array_equal(last.numpy(), video_features(trained, frames[None]).numpy())


def test_bad_inputs_give_one_line_errors(duplicated_list, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config, list_file, _ = duplicated_list
    cfg = load_config(config)
    with pytest.raises(ValueError, match=r"layer 'layer9': no such module in backbone 'resnet18' "
                                         r"\(feature layers: layer1, layer2, layer3, layer4\)"):
        run_extract(cfg, list_file, tmp_path / "x", layer="layer9", device="cpu", progress=False)
    other = build_model(backbone="resnet34", pretrained=False, num_classes=3, num_segments=3)
    checkpoint = tmp_path / "r34.pth"
    torch.save(other.state_dict(), checkpoint)  # a raw state dict of another architecture
    with pytest.raises(CheckpointError, match=rf"{checkpoint}: does not fit backbone 'resnet18' with 3 classes: \d+ "
                                              rf"tensors missing, extra or of another shape \(first: backbone\."):
        run_extract(cfg, list_file, tmp_path / "x", checkpoint=checkpoint, device="cpu", progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match=rf"--knn 18 needs 1 <= K < 18, the number of videos in {list_file}"):
        run_extract(cfg, list_file, tmp_path / "x", knn=18, device="cpu", progress=False)
    # the tool itself, in this process: exit status 2 and one line naming the list
    spec = importlib.util.spec_from_file_location("extract_features_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    status = tool.main(["--config", str(config), "--list", str(tmp_path / "none.txt"), "--out", str(tmp_path / "y"),
                        "--device", "cpu"])
    assert status == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'none.txt'}: list not found\n"
