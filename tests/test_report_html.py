"""report.html of tools/test.py: it parses, its images decode, its numbers are metrics.json's and
per_class.csv's, its strips are the frames the model was given, skipped videos are listed, nothing is
fetched from the network; and a screenshot in headless Chromium where it is installed."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_training import restored_global_state
from tsn.build import build_dataset, build_tsn
from tsn.config import Config, load_config
from tsn.apps.predict import Predictor, predict_videos
from tsn.data.sampling import test_indices
from tsn.evaluation.build import run_test
from tsn.evaluation.html_report import STRIPS_PER_KIND, confident_mistakes, confusion_html
from videos import frame_index, make_index_video, make_index_video_set

CLASSES = ["walk", "run", "swim"]
LABELS = [0, 0, 1, 1, 2, 2]
NUM_FRAMES = [20, 27, 33, 20, 41, 24]
CLIPS, CROPS, SEGMENTS, SIZE = 2, 3, 3, 48
BROKEN = "videos/broken.mp4"
CHROMIUM = Path("/usr/bin/chromium")


class Page(HTMLParser):
    """The parts of a page the tests read: every element's tag and attributes, the text of each table's
    cells by table id and row, and the text of elements that carry ``data-metric``."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.tables: dict[str, list[list[tuple[dict[str, str | None], str]]]] = {}
        self.metrics: dict[str, tuple[str, str]] = {}
        self._table: list[str] = []
        self._cell: tuple[dict[str, str | None], list[str]] | None = None
        self._metric: tuple[str, str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        if tag == "table":
            self._table.append(attributes.get("id") or "")
            self.tables.setdefault(self._table[-1], [])
        elif tag == "tr" and self._table:
            self.tables[self._table[-1]].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = (attributes, [])
        if "data-metric" in attributes:
            self._metric = (attributes["data-metric"] or "", attributes.get("data-value") or "", [])

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._table:
            self._table.pop()
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table[-1]][-1].append((self._cell[0], "".join(self._cell[1]).strip()))
            self._cell = None
        elif self._metric is not None and tag in ("div", "span"):
            name, value, text = self._metric
            self.metrics[name] = (value, "".join(text))
            self._metric = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[1].append(data)
        if self._metric is not None:
            self._metric[2].append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def decode_image(uri: str) -> Image.Image:
    head, data = uri.split(",", 1)
    assert head in ("data:image/jpeg;base64", "data:image/png;base64"), head
    image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    image.load()
    return image


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path, Path]:
    """6 index videos (3 classes) and one that cannot be read, tested with 2 clips x 3 crops by a random
    ResNet-18 checkpoint (epoch 3) whose run folder has a metrics.jsonl; -> config, checkpoint, report folder."""
    root = tmp_path_factory.mktemp("report")
    lines = make_index_video_set(root, LABELS, NUM_FRAMES, CLASSES, width=SIZE, height=SIZE)  # square: crop = frame
    (root / BROKEN).write_bytes(b"not a video at all")
    lines.insert(3, f"{BROKEN} 1\n")  # after v2
    (root / "test.txt").write_text("".join(lines))
    cfg = load_config(None, [f"data.root={root}", "data.test_list=test.txt", f"data.num_segments={SEGMENTS}",
                             f"data.input_size={SIZE}", f"data.short_side={SIZE}", "data.batch_size=4",
                             "data.num_workers=0", "model.backbone=resnet18", "model.pretrained=false"])
    work = root / "work"
    work.mkdir()
    (work / "metrics.jsonl").write_text("".join(json.dumps(
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_top1": 0.2 * e, "val_top1": 0.15 * e,
         "train_mean_class_accuracy": 0.2 * e, "val_mean_class_accuracy": 0.1 * e, "lr": 0.01 / e}) + "\n"
        for e in (1, 2, 3)))
    out = root / "out"
    with restored_global_state():
        torch.manual_seed(0)
        model = build_tsn(cfg, len(CLASSES))
        checkpoint = work / "latest.pth"
        torch.save({"model": model.state_dict(), "epoch": 3}, checkpoint)
        run_test(cfg, checkpoint, out, num_clips=CLIPS, crops=CROPS, device="cpu", progress=False)
    return cfg, checkpoint, out


def test_the_page_parses_is_self_contained_and_every_image_decodes(run: tuple[Config, Path, Path]) -> None:
    _, _, out = run
    text = (out / "report.html").read_text(encoding="utf-8")
    page = parse(out / "report.html")
    images = [attrs["src"] or "" for tag, attrs in page.elements if tag == "img"]
    # 6 scored videos: each is wrong or right, so each has one strip of 3 segments; and the training curves
    assert len(images) == 6 * SEGMENTS + 1
    for uri in images:
        decode_image(uri)
    for tag, attrs in page.elements:
        for name in ("src", "href", "srcset", "data"):
            value = attrs.get(name)
            assert value is None or value.startswith("data:"), (tag, name, value)
        assert tag not in ("link", "iframe", "object", "embed"), tag
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert [tag for tag, _ in page.elements].count("script") == 1


def test_the_numbers_are_those_of_metrics_json_and_per_class_csv(run: tuple[Config, Path, Path]) -> None:
    _, checkpoint, out = run
    page = parse(out / "report.html")
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("top1", "top5", "mean_class_accuracy"):
        value, text = page.metrics[key]
        assert float(value) == metrics[key]
        assert text == f"{100 * metrics[key]:.2f}%"
    assert page.metrics["num_videos"] == (str(metrics["num_videos"]), str(metrics["num_videos"])) == ("6", "6")
    assert page.metrics["num_skipped"] == ("1", "1")
    with open(out / "per_class.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    table = page.tables["per-class"]
    assert [text for _, text in table[0]] == rows[0]
    assert [[text for _, text in row] for row in table[1:]] == rows[1:]
    with open(out / "confusion_matrix.csv", newline="") as handle:
        counts = [[int(v) for v in row[1:]] for row in list(csv.reader(handle))[1:]]
    matrix = page.tables["confusion-matrix"]
    assert [[int(attrs["data-count"] or -1) for attrs, _ in row[1:]] for row in matrix[1:]] == counts
    text = (out / "report.html").read_text(encoding="utf-8")
    identity = {row[0][1]: row[1][1] for row in page.tables["checkpoint"]}
    assert identity["epoch"] == "3" and identity["path"] == str(checkpoint.resolve())
    assert identity["bytes"] == str(checkpoint.stat().st_size) and len(identity["sha256 (first+last MiB, size)"]) == 64
    assert "test_list: test.txt" in text  # the run's config, as YAML


def test_the_strips_show_the_frames_the_model_was_given(run: tuple[Config, Path, Path]) -> None:
    cfg, _, out = run
    page = parse(out / "report.html")
    dataset = build_dataset(cfg, "test", len(CLASSES), num_clips=CLIPS, crops=CROPS)
    shown = [attrs for tag, attrs in page.elements if tag == "img" and attrs.get("data-frame") is not None]
    codes = [tag_attrs for tag, tag_attrs in page.elements if tag == "code"]
    assert len(codes) == 6
    text = (out / "report.html").read_text(encoding="utf-8")
    strips = text.split("<div class='strip'>")[1:]
    assert len(strips) == 6 and len(shown) == 6 * SEGMENTS
    rng = np.random.default_rng(0)
    seen = set()
    for strip in strips:
        path = strip.split("<code>", 1)[1].split("</code>", 1)[0]
        index = [dataset.path(i) for i in range(len(dataset))].index(path)
        seen.add(index)
        expected = dataset.frame_indices(index, rng)[0].tolist()  # the first temporal clip: one frame per segment
        assert len(expected) == SEGMENTS
        strip_page = Page()
        strip_page.feed(strip)
        images = [attrs for tag, attrs in strip_page.elements if tag == "img" and "data-frame" in attrs]
        assert [int(attrs["data-frame"] or -1) for attrs in images] == expected
        decoded = [frame_index(np.asarray(decode_image(attrs["src"] or "").convert("RGB"))) for attrs in images]
        assert decoded == expected, path
    assert {dataset.path(i) for i in seen} == {str(Path(cfg.data.root) / f"videos/v{i}.mp4") for i in range(6)}


def test_a_skipped_video_is_listed_with_its_reason(run: tuple[Config, Path, Path]) -> None:
    cfg, _, out = run
    page = parse(out / "report.html")
    with open(out / "skipped.csv", newline="") as handle:
        skipped = list(csv.DictReader(handle))
    assert len(skipped) == 1 and skipped[0]["path"] == str(Path(cfg.data.root) / BROKEN)
    rows = page.tables["skipped"]
    assert [[text for _, text in row] for row in rows[1:]] == [[row["index"], row["path"], row["reason"]]
                                                               for row in skipped]


def test_the_strips_are_the_most_confidently_wrong_and_least_sure_right() -> None:
    scores = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.45, 0.55], [0.7, 0.3], [0.3, 0.7]])
    labels = np.array([1, 1, 1, 1, 0, 0])
    wrong, unsure = confident_mistakes(scores, labels)
    assert wrong == [0, 1, 5]  # top scores 0.9, 0.7, 0.7: the highest first, a tie in list order
    assert unsure == [3, 4, 2]  # 0.55, 0.7, 0.8
    many = np.tile(scores, (10, 1))
    wrong, unsure = confident_mistakes(many, np.tile(labels, 10))
    assert len(wrong) == len(unsure) == STRIPS_PER_KIND


def test_a_large_confusion_matrix_shows_its_largest_mistakes_only() -> None:
    names = [f"c{i}" for i in range(60)]
    cm = np.eye(60, dtype=np.int64) * 5
    cm[3, 7] = 4
    cm[10, 2] = 9
    text = confusion_html(cm, names)
    assert "confusion-matrix" not in text
    assert text.index("<td class='l'>c10</td><td class='l'>c2</td><td>9</td>") < text.index(
        "<td class='l'>c3</td><td class='l'>c7</td><td>4</td>")


def test_the_prediction_page_shows_strips_a_timeline_and_failures(run: tuple[Config, Path, Path],
                                                                  tmp_path: Path) -> None:
    cfg, checkpoint, _ = run
    short = Path(cfg.data.root) / "videos" / "v4.mp4"  # 41 frames, scored whole
    long = make_index_video(tmp_path / "long.mp4", 250, width=SIZE, height=SIZE)  # 10 s: windows 0-4, 3-7, 6-10 s
    broken = Path(cfg.data.root) / BROKEN
    out = tmp_path / "predictions.html"
    with restored_global_state():
        predictor = Predictor.from_checkpoint(checkpoint, cfg, num_clips=2, crops=1)
        whole = predict_videos(predictor, [(short, "short")], top_k=3, progress=False, html=out)
        assert whole == 0
        page = parse(out)
        images = [attrs for tag, attrs in page.elements if tag == "img"]
        expected = test_indices(41, SEGMENTS, 1, 2)[0].tolist()  # the first temporal clip, one frame per segment
        assert [int(attrs["data-frame"] or -1) for attrs in images] == expected
        decoded = [frame_index(np.asarray(decode_image(attrs["src"] or "").convert("RGB"))) for attrs in images]
        assert decoded == expected
        failed = predict_videos(predictor, [(long, "long"), (broken, "broken")], top_k=3, window=4.0, stride=3.0,
                                progress=False, html=out)
        assert failed == 1
        prediction = predictor.predict(long, top_k=3, window=4.0, stride=3.0)
    text = out.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    page = parse(out)
    images = [attrs for tag, attrs in page.elements if tag == "img"]
    # one thumbnail per window: the middle segment of its first clip, frames first..last of the window alone
    expected = [w.first_frame + int(test_indices(w.last_frame + 1 - w.first_frame, SEGMENTS, 1, 2)[0][SEGMENTS // 2])
                for w in prediction.windows]
    assert len(expected) == 3
    assert [int(attrs["data-frame"] or -1) for attrs in images] == expected
    assert [frame_index(np.asarray(decode_image(attrs["src"] or "").convert("RGB"))) for attrs in images] == expected
    timeline = [attrs["data-class"] for tag, attrs in page.elements if tag == "div" and "data-class" in attrs]
    assert timeline == [w.top[0].name for w in prediction.windows]
    (video, reason), = [[text for _, text in row] for row in page.tables["failed"][1:]]
    assert video == str(broken) and reason  # the one video that could not be read, and why


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (Debian's chromium package) is not installed")
def test_a_screenshot_in_headless_chromium_with_no_network(run: tuple[Config, Path, Path], tmp_path: Path) -> None:
    _, _, out = run
    shot = tmp_path / "report.png"
    # a proxy that does not exist: any fetch would fail, and the page must not need one
    done = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--proxy-server=127.0.0.1:9", "--window-size=1100,1400", f"--screenshot={shot}",
                           (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    image = Image.open(shot)
    assert image.size == (1100, 1400)
    pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10  # drawn, not a blank page
