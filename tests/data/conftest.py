"""Fixtures of the data tests (helpers and constants live in data_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import REUTERS, write_xmtc

from xmtc.config import DataConfig


@pytest.fixture
def cache_dir(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture
def small_xmtc(tmp_path: Path) -> Path:
    return write_xmtc(tmp_path / "small")


@pytest.fixture
def make_cfg(cache_dir: str):
    def make(**kw) -> DataConfig:
        return DataConfig(cache_dir=cache_dir, **kw)

    return make


@pytest.fixture
def reuters() -> Path:
    if not REUTERS.is_dir():
        pytest.skip(f"real data not present: {REUTERS} (the shared folder beside the repository) is absent")
    return REUTERS
