"""Waiting on conditions with a deadline (never a bare sleep)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], bool], *, within: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it is true; fail with ``what`` after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.005)


async def until_result(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    within: float = 5.0,
    what: str = "result",
) -> T:
    """Call ``probe`` until ``accept`` holds for its result; that result."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await probe()
        if accept(result):
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}: last {result!r}")
        await asyncio.sleep(0.005)
