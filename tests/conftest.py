"""Suite-wide options. Acceptance runs (tests/acceptance): the Reuters-21578 targets of the issues, through the launcher users run.

Each trains a full config (15 to 30 minutes on 2 cores), longer than the CI budget allows next to
the rest of the suite, so they run on request: `make acceptance` (pytest --acceptance
tests/acceptance). Without the option they are skipped with that reason; without ../shared they
are skipped with the data's reason.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    parser.addoption("--acceptance", action="store_true", default=False,
                     help="run the Reuters-21578 acceptance trainings (15-30 min each on 2 cores)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--acceptance"):
        return
    skip = pytest.mark.skip(reason="acceptance training (15-30 min on 2 cores): run `make acceptance`")
    for item in items:
        if "acceptance" in item.keywords:
            item.add_marker(skip)
