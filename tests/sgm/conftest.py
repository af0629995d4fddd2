"""Fixtures of the SGM tests (helpers live in sgm_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def label_rows() -> list[list[int]]:
    # File order on purpose: not sorted, different lengths, one long row.
    return [[4], [6, 2], [8, 3, 5], [9], [9, 6], [7, 5, 6, 0], [4], [10, 4]]
