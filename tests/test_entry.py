"""The tools' way in and out: one entry helper (``tsn.cli.run_main``) for every tool, one ``UserError`` base for
the errors it prints in one line, and one meaning per flag name across tools."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_training import load_tool
from tsn.cli import UsageError, run_main, user_error_message
from tsn.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted((REPO / "tools").glob("*.py"))
LIST_FORMATS = {"video", "rawframes", "flow"}  # flow: the flow folders of tools/extract_flow.py


def test_the_command_line_helpers_load_no_model_code() -> None:
    # writing JPEG frames (tools/extract_frames.py) must not pay for importing the models and the export code
    done = subprocess.run([sys.executable, "-c", "import tsn.cli, sys; "
                           "print(sorted(m for m in sys.modules if m.startswith('tsn')))"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    loaded = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert "tsn.cli" in loaded
    heavy = [m for m in loaded if m.split(".")[:2] in (["tsn", "models"], ["tsn", "apps"], ["tsn", "evaluation"])]
    assert heavy == []


@pytest.mark.parametrize("path", TOOLS, ids=lambda path: path.stem)
def test_every_tool_exits_through_run_main(path: Path) -> None:
    tree = ast.parse(path.read_text())
    entry = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    assert [ast.unparse(node) for node in entry[0].body] == ["run_main(main)"]


def test_every_one_line_error_is_a_user_error() -> None:
    from tsn.checkpoint import CheckpointError
    from tsn.config import ConfigError
    from tsn.data.dataset import AllVideosFailedError
    from tsn.data.lists import ListFormatError
    from tsn.evaluation.deployed import ExportError
    from tsn.evaluation.evaluate import NonFiniteError
    from tsn.io.base import BackendUnavailable, VideoReadError
    from tsn.io.live import LiveSourceError
    from tsn.jobs.flow import FlowMethodUnavailable
    from tsn.models.weights import PretrainedWeightsNotFound

    for kind in (UsageError, ConfigError, ListFormatError, VideoReadError, BackendUnavailable, CheckpointError,
                 ExportError, PretrainedWeightsNotFound, AllVideosFailedError, NonFiniteError, LiveSourceError,
                 FlowMethodUnavailable):
        assert issubclass(kind, UserError), kind
    # the bases they were caught by before stay
    assert issubclass(ConfigError, ValueError) and issubclass(VideoReadError, RuntimeError)
    assert issubclass(PretrainedWeightsNotFound, FileNotFoundError)
    worker = RuntimeError("Caught ExportError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                          "call last):\n  ...\ntsn.evaluation.deployed.ExportError: m.onnx: not a per-frame graph\n")
    assert user_error_message(worker) == "m.onnx: not a per-frame graph"


def _exit_status(main, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        run_main(main)
    return stop.value.code, capsys.readouterr().err


def test_run_main_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    def raises(error: Exception):
        def main() -> int:
            raise error
        return main

    assert _exit_status(lambda: None, capsys) == (0, "")
    assert _exit_status(lambda: 1, capsys) == (1, "")  # some inputs failed
    assert _exit_status(raises(UsageError("--x needs --y")), capsys) == (2, "error: --x needs --y\n")
    assert _exit_status(raises(FileNotFoundError("no.txt")), capsys) == (2, "error: no.txt\n")
    with pytest.raises(KeyError):  # a bug keeps its traceback
        run_main(raises(KeyError("bug")))


def _flags(path: Path) -> dict[str, object]:
    parser = load_tool(path.stem).build_parser()
    return {option: action for action in parser._actions for option in action.option_strings}


@pytest.mark.parametrize("path", TOOLS, ids=lambda path: path.stem)
def test_one_meaning_per_flag(path: Path) -> None:
    flags = _flags(path)
    assert "--csv" not in flags and "--json" not in flags, "the output format is --format, a file --out-file"
    if "--list-format" in flags:  # the format of the lists read
        assert set(flags["--list-format"].choices) <= LIST_FORMATS
    if "--format" in flags:  # the format of what the tool writes
        assert not set(flags["--format"].choices) & LIST_FORMATS


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    from tsn.runtime.device import resolve_device

    def main() -> int:
        resolve_device("cuda")
        return 0
    assert _exit_status(main, capsys) == (2, "error: --device cuda: no CUDA device is available\n")
