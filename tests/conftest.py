"""Shared fixtures: simulated buses on real pseudo-terminals, buses that drive them (with
tests.support.buses.FAST_BUS timings), and a real mosquitto per test
(tests.support.broker: ``broker``, ``make_broker``, ``mosquitto_binary``). Support code
that test modules import lives in tests/support/, never here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import pytest
import structlog

from lockerd.drivers.bus import Bus
from lockerd.drivers.settings import BusSettings
from lockerd.simulator.boards import SimBoard
from lockerd.simulator.line import Simulator
from tests.support.broker import broker, make_broker, mosquitto_binary  # noqa: F401 - fixtures
from tests.support.buses import FAST_BUS

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
