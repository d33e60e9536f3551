"""``report.html``: one self-contained page of a test run (and the parts ``tsn.apps.predict`` reuses).

Everything is inline: styles, a few lines of script (sorting the per-class table), the plots (matplotlib PNGs)
and the frame strips (JPEGs) as base64 ``data:`` URIs, so that the page opens from a mail attachment with
no network. Its size is bounded: at most ``STRIPS_PER_KIND`` strips of each kind, one thumbnail per segment
of the first view, ``THUMB_HEIGHT`` pixels high; the confusion matrix is a table up to
``MATRIX_TABLE_CLASSES`` classes, else its largest off-diagonal cells only.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

from tsn.data.dataset import ClipDataset
from tsn.evaluation.metrics import ClassMetrics
from tsn.fileio import atomic_write_text

STRIPS_PER_KIND = 12  # most confidently wrong, and least sure correct
THUMB_HEIGHT = 96
MATRIX_TABLE_CLASSES = 40
TOP_CONFUSIONS = 15
TOP_K = 5
HASH_CHUNK = 1 << 20  # the identity hash reads the first and last MiB: the same on a 10 GB file

STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}h2{font-size:1.15em;
border-bottom:1px solid #ccc;margin-top:1.6em}table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 8px;
border:1px solid #ddd;text-align:right}th{background:#f3f3f3;cursor:pointer}td.l,th.l{text-align:left}
.big{font-size:1.6em;font-weight:600}.kpi{display:inline-block;margin-right:2.5em}.note{color:#666;font-size:.9em}
.strip{margin:.6em 0;padding:.4em;border:1px solid #ddd}.strip img{height:96px;margin-right:2px}
.frames{display:flex;flex-wrap:wrap}.frames figure{margin:0 2px;text-align:center;font-size:.8em;color:#666}
.bad{color:#b00}.good{color:#070}pre{background:#f7f7f7;padding:.6em;overflow:auto;max-height:30em}"""

# Sorts a table when a header cell is clicked: by each cell's data-value (numbers), else its text.
SCRIPT = """document.querySelectorAll('table.sortable th').forEach(function(th,col){th.onclick=function(){
var t=th.closest('table'),b=t.tBodies[0],r=Array.from(b.rows),d=th.dataset.dir==='a'?-1:1;th.dataset.dir=d>0?'a':'d';
r.sort(function(x,y){var p=x.cells[col],q=y.cells[col],u=parseFloat(p.dataset.value),v=parseFloat(q.dataset.value);
return(isNaN(u)||isNaN(v)?p.textContent.localeCompare(q.textContent):u-v)*d;});
r.forEach(function(e){b.appendChild(e);});};});"""


class Strip(NamedTuple):
    """One video shown as the frames the model was given: its path, true class (None: unknown), the top
    classes with their scores, the thumbnails (RGB uint8 ``(h, w, 3)``), their frame indices and their
    captions (empty: "frame i")."""

    path: str
    true_class: str | None
    top: tuple[tuple[str, float], ...]
    frames: tuple[np.ndarray, ...]
    frame_indices: tuple[int, ...]
    captions: tuple[str, ...] = ()


def esc(value: object) -> str:
    """``value`` as HTML text, quotes escaped."""
    return html.escape(str(value), quote=True)


def jpeg_uri(frame: np.ndarray, height: int = THUMB_HEIGHT) -> str:
    """An RGB uint8 ``(h, w, 3)`` frame as a ``data:image/jpeg`` URI, scaled down to ``height`` pixels."""
    import cv2

    frame = np.ascontiguousarray(frame)
    if frame.shape[0] > height:
        size = (max(1, round(frame.shape[1] * height / frame.shape[0])), height)
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError(f"cannot encode a frame of shape {frame.shape} as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def figure_uri(figure: object) -> str:
    """A matplotlib figure as a ``data:image/png`` URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def segment_frames(clip: torch.Tensor, num_segments: int) -> list[np.ndarray]:
    """The first frame of each segment of one view ``(T, C, H, W)`` as RGB uint8 ``(H, W, 3)``; empty for a
    clip that is not 3-channel uint8 (optical flow, a normalised clip): nothing a person could look at."""
    if clip.dtype != torch.uint8 or clip.shape[1] != 3:
        return []
    step = clip.shape[0] // num_segments
    return [clip[k * step].permute(1, 2, 0).numpy() for k in range(num_segments)]


def dataset_strip(dataset: ClipDataset, index: int, true_class: str | None,
                  top: tuple[tuple[str, float], ...]) -> Strip:
    """The strip of list entry ``index`` of a test-mode ``dataset``: the first view's segments, re-read as the
    scoring read them (test sampling and crops are deterministic; the key carries the dataset's epoch)."""
    from tsn.data.dataset import ClipKey

    sample = dataset[ClipKey(dataset.epoch, index)]
    frames = segment_frames(sample.clip[0] if sample.clip.dim() == 5 else sample.clip, dataset.num_segments)
    indices = dataset.frame_indices(sample.index, np.random.default_rng(0))
    first = (indices[0] if indices.ndim == 2 else indices).tolist()
    step = len(first) // dataset.num_segments
    return Strip(dataset.path(sample.index), true_class, top, tuple(frames),
                 tuple(int(first[k * step]) for k in range(len(frames))))


def strip_html(strip: Strip) -> str:
    """One strip: the path, true and predicted class, the top-k scores and the thumbnails."""
    predicted = strip.top[0][0]
    verdict = ""
    if strip.true_class is not None:
        right = predicted == strip.true_class
        verdict = (f" &middot; true <b>{esc(strip.true_class)}</b> &middot; predicted "
                   f"<b class='{'good' if right else 'bad'}'>{esc(predicted)}</b>")
    scores = ", ".join(f"{esc(name)} <span data-score='{score!r}'>{score:.3f}</span>" for name, score in strip.top)
    captions = strip.captions or tuple(f"frame {i}" for i in strip.frame_indices)
    figures = "".join(f"<figure><img src='{jpeg_uri(frame)}' alt='frame {i}' data-frame='{i}'>"
                      f"<figcaption>{esc(caption)}</figcaption></figure>"
                      for frame, i, caption in zip(strip.frames, strip.frame_indices, captions))
    return (f"<div class='strip'><div><code>{esc(strip.path)}</code>{verdict}</div>"
            f"<div class='note'>top-{len(strip.top)}: {scores}</div><div class='frames'>{figures}</div></div>")


def page(title: str, sections: Sequence[str]) -> str:
    """The whole page: ``sections`` (HTML fragments) under a title, with the inline style and script."""
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>\n" + "\n".join(sections)
            + f"\n<script>{SCRIPT}</script></body></html>\n")


def confident_mistakes(scores: np.ndarray, labels: np.ndarray,
                       cap: int = STRIPS_PER_KIND) -> tuple[list[int], list[int]]:
    """Rows of ``scores (N, C)`` (finite) against ``labels (N,)``: the ``cap`` wrong ones with the highest top
    score (most confidently wrong first), and the ``cap`` right ones with the lowest (least sure first)."""
    predicted, top = scores.argmax(axis=1), scores.max(axis=1)
    wrong, right = np.flatnonzero(predicted != labels), np.flatnonzero(predicted == labels)
    # stable sorts: equal scores keep list order
    wrong = wrong[np.argsort(-top[wrong], kind="stable")][:cap]
    right = right[np.argsort(top[right], kind="stable")][:cap]
    return wrong.tolist(), right.tolist()


def top_scores(row: np.ndarray, class_names: Sequence[str], k: int = TOP_K) -> tuple[tuple[str, float], ...]:
    """The ``k`` highest scores of one row with their class names, highest first (ties: lower class id)."""
    order = np.argsort(-row, kind="stable")[:k]
    return tuple((class_names[c], float(row[c])) for c in order)


def file_identity(path: Path, epoch: int | None) -> dict[str, object]:
    """A file's path, size, the sha256 of its first and last MiB (with its size: cheap on any file) and the
    ``epoch`` the test read from it (not loaded again here)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as handle:
        digest.update(handle.read(HASH_CHUNK))
        if size > HASH_CHUNK:
            handle.seek(max(HASH_CHUNK, size - HASH_CHUNK))
            digest.update(handle.read(HASH_CHUNK))
    digest.update(str(size).encode())
    return {"path": str(path.resolve()), "bytes": size, "sha256 (first+last MiB, size)": digest.hexdigest(),
            "epoch": epoch}


def write_page(path: Path, text: str) -> None:
    """Write the page atomically."""
    atomic_write_text(path, text)


def key_value_table(table_id: str, values: dict[str, object]) -> str:
    """A two-column table of ``values`` (None shown as "-")."""
    rows = "".join(f"<tr><th class='l'>{esc(key)}</th><td class='l'>{esc('-' if value is None else value)}</td></tr>"
                   for key, value in values.items())
    return f"<table id='{table_id}'>{rows}</table>"


def headline_html(metrics: dict) -> str:
    """The headline metrics of ``metrics.json`` (exact values in ``data-value``) and their conventions."""
    kpis = "".join(f"<div class='kpi'><div class='note'>{esc(label)}</div><div class='big' data-metric='{key}' "
                   f"data-value='{metrics[key]!r}'>{100 * metrics[key]:.2f}%</div></div>"
                   for key, label in (("top1", "top-1"), ("top5", "top-5"),
                                      ("mean_class_accuracy", "mean class accuracy")))
    counts = (f"<p><span data-metric='num_videos' data-value='{metrics['num_videos']}'>{metrics['num_videos']}"
              f"</span> videos scored, <span data-metric='num_skipped' data-value='{metrics['num_skipped']}'>"
              f"{metrics['num_skipped']}</span> skipped</p>")
    warning = ("<p class='bad'>The checkpoint was chosen as the best on this list: these numbers are optimistic.</p>"
               if metrics.get("checkpoint_chosen_on_this_list") else "")
    conventions = "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in metrics.get("conventions", {}).items())
    return f"<h2>Metrics</h2>{kpis}{counts}{warning}<ul class='note'>{conventions}</ul>"


def per_class_html(class_names: Sequence[str], precision: np.ndarray, recall: np.ndarray, f1: np.ndarray,
                   support: np.ndarray) -> str:
    """The per-class table, sortable by any column; the text is ``per_class.csv``'s (6 decimals)."""
    rows = []
    for i, name in enumerate(class_names):
        never = " class='bad'" if support[i] and not precision[i] and not recall[i] else ""
        cells = "".join(f"<td data-value='{float(v)!r}'>{float(v):.6f}</td>" for v in (precision[i], recall[i], f1[i]))
        rows.append(f"<tr{never}><td class='l'>{esc(name)}</td>{cells}<td data-value='{int(support[i])}'>"
                    f"{int(support[i])}</td></tr>")
    head = "<tr><th class='l'>class</th><th>precision</th><th>recall</th><th>f1</th><th>support</th></tr>"
    return (f"<h2>Per class</h2><p class='note'>Click a column to sort; red: a class with videos that is never "
            f"predicted right.</p><table class='sortable' id='per-class'><thead>{head}</thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _shade(fraction: float, diagonal: bool) -> str:
    """A cell's background: green on the diagonal, red off it, as strong as its share of the row."""
    alpha = round(0.85 * fraction, 3)
    ink = ";color:#fff" if alpha > 0.45 else ""  # dark text would vanish on a strong shade
    return f"background:rgba({'0,150,0' if diagonal else '210,0,0'},{alpha}){ink}"


def confusion_html(cm: np.ndarray, class_names: Sequence[str]) -> str:
    """The confusion matrix (rows: true, columns: predicted), each cell its count and its share of the row,
    shaded by the share; above ``MATRIX_TABLE_CLASSES`` classes only the largest off-diagonal cells."""
    totals = cm.sum(axis=1, keepdims=True)
    shares = np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)
    off = [(int(cm[t, p]), t, p) for t, p in zip(*np.nonzero(cm)) if t != p]
    off.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    confusions = "".join(f"<tr><td class='l'>{esc(class_names[t])}</td><td class='l'>{esc(class_names[p])}</td>"
                         f"<td>{count}</td><td>{100 * shares[t, p]:.1f}%</td></tr>"
                         for count, t, p in off[:TOP_CONFUSIONS])
    text = (f"<h2>Confusion</h2><p class='note'>The largest mistakes (true class taken for another).</p>"
            f"<table id='confusions'><tr><th class='l'>true</th><th class='l'>predicted</th><th>videos</th>"
            f"<th>of the true class</th></tr>{confusions}</table>")
    if len(class_names) > MATRIX_TABLE_CLASSES:
        return text + f"<p class='note'>{len(class_names)} classes: the whole matrix is in confusion_matrix.csv.</p>"
    head = "".join(f"<th title='{esc(name)}'>{esc(name[:12])}</th>" for name in class_names)
    rows = []
    for t, name in enumerate(class_names):
        cells = "".join(f"<td style='{_shade(shares[t, p], t == p)}' data-count='{int(cm[t, p])}' "
                        f"title='{esc(name)} as {esc(class_names[p])}'>{int(cm[t, p])}<br>"
                        f"<small>{100 * shares[t, p]:.0f}%</small></td>" for p in range(len(class_names)))
        rows.append(f"<tr><th class='l'>{esc(name)}</th>{cells}</tr>")
    return (text + "<p class='note'>Rows: true class; columns: predicted; each cell its videos and its share of "
            f"the row.</p><table id='confusion-matrix'><tr><th class='l'>true \\ predicted</th>{head}</tr>"
            f"{''.join(rows)}</table>")


def skipped_html(rows: Sequence[tuple[int, str, str]]) -> str:
    """The list entries left out (row of ``scores.npy``, path, reason), as ``skipped.csv``."""
    if not rows:
        return "<h2>Skipped videos</h2><p>None: every video of the list was scored.</p>"
    body = "".join(f"<tr><td>{index}</td><td class='l'>{esc(path)}</td><td class='l'>{esc(reason)}</td></tr>"
                   for index, path, reason in rows)
    return (f"<h2>Skipped videos ({len(rows)})</h2><table id='skipped'><tr><th>row</th><th class='l'>path</th>"
            f"<th class='l'>reason</th></tr>{body}</table>")


def curves_html(jsonl: Path) -> str:
    """Training curves (loss, top-1, mean class accuracy, learning rate per epoch) of a run's ``metrics.jsonl``;
    empty when there is none or it holds no readable line."""
    if not jsonl.is_file():
        return ""
    records = []
    for line in jsonl.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill; the others still draw
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
    if not records:
        return ""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 2.8), dpi=72, layout="constrained")
    epochs = [r["epoch"] for r in records]
    for axis, (title, keys) in zip(figure.subplots(1, 4), (
            ("loss", ("train_loss", "val_loss")), ("top-1", ("train_top1", "val_top1")),
            ("mean class accuracy", ("train_mean_class_accuracy", "val_mean_class_accuracy")), ("lr", ("lr",)))):
        for key in keys:
            points = [(e, r[key]) for e, r in zip(epochs, records) if isinstance(r.get(key), (int, float))]
            if points:
                axis.plot(*zip(*points), marker=".", label=key.split("_")[0] if len(keys) > 1 else key)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        if len(keys) > 1:
            axis.legend(fontsize=8)
    return (f"<h2>Training</h2><p class='note'>{esc(jsonl)}</p>"
            f"<img id='curves' src='{figure_uri(figure)}' alt='training curves'>")


def strips_html(title: str, note: str, strips: Sequence[Strip]) -> str:
    """A section of strips under ``title``."""
    body = "".join(strip_html(strip) for strip in strips) or "<p>None.</p>"
    return f"<h2>{esc(title)}</h2><p class='note'>{esc(note)}</p>{body}"


class TestPageInputs(NamedTuple):
    """What the test page shows besides the files of ``write_report``: the scores ``(N, C)`` in list order
    (NaN rows unscored), the labels ``(N,)``, the test-mode dataset the scores came from, the unscored rows
    (row, path, reason), the checkpoint (or exported file), the run's config as text and the checkpoint's epoch
    (None: not recorded, or an exported file)."""

    scores: np.ndarray
    labels: np.ndarray
    dataset: ClipDataset
    unscored: Sequence[tuple[int, str, str]]
    checkpoint: Path
    config_text: str
    epoch: int | None = None


def write_test_page(out_dir: Path, class_names: Sequence[str], inputs: TestPageInputs, per_class: ClassMetrics,
                    confusion: np.ndarray) -> Path:
    """Write ``out_dir/report.html`` from ``out_dir/metrics.json`` (read back, so the page shows what the file
    holds), the per-class ``ClassMetrics``, the ``confusion`` counts and ``inputs``; returns its path."""
    metrics = json.loads((out_dir / "metrics.json").read_text())
    rows = np.flatnonzero(np.isfinite(inputs.scores).all(axis=1))
    wrong, unsure = confident_mistakes(inputs.scores[rows], inputs.labels[rows])

    def strips(picked: Sequence[int]) -> list[Strip]:
        return [dataset_strip(inputs.dataset, int(rows[i]), class_names[inputs.labels[rows[i]]],
                              top_scores(inputs.scores[rows[i]], class_names)) for i in picked]

    view = "the first view's frames, one per segment, as the model was given them"
    sections = [
        headline_html(metrics),
        per_class_html(class_names, per_class.precision, per_class.recall, per_class.f1, per_class.support),
        confusion_html(confusion, class_names),
        strips_html("Most confidently wrong", f"At most {STRIPS_PER_KIND}, highest top score first; {view}.",
                    strips(wrong)),
        strips_html("Least sure correct", f"At most {STRIPS_PER_KIND}, lowest top score first; {view}.",
                    strips(unsure)),
        skipped_html(inputs.unscored),
        curves_html(inputs.checkpoint.parent / "metrics.jsonl"),
        "<h2>Checkpoint</h2>" + key_value_table("checkpoint", file_identity(inputs.checkpoint, inputs.epoch)),
        "<h2>Config</h2>" + f"<pre>{esc(inputs.config_text)}</pre>",
    ]
    path = out_dir / "report.html"
    write_page(path, page(f"Test report: {inputs.checkpoint.name}, {len(inputs.labels)} videos listed", sections))
    return path
