"""Shared fixtures: simulated buses on real pseudo-terminals, and buses that drive them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import pytest
import structlog

from drivers.bus import Bus
from drivers.settings import BusSettings
from simulator.boards import SimBoard
from simulator.line import Simulator

# Fast-failing defaults for tests: a dead board costs 30 ms a try, not 100.
FAST_BUS: dict[str, Any] = {
    "gap_ms": 0.5,
    "timeout_ms": 30.0,
    "offline_probe_s": 0.5,
    "reopen_min_s": 0.02,
    "reopen_max_s": 0.2,
}

SimFactory = Callable[..., Any]


@pytest.fixture(autouse=True)
def _quiet_structlog() -> None:
    structlog.reset_defaults()


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


@pytest.fixture
def make_sim(stack: AsyncExitStack) -> Callable[..., Any]:
    """``await make_sim([SimCu48(0), ...], **Simulator kwargs)``: a started simulator."""

    async def make(boards: Sequence[SimBoard], **kwargs: Any) -> Simulator:
        sim = Simulator(boards, **kwargs)
        await stack.enter_async_context(sim)
        return sim

    return make


@pytest.fixture
def make_bus(stack: AsyncExitStack) -> Callable[..., Any]:
    """``await make_bus(url, **BusSettings overrides)``: a started bus with fast test timings."""

    async def make(port: str, **overrides: Any) -> Bus:
        bus = Bus(BusSettings(port=port, **{**FAST_BUS, **overrides}))
        await stack.enter_async_context(bus)
        assert await bus.wait_open(5.0), f"bus did not open {port}"
        return bus

    return make


# A real mosquitto per test (tests/broker.py): `broker`, `make_broker`, `mosquitto_binary`.
from tests.broker import broker, make_broker, mosquitto_binary  # noqa: E402, F401
