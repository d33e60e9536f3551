"""Shared fixtures: the real data beside the checkout (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``../shared/data/real`` (read-only); the test is skipped when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not found at {REAL_DATA}")
    return REAL_DATA
