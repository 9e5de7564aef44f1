"""The door monitor: debouncing readings into door changes, and telling the service.

A reading is every channel's raw door level from one board transaction (the bus
poller, drivers/poll.py). A door *changes* only after ``debounce_reads`` equal
readings in a row that differ from its stable state (a slammed door bounces for a
read or two). A door that changes too often in a short window is *flapping*: a
loose sensor cable or a failing switch; it is reported as a sensor fault once,
and its changes keep being reported (a broken sensor must never block an open).
Only changes nobody explains count towards flapping: a door the hub opened (an
open under way), or one open for someone whose flow its shutting ends, moves as
expected (the service says which: :meth:`DoorSink.door_move_expected`), however
often a technician opens and shuts it.

:class:`Debouncer` is the pure core (time is passed in). :class:`DoorMonitor` runs the
bus pollers, feeds it, and tells the service (:class:`DoorSink`, which
:class:`lockerd.hub.service.HubService` is) what changed, which boards went offline and
which sensors flap.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from lockerd.drivers.boards import Board, DoorReading
from lockerd.drivers.errors import DriverError
from lockerd.drivers.poll import BusPoller
from lockerd.hub.domain import Event

log = structlog.get_logger(__name__)


class DoorSink(Protocol):
    """What the monitor tells (the service)."""

    def label_of(self, board_key: str, channel: int) -> str | None: ...

    def door_move_expected(self, label: str) -> bool:
        """Whether a change of this door is one the hub explains (it pulsed the door,
        or the door is open for someone): never counted as flapping."""
        ...

    async def door_changed(
        self, label: str, is_open: bool, occupied: bool | None = None
    ) -> None: ...

    async def occupancy_seen(self, label: str, occupied: bool) -> None: ...

    async def hardware_event(self, event: Event) -> None: ...


@dataclass(frozen=True, slots=True)
class _BoardOffline:
    board: str
    error: str


@dataclass(frozen=True, slots=True)
class DoorChange:
    board: str
    channel: int  # from 1
    is_open: bool
    initial: bool = False  # the first stable reading after start (not a change on site)


@dataclass(frozen=True, slots=True)
class SensorFault:
    board: str
    channel: int
    changes: int
    window_s: float


@dataclass(slots=True)
class _Door:
    stable: bool | None = None
    candidate: bool | None = None
    count: int = 0
    changes: deque[float] = field(default_factory=deque)
    flapping: bool = False


class Debouncer:
    """Raw readings in, door changes and sensor faults out (pure: time is passed in)."""

    def __init__(
        self, debounce_reads: int = 2, *, flap_changes: int = 8, flap_window_s: float = 30.0
    ) -> None:
        if debounce_reads < 1:
            raise ValueError("debounce_reads must be at least 1")
        self.debounce_reads = debounce_reads
        self.flap_changes = flap_changes
        self.flap_window_s = flap_window_s
        self._doors: dict[tuple[str, int], _Door] = {}

    def feed(
        self,
        reading: DoorReading,
        now: float,
        expected: Callable[[int], bool] | None = None,
    ) -> tuple[list[DoorChange], list[SensorFault]]:
        """Changes (and newly flapping sensors) that ``reading`` settles. ``expected``:
        whether a change of a channel (asked only when one settles) is one the hub
        explains; such a change is reported, and never counted towards flapping."""
        changes: list[DoorChange] = []
        faults: list[SensorFault] = []
        for index, level in enumerate(reading.doors_open):
            channel = index + 1
            door = self._doors.setdefault((reading.board, channel), _Door())
            if door.stable is None:
                door.stable = level
                changes.append(DoorChange(reading.board, channel, level, initial=True))
                continue
            if level == door.stable:
                door.candidate, door.count = None, 0
                continue
            if level == door.candidate:
                door.count += 1
            else:
                door.candidate, door.count = level, 1
            if door.count < self.debounce_reads:
                continue
            door.stable, door.candidate, door.count = level, None, 0
            changes.append(DoorChange(reading.board, channel, level))
            if expected is not None and expected(channel):
                continue
            fault = self._flap(door, reading.board, channel, now)
            if fault is not None:
                faults.append(fault)
        return changes, faults

    def _flap(self, door: _Door, board: str, channel: int, now: float) -> SensorFault | None:
        door.changes.append(now)
        while door.changes and door.changes[0] < now - self.flap_window_s:
            door.changes.popleft()
        if len(door.changes) >= self.flap_changes:
            if not door.flapping:
                door.flapping = True
                return SensorFault(board, channel, len(door.changes), self.flap_window_s)
        elif len(door.changes) <= self.flap_changes // 2:
            door.flapping = False
        return None

    def forget(self, board: str) -> None:
        """A board went offline: its doors start afresh when it is back (their first
        reading is 'initial' again, so a change while it was away is not lost: the
        service compares it with what the store believes)."""
        for key in [k for k in self._doors if k[0] == board]:
            del self._doors[key]

    def is_open(self, board: str, channel: int) -> bool | None:
        door = self._doors.get((board, channel))
        return None if door is None else door.stable


class Occupancy:
    """Occupancy sensors debounced like doors: a new steady value (the first one too)
    is reported once; the service compares it with the store."""

    def __init__(self, debounce_reads: int = 2) -> None:
        self.debounce_reads = debounce_reads
        self._seen: dict[tuple[str, int], _Door] = {}

    def feed(self, reading: DoorReading) -> list[tuple[int, bool]]:
        settled: list[tuple[int, bool]] = []
        for index, level in enumerate(reading.occupied or ()):
            seen = self._seen.setdefault((reading.board, index + 1), _Door())
            if level == seen.candidate:
                seen.count += 1
            else:
                seen.candidate, seen.count = level, 1
            if seen.count >= self.debounce_reads and seen.stable != level:
                seen.stable = level
                settled.append((index + 1, level))
        return settled

    def forget(self, board: str) -> None:
        for key in [k for k in self._seen if k[0] == board]:
            del self._seen[key]


class DoorMonitor:
    """Polls every board of every bus (one :class:`BusPoller` per bus), debounces, and
    tells the service what changed; also sensor faults and boards going offline."""

    def __init__(
        self,
        service: DoorSink,
        pollers: list[BusPoller],
        *,
        debounce_reads: int = 2,
    ) -> None:
        self.service = service
        self.pollers = pollers
        self.debouncer = Debouncer(debounce_reads)
        self.occupancy = Occupancy(debounce_reads)
        self._queue: asyncio.Queue[DoorReading | _BoardOffline] = asyncio.Queue()
        self._offline: set[str] = set()
        for poller in pollers:
            poller.set_consumers(self._queue.put_nowait, self._failed)

    def _failed(self, board: Board[Any], exc: DriverError) -> None:
        if not board.bus.health_of(board.key).online and board.key not in self._offline:
            self._offline.add(board.key)
            self.debouncer.forget(board.key)  # its doors start afresh when it is back
            self.occupancy.forget(board.key)
            # the bus logged the error once, with its hint; this only says what it means here
            log.info("board_doors_unwatched", board=board.key)
            self._queue.put_nowait(_BoardOffline(board.key, str(exc)))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for i, poller in enumerate(self.pollers):
                tg.create_task(poller.run(), name=f"poll {i}")
            tg.create_task(self._consume(), name="door monitor")

    def _expected(self, board: str, channel: int) -> bool:
        label = self.service.label_of(board, channel)
        return label is not None and self.service.door_move_expected(label)

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            reading = await self._queue.get()
            if isinstance(reading, _BoardOffline):
                await self.service.hardware_event(
                    Event("board_offline", {"board": reading.board, "error": reading.error})
                )
                continue
            if reading.board in self._offline:
                self._offline.discard(reading.board)
                log.info("board_doors_watched_again", board=reading.board)
                await self.service.hardware_event(Event("board_online", {"board": reading.board}))
            changes, faults = self.debouncer.feed(
                reading, loop.time(), functools.partial(self._expected, reading.board)
            )
            for fault in faults:
                log.error(
                    "sensor_fault",
                    board=fault.board,
                    channel=fault.channel,
                    changes=fault.changes,
                    window_s=fault.window_s,
                    hint="a door sensor changes too often: check its cable and switch",
                )
                label = self.service.label_of(fault.board, fault.channel)
                await self.service.hardware_event(
                    Event(
                        "sensor_fault",
                        {
                            "board": fault.board,
                            "channel": fault.channel,
                            "compartment": label,
                            "changes": fault.changes,
                        },
                    )
                )
            for change in changes:
                label = self.service.label_of(change.board, change.channel)
                if label is None:
                    continue
                occupied = None
                if reading.occupied is not None:
                    occupied = reading.occupied[change.channel - 1]
                # initial readings too: the service compares them with the store
                await self.service.door_changed(label, change.is_open, occupied)
            for channel, occupied in self.occupancy.feed(reading):
                label = self.service.label_of(reading.board, channel)
                if label is not None:
                    await self.service.occupancy_seen(label, occupied)
