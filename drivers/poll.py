"""A steady poll cycle over the boards of one bus.

Every ``interval_s`` each board is read once (one transaction for all its doors).
The cycle is steady: it is scheduled from its start, not from the end of the
previous one, and an overrun is counted rather than piling up. A board that fails
is reported and, while offline, refused by the bus at no wire cost, so the
others keep their cycle. A board is prepared (no relay left energised) before its
first good reading and again after it comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from drivers.boards import Board, DoorReading
from drivers.errors import BusClosed, BusError

log = structlog.get_logger("lockerd.poll")


@dataclass(slots=True)
class PollStats:
    cycles: int = 0
    overruns: int = 0
    last_cycle_s: float = 0.0
    max_cycle_s: float = 0.0
    readings: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)


class BusPoller:
    def __init__(
        self,
        boards: Sequence[Board[Any]],
        *,
        interval_s: float = 0.5,
        on_reading: Callable[[DoorReading], None],
        on_failure: Callable[[Board[Any], BusError], None] | None = None,
    ) -> None:
        self.boards = tuple(boards)
        self.interval_s = interval_s
        self.stats = PollStats()
        self._on_reading = on_reading
        self._on_failure = on_failure
        self._prepared: set[str] = set()
        self.cycle_done = asyncio.Event()

    async def poll_once(self) -> None:
        """Read every board once, in order."""
        for board in self.boards:
            try:
                if board.key not in self._prepared:
                    await board.prepare()
                    self._prepared.add(board.key)
                reading = await board.read()
            except BusClosed:
                raise
            except BusError as exc:
                self._prepared.discard(board.key)
                self.stats.failures[board.key] = self.stats.failures.get(board.key, 0) + 1
                if self._on_failure is not None:
                    self._on_failure(board, exc)
                continue
            self.stats.readings[board.key] = self.stats.readings.get(board.key, 0) + 1
            self._on_reading(reading)

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
