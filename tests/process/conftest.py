"""Fixtures shared by the process-level tests."""

from __future__ import annotations

import logging
from typing import Callable, Iterator

import pytest


@pytest.fixture
def log_records() -> Iterator[Callable[[str], list[logging.LogRecord]]]:
    """`log_records(name)`: a list that receives every record of logger `name` from now on.

    Attached to the logger itself, so it works whatever the root logger's set-up (relayd's
    own, `relayd.logs.setup`, stops propagation); detached after the test.
    """
    attached: list[tuple[logging.Logger, logging.Handler, int]] = []

    def records(name: str) -> list[logging.LogRecord]:
        found: list[logging.LogRecord] = []
        handler = logging.Handler(logging.DEBUG)
        handler.emit = found.append  # type: ignore[method-assign]
        logger = logging.getLogger(name)
        attached.append((logger, handler, logger.level))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        return found

    yield records
    for logger, handler, level in attached:
        logger.removeHandler(handler)
        logger.setLevel(level)
