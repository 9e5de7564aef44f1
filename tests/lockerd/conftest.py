"""Fixtures of the hub's tests: ``hub``, the four-door hub of
:func:`tests.support.hubs.make_hub` (the one wiring, on simulated boards, the test's
clock). A test module that needs another hub defines its own ``hub``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.hubs import SimHub, make_hub


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[SimHub]:
    async with contextlib.AsyncExitStack() as stack:
        yield await make_hub(stack, tmp_path)
