"""``tools/predict.py --html OUT.html``: one self-contained page of a prediction run.

Per video: its top-k classes and a strip of the frames the model was given (the first view's segments,
re-read as the scoring read them: test sampling and crops are deterministic); for a video scored in windows,
a timeline of each window's top class and a strip of one frame per window (the middle segment of the window's
first view; at most ``WINDOW_THUMBS`` windows, evenly spread). Strips for the first ``MAX_STRIPS`` videos; the
others are listed with their scores only, so the page stays small on a folder of thousands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from tsn.data.sampling import test_indices
from tsn.evaluation.html_report import Strip, dataset_strip, esc, page, segment_frames, strip_html, write_page

if TYPE_CHECKING:  # tsn.apps.predict imports this module
    from tsn.apps.predict import Predictor, VideoPrediction

MAX_STRIPS = 100
WINDOW_THUMBS = 12
# tab10: a class keeps its colour along every timeline of the page
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def _top(prediction_top: Sequence) -> tuple[tuple[str, float], ...]:
    return tuple((score.name, score.probability) for score in prediction_top)


def video_strip(predictor: Predictor, prediction: VideoPrediction) -> Strip:
    """The strip of a video scored whole: its first view's segments."""
    dataset = predictor.single_dataset(prediction.video)
    return dataset_strip(dataset, 0, None, _top(prediction.top))


def window_strip(predictor: Predictor, prediction: VideoPrediction) -> Strip:
    """The strip of a video scored in windows: the middle segment's frame of each window's first view (at
    most ``WINDOW_THUMBS`` windows), captioned with the window's time and top class."""
    dataset = predictor.single_dataset(prediction.video)
    count = len(prediction.windows)
    picks = sorted(set(np.linspace(0, count - 1, min(count, WINDOW_THUMBS)).round().astype(int).tolist()))
    frames, indices, captions = [], [], []
    middle = dataset.num_segments // 2
    for pick in picks:
        window = prediction.windows[pick]
        first, stop = window.first_frame, window.last_frame + 1
        clip = dataset.load(0, np.random.default_rng(0), frames=(first, stop))  # (V, T, C, H, W)
        shown = segment_frames(clip[0], dataset.num_segments)
        if not shown:
            continue
        steps = test_indices(stop - first, dataset.num_segments, dataset.new_length, dataset.num_clips)[0]
        frames.append(shown[middle])
        indices.append(first + int(steps[middle * (len(steps) // dataset.num_segments)]))
        captions.append(f"{window.start:.1f}-{window.end:.1f} s: {window.top[0].name}")
    return Strip(prediction.video, None, _top(prediction.top), tuple(frames), tuple(indices), tuple(captions))


def timeline_html(prediction: VideoPrediction) -> str:
    """The windows' top classes as one bar, each window as wide as its share of the video, coloured by class;
    overlapping windows (a stride under the window) are drawn side by side from their starts."""
    windows = prediction.windows
    starts = [w.start for w in windows] + [windows[-1].end]
    total = max(starts[-1] - starts[0], 1e-9)
    cells = []
    for window, start, end in zip(windows, starts, starts[1:]):
        top = window.top[0]
        cells.append(f"<div data-class='{esc(top.name)}' title='{window.start:.1f}-{window.end:.1f} s: "
                     f"{esc(top.name)} {top.probability:.3f}' style='flex:{(end - start) / total:.6f};"
                     f"background:{PALETTE[top.class_id % len(PALETTE)]};color:#fff;overflow:hidden;"
                     f"white-space:nowrap;font-size:.8em;padding:2px'>{esc(top.name)}</div>")
    return (f"<div class='timeline' style='display:flex;border:1px solid #999;margin:.3em 0'>{''.join(cells)}"
            f"</div><div class='note'>{starts[0]:.1f} s to {windows[-1].end:.1f} s, {len(windows)} windows: "
            f"each window's top class</div>")


class PredictPage:
    """The page of a prediction run, filled one video at a time: ``add`` a prediction, ``fail`` a video that
    could not be read, then ``write``."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.sections: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.strips = 0

    def add(self, prediction: VideoPrediction) -> None:
        """One video: its strip (the first ``MAX_STRIPS`` videos) or its scores, and its windows' timeline."""
        if self.strips < MAX_STRIPS:
            self.strips += 1
            strip = window_strip(self.predictor, prediction) if prediction.windows else \
                video_strip(self.predictor, prediction)
            text = strip_html(strip)
        else:
            scores = ", ".join(f"{esc(s.name)} {s.probability:.3f}" for s in prediction.top)
            text = f"<div class='strip'><code>{esc(prediction.video)}</code><div class='note'>{scores}</div></div>"
        self.sections.append(text + (timeline_html(prediction) if prediction.windows else ""))

    def fail(self, video: str, reason: str) -> None:
        """A video that could not be read, and why."""
        self.failed.append((video, reason))

    def write(self, path: Path) -> None:
        """Write the page to ``path`` (atomically)."""
        failed = "".join(f"<tr><td class='l'>{esc(video)}</td><td class='l'>{esc(reason)}</td></tr>"
                         for video, reason in self.failed)
        parts = [f"<p class='note'>{len(self.sections)} videos predicted, {len(self.failed)} failed; strips "
                 f"for the first {MAX_STRIPS}.</p>", *self.sections]
        if self.failed:
            parts.append(f"<h2>Failed ({len(self.failed)})</h2><table id='failed'><tr><th class='l'>video</th>"
                         f"<th class='l'>reason</th></tr>{failed}</table>")
        write_page(path, page("Predictions", parts))
