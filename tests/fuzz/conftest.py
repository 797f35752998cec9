"""Registers the fuzz targets' hypothesis profiles ("ci", "long"): see profiles.py.

In the long mode the fuzz targets run for as long as they need: the suite's per-test
timeout (pytest-timeout, pyproject.toml) is lifted for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from tests.fuzz import profiles

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if settings.get_current_profile_name() != profiles.LONG:
        return
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.timeout(0))
