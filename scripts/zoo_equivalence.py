"""Do mmaction2's TSN-R50 and TSM-R50 compute the same logits as this project after loading their files?

Run with the Python of a separate virtual environment that has mmaction2 1.2.0 (``/work/shared/bench/README.md``
sets one up at ``/tmp/peer-venv``; add ``importlib_metadata``, which mmaction2 imports); this project runs in a subprocess with its own Python and the checkout on
``PYTHONPATH``, so that nothing of mmaction2 reaches it::

    /tmp/peer-venv/bin/python scripts/zoo_equivalence.py --python /work/main/.venv/bin/python

For each model: mmaction2 builds it with random weights (BatchNorm statistics and affine parameters drawn too, and
a classifier of ordinary scale, so that a wrong mapping changes the logits), saves it as its model zoo does
(``{"meta", "state_dict", "message_hub"}``, the legacy format of ``publish_model.py``), and scores one random
uint8 clip of 8 segments through its own data preprocessor (mean 123.675, 116.28, 103.53, std 58.395, 57.12,
57.375) and recogniser. This project scores the same clip with the file as ``pretrained`` of ``build_model``
(``model.consensus: avg``, the mapping of a fine-tune's start), through ``tools/import_checkpoint.py`` and
``load_trained`` (the whole model every tool uses), and, as a control that must differ, under another temporal
shift (TSN weights in a TSM; a TSM's shift from the past only). Prints one line per model and path with the
largest absolute difference of the logits and their scale; exit status 1 when "init" or "imported" is over
``--tolerance`` or the control is within it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SEGMENTS = 8
CLASSES = 400
MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]

# Run by this project's Python: argv = zoo file, clip .npy, classes file, temporal, work folder, classes,
# segments; prints JSON.
PROJECT_SIDE = """
import json, subprocess, sys
from pathlib import Path
import numpy as np, torch
from tsn.evaluation.inference import load_trained
from tsn.layout import normalize_clips
from tsn.models import build_model
zoo, clip, classes, temporal, work = sys.argv[1:6]
num_classes, segments = int(sys.argv[6]), int(sys.argv[7])
x = torch.from_numpy(np.load(clip))  # (1, T, C, H, W) uint8
def logits(model):
    with torch.no_grad():
        return model.eval()(normalize_clips(x, model.spec.mean, model.spec.std)).numpy().tolist()
init = build_model(backbone="resnet50", pretrained=zoo, pretrained_format="auto", num_classes=num_classes,
                   num_segments=segments, consensus="avg", dropout=0.0, temporal=temporal)
out = Path(work) / "imported.pth"
subprocess.run([sys.executable, "tools/import_checkpoint.py", zoo, "--classes", classes, "--out", str(out),
                "--opt", f"data.num_segments={segments}"], check=True)
whole = load_trained(out).model
# the control: the same weights under another shift (TSN weights in a TSM, a TSM's shift from the past only)
control = build_model(backbone="resnet50", pretrained=zoo, num_classes=num_classes, num_segments=segments,
                      consensus="avg", dropout=0.0, temporal="tsm", shift_direction="causal" if temporal == "tsm" else "bidirectional")
print(json.dumps({"init": logits(init), "imported": logits(whole), "control": logits(control)}))
"""


def _stand_in_for_drn() -> None:
    """mmaction2 1.2.0's wheel lacks ``mmaction/models/localizers/drn/`` that ``mmaction.models`` imports (a
    packaging fault of that release): an empty module stands in for it; no model here uses DRN."""
    import types

    for name in ("mmaction.models.localizers.drn", "mmaction.models.localizers.drn.drn"):
        module = sys.modules.setdefault(name, types.ModuleType(name))
        module.DRN = None  # type: ignore[attr-defined]


def build_mmaction2(kind: str) -> tuple[torch.nn.Module, dict]:
    """mmaction2's TSN-R50 or TSM-R50 recogniser (8 segments for TSM) with its own initialisation, and its
    config."""
    _stand_in_for_drn()
    from mmaction.registry import MODELS
    from mmaction.utils import register_all_modules
    from mmengine.logging import MMLogger

    register_all_modules()
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # not a line per tensor initialised
    if kind == "tsn":
        backbone = dict(type="ResNet", depth=50, pretrained=None, norm_eval=False)
        head = dict(type="TSNHead", num_classes=CLASSES, in_channels=2048, spatial_type="avg",
                    consensus=dict(type="AvgConsensus", dim=1), dropout_ratio=0.4, init_std=0.01)
    else:
        backbone = dict(type="ResNetTSM", depth=50, pretrained=None, pretrained2d=False, norm_eval=False,
                        num_segments=SEGMENTS, shift_div=8)
        head = dict(type="TSMHead", num_classes=CLASSES, in_channels=2048, spatial_type="avg", num_segments=SEGMENTS,
                    consensus=dict(type="AvgConsensus", dim=1), dropout_ratio=0.5, init_std=0.001, is_shift=True)
    cfg = dict(type="Recognizer2D", backbone=backbone, cls_head=head,
               data_preprocessor=dict(type="ActionDataPreprocessor", mean=MEAN, std=STD, format_shape="NCHW"))
    model = MODELS.build(cfg)
    model.init_weights()
    return model.eval(), cfg


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Draw the BatchNorm statistics and affine parameters and the classifier, which a fresh model has at 1, 0
    and a tiny scale: with those a swapped or missing tensor would hardly change the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                size = module.num_features
                # scales below 1 keep the residual stream, and so the logits, at a trained network's magnitude
                # (a few units); at 0.5..1.5 they reach thousands, where float32's rounding alone exceeds 1e-4
                module.weight.copy_(0.2 + 0.4 * torch.rand(size, generator=generator))
                module.bias.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
        fc = model.cls_head.fc_cls
        fc.weight.copy_(0.05 * torch.randn(fc.weight.shape, generator=generator))
        fc.bias.copy_(0.05 * torch.randn(fc.bias.shape, generator=generator))


def save_like_the_zoo(model: torch.nn.Module, cfg: dict, path: Path) -> None:
    """The layout of a published mmaction2 1.x file: the config text mmengine saves, the training log's objects."""
    from mmengine.config import Config
    from mmengine.logging import HistoryBuffer, MessageHub

    hub = MessageHub("equivalence")
    hub.update_scalar("train/loss", 1.5)
    meta = {"mmengine_version": "0.10.7", "epoch": 50, "iter": 1000, "seed": 0,
            "dataset_meta": None, "experiment_name": "equivalence", "buffer": HistoryBuffer([1.0, 2.0], [1, 1]),
            "cfg": Config({"model": cfg}).pretty_text}
    torch.save({"meta": meta, "state_dict": model.state_dict(), "message_hub": hub.state_dict()}, path,
               _use_new_zipfile_serialization=False)


def mmaction2_logits(model: torch.nn.Module, clip: np.ndarray) -> np.ndarray:
    """(1, T, C, H, W) uint8 -> (1, classes) logits through mmaction2's preprocessor and recogniser."""
    data = model.data_preprocessor({"inputs": [torch.from_numpy(clip[0])], "data_samples": None}, False)
    with torch.no_grad():
        scores, _ = model.extract_feat(data["inputs"], stage="head", test_mode=True)
    return scores.numpy()


def project_logits(python: str, zoo: Path, clip: Path, classes: Path, temporal: str, work: Path) -> dict:
    """This project's logits (``init`` and ``imported``) from a subprocess of its own Python."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([python, "-c", PROJECT_SIDE, str(zoo), str(clip), str(classes), temporal, str(work),
                           str(CLASSES), str(SEGMENTS)], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"this project failed on {zoo.name}:\n{done.stderr.strip()}")
    return {key: np.asarray(value) for key, value in json.loads(done.stdout.splitlines()[-1]).items()}


def top5(logits: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-logits[0])[:5]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default="/work/main/.venv/bin/python", help="this project's Python")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest absolute logit difference allowed")
    parser.add_argument("--size", type=int, default=224, help="frame side")
    args = parser.parse_args()
    torch.manual_seed(0)
    clip = np.random.default_rng(0).integers(0, 256, (1, SEGMENTS, 3, args.size, args.size), dtype=np.uint8)
    failed = False
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        np.save(work / "clip.npy", clip)
        (work / "classes.txt").write_text("".join(f"class {i}\n" for i in range(CLASSES)))
        for seed, kind in enumerate(("tsn", "tsm")):
            model, cfg = build_mmaction2(kind)
            randomise(model, seed)
            zoo = work / f"{kind}_r50_mmaction2.pth"
            save_like_the_zoo(model, cfg, zoo)
            reference = mmaction2_logits(model, clip)
            temporal = "tsm" if kind == "tsm" else "none"
            ours = project_logits(args.python, zoo, work / "clip.npy", work / "classes.txt", temporal, work)
            for path, logits in ours.items():
                diff = float(np.abs(logits - reference).max())
                # the control must differ: else the comparison could not tell a wrong shift from the right one
                failed |= diff > args.tolerance if path != "control" else diff <= args.tolerance
                print(f"{kind.upper()}-R50 {path:8s}: max |logit difference| {diff:.2e} (tolerance "
                      f"{args.tolerance:g}); logits std {reference.std():.3f}, max |logit| "
                      f"{np.abs(reference).max():.3f}; same top-5: {top5(logits) == top5(reference)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
