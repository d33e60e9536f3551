"""Real videos: 2 epochs of a 3-segment EfficientNet-Lite0 TSN on actrecog2, then tools/test.py.

The defaults but for 3 segments instead of 8, to keep the decoding cost down.

actrecog2 (``../shared/data/real/actrecog2``): 49 training, 15 validation and 5 test H.264
videos of two classes ("doing exercises", "typing"), 640x360 to 1920x1080, 5 to 43 seconds.
The cost is decoding (about 0.7 s of CPU per 3-frame clip on average, plus about 0.3 s to
probe each video once per loader worker), so the run uses 2 loader workers and a batch of 8,
and the model computes on one thread beside them: about 3 minutes on 2 busy cores.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tiny_training import restored_global_state, run_tool, tool_env
from tsn.config import load_config, save_config
from tsn.training.build import train

# The defaults (ImageNet EfficientNet-Lite0, maximum of the segment features, LP-FT: a probed head,
# then AdamW with frozen BatchNorm, cosine schedule) with 3 segments instead of 8, cut to 2 epochs
# (12 steps) without warm-up.
OVERRIDES = [
    "data.num_segments=3",
    "data.input_size=224",
    "data.short_side=256",
    "data.batch_size=8",
    "data.num_workers=2",
    "model.backbone=efficientnet_lite0",
    "model.pretrained=true",
    "train.epochs=2",
    "train.scheduler.warmup_epochs=0",
]


@pytest.mark.real
def test_two_epochs_reach_90_percent_on_val_and_test_tool_writes_the_report(real_data: Path,
                                                                            tmp_path: Path) -> None:
    root = real_data / "actrecog2"
    for name in ("train.txt", "val.txt", "test.txt", "classes.txt"):
        if not (root / name).is_file():
            pytest.skip(f"{root / name} not found")
    cfg = load_config(None, [f"data.root={root}", *OVERRIDES])
    work = tmp_path / "work"
    with restored_global_state():
        result = train(cfg, work, device="cpu", progress=False)

    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["val_samples"] == 15
    assert records[-1]["val_top1"] >= 0.9, records  # the model after 2 epochs, on val.txt
    assert result.best_top1 >= records[-1]["val_top1"]

    # tools/test.py on the best weights and the config's test list (test.txt, 5 videos), with
    # 2 clips x 3 crops per video.
    config = tmp_path / "config.yaml"
    save_config(cfg, config)
    out = tmp_path / "test"
    done = run_tool("test.py", ["--config", str(config), "--checkpoint", str(work / "best.pth"), "--out", str(out),
                                "--num-clips", "2", "--crops", "3", "--device", "cpu"], env=tool_env(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "5 videos of" in done.stderr and "6 view(s) each" in done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"top1", "top5", "mean_class_accuracy", "num_videos", "num_skipped",
                            "checkpoint_chosen_on_this_list", "conventions"}
    # best.pth was chosen on the val list, not on this test list
    assert metrics["num_videos"] == 5 and metrics["num_skipped"] == 0 and metrics["top5"] == 1.0
    assert metrics["checkpoint_chosen_on_this_list"] is False
    assert all(0.0 <= metrics[key] <= 1.0 for key in ("top1", "mean_class_accuracy"))
    with open(out / "per_class.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["class", "precision", "recall", "f1", "support"]
    assert [(row[0], int(row[4])) for row in rows[1:]] == [("doing exercises", 2), ("typing", 3)]
    with open(out / "confusion_matrix.csv", newline="") as handle:
        cm_rows = list(csv.reader(handle))
    assert cm_rows[0] == ["true/pred", "doing exercises", "typing"]
    assert sum(int(v) for row in cm_rows[1:] for v in row[1:]) == 5
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = np.load(out / "scores.npy")
    assert scores.shape == (5, 2) and not np.isnan(scores).any()
    labels = np.array([int(line.split()[-1]) for line in (root / "test.txt").read_text().splitlines() if line.strip()])
    assert np.mean(scores.argmax(axis=1) == labels) == pytest.approx(metrics["top1"])  # rows in list order
