"""A steady poll cycle over the boards of one bus.

Every ``interval_s`` each board is read once (one transaction for all its doors).
The cycle is steady: it is scheduled from its start, not from the end of the
previous one, and an overrun is counted rather than piling up. A board that fails
is reported and, while offline, refused by the bus at no wire cost, so the
others keep their cycle. A board is prepared (no relay left energised) before its
first good reading and again after it comes back (a failed prepare is reported and
retried every ``PREPARE_RETRY_S``; the doors are read regardless).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from lockerd.drivers.boards import Board, DoorReading
from lockerd.drivers.errors import BusClosed, DriverError

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class PollStats:
    cycles: int = 0
    overruns: int = 0
    last_cycle_s: float = 0.0
    max_cycle_s: float = 0.0
    readings: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)


class BusPoller:
    """Reads every board of one bus once per interval and hands each reading on;
    a board that fails costs only its own read."""

    PREPARE_RETRY_S = 10.0

    def __init__(
        self,
        boards: Sequence[Board[Any]],
        *,
        interval_s: float = 0.5,
        on_reading: Callable[[DoorReading], None],
        on_failure: Callable[[Board[Any], DriverError], None] | None = None,
    ) -> None:
        self.boards = tuple(boards)
        self.interval_s = interval_s
        self.stats = PollStats()
        self._on_reading = on_reading
        self._on_failure = on_failure
        # when each board is next to be prepared; absent: prepared and online since
        self._prepare_at: dict[str, float] = {b.key: 0.0 for b in self.boards}
        self.cycle_done = asyncio.Event()

    def set_consumers(
        self,
        on_reading: Callable[[DoorReading], None],
        on_failure: Callable[[Board[Any], DriverError], None] | None = None,
    ) -> None:
        """Who gets the readings and the failures (the door monitor, once built)."""
        self._on_reading = on_reading
        self._on_failure = on_failure

    def _failed(self, board: Board[Any], exc: DriverError) -> None:
        self.stats.failures[board.key] = self.stats.failures.get(board.key, 0) + 1
        if self._on_failure is not None:
            self._on_failure(board, exc)

    async def _prepare_if_due(self, board: Board[Any]) -> None:
        due = self._prepare_at.get(board.key)
        now = asyncio.get_running_loop().time()
        if due is None or now < due:
            return
        try:
            await board.prepare()
        except BusClosed:
            raise
        except DriverError as exc:
            # the doors are still read; prepare is tried again later, not every cycle
            self._prepare_at[board.key] = now + self.PREPARE_RETRY_S
            self._failed(board, exc)
        else:
            del self._prepare_at[board.key]

    async def poll_once(self) -> None:
        """Read every board once, in order. One board's failure never stops the others."""
        for board in self.boards:
            try:
                reading = await board.read()
            except BusClosed:
                raise
            except DriverError as exc:
                if not board.bus.health_of(board.key).online:
                    # prepare again when it is back (a power cycle, a swapped board)
                    self._prepare_at.setdefault(board.key, 0.0)
                self._failed(board, exc)
                continue
            self.stats.readings[board.key] = self.stats.readings.get(board.key, 0) + 1
            try:
                self._on_reading(reading)
            except Exception:
                log.exception("poll_consumer_failed", board=board.key)
            await self._prepare_if_due(board)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            started = loop.time()
            await self.poll_once()
            took = loop.time() - started
            self.stats.cycles += 1
            self.stats.last_cycle_s = took
            self.stats.max_cycle_s = max(self.stats.max_cycle_s, took)
            self.cycle_done.set()
            self.cycle_done.clear()
            next_at += self.interval_s
            now = loop.time()
            if next_at < now:
                self.stats.overruns += 1
                next_at = now
            await asyncio.sleep(next_at - now)
