"""Debouncing door readings: bounces are not changes, flapping sensors are faults."""

from __future__ import annotations

import asyncio

from lockerd.drivers.boards import DoorReading
from lockerd.drivers.settings import ModbusRelaySettings
from lockerd.hub.domain import Event
from lockerd.hub.monitor import Debouncer, DoorChange, DoorMonitor
from lockerd.simulator.boards import SimModbusRelay, board_for
from tests.support.waiting import eventually


def reading(*doors: bool, board: str = "kerong-cu48@0") -> DoorReading:
    return DoorReading(board, tuple(doors))


def feed_all(deb: Debouncer, levels: list[bool], start: float = 0.0) -> list[DoorChange]:
    out: list[DoorChange] = []
    for i, level in enumerate(levels):
        changes, _ = deb.feed(reading(level), start + i * 0.5)
        out += changes
    return out


def test_the_first_reading_is_the_initial_state() -> None:
    changes, _ = Debouncer(2).feed(reading(False, True), 0.0)
    assert [(c.channel, c.is_open, c.initial) for c in changes] == [
        (1, False, True),
        (2, True, True),
    ]


def test_a_change_counts_after_two_equal_readings() -> None:
    changes = feed_all(Debouncer(2), [False, True, True, True])
    assert [(c.is_open, c.initial) for c in changes] == [(False, True), (True, False)]


def test_a_bounce_is_not_a_change() -> None:
    changes = feed_all(Debouncer(2), [False, True, False, False, True, False])
    assert [c.is_open for c in changes if not c.initial] == []


def test_debounce_of_one_reports_at_once() -> None:
    changes = feed_all(Debouncer(1), [False, True, False])
    assert [c.is_open for c in changes if not c.initial] == [True, False]


def test_a_flapping_sensor_is_a_fault_once_and_its_changes_still_count() -> None:
    deb = Debouncer(1, flap_changes=4, flap_window_s=10)
    faults = []
    changes = []
    for i, level in enumerate([False, True, False, True, False, True, False]):
        c, f = deb.feed(reading(level), i * 0.5)
        changes += c
        faults += f
    assert len(faults) == 1
    assert faults[0].changes == 4
    assert len([c for c in changes if not c.initial]) == 6


def test_changes_the_hub_expects_never_count_as_flapping() -> None:
    """Issue 12: a door a technician opens and shuts again and again is not a fault."""
    deb = Debouncer(1, flap_changes=4, flap_window_s=10)
    asked: list[int] = []

    def expected(channel: int) -> bool:
        asked.append(channel)
        return channel == 1

    faults = []
    changes = []
    for i, level in enumerate([False, True, False, True, False, True, False, True, False]):
        c, f = deb.feed(reading(level, level), i * 0.5, expected)
        changes += c
        faults += f
    assert [f.channel for f in faults] == [2]  # the door nobody explains
    assert len([c for c in changes if not c.initial and c.channel == 1]) == 8  # all reported
    assert asked.count(1) == 8  # asked once per change, never per reading


def test_a_board_back_from_offline_starts_afresh() -> None:
    deb = Debouncer(2)
    feed_all(deb, [False, False])
    deb.forget("kerong-cu48@0")
    assert deb.is_open("kerong-cu48@0", 1) is None
    changes, _ = deb.feed(reading(True), 10.0)
    assert changes == [DoorChange("kerong-cu48@0", 1, True, initial=True)]


class _Sink:
    """The monitor's consumer, recording what it is told (the service's interface)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.doors: list[tuple[str, bool]] = []
        self.occupied: list[tuple[str, bool]] = []
        self.expected: set[str] = set()  # doors the "service" expects to move

    def label_of(self, board_key: str, channel: int) -> str | None:
        return f"A{channel:02d}"

    def door_move_expected(self, label: str) -> bool:
        return label in self.expected

    async def door_changed(self, label: str, is_open: bool, occupied: bool | None = None) -> None:
        self.doors.append((label, is_open))

    async def occupancy_seen(self, label: str, occupied: bool) -> None:
        self.occupied.append((label, occupied))

    async def hardware_event(self, event: Event) -> None:
        self.events.append(event)


async def test_a_flapping_sensor_reaches_the_service_as_an_event() -> None:
    sink = _Sink()
    monitor = DoorMonitor(sink, [], debounce_reads=1)
    monitor.debouncer.flap_changes = 4
    for i in range(8):
        monitor._queue.put_nowait(reading(i % 2 == 1))
    task = asyncio.create_task(monitor._consume())
    await eventually(lambda: len(sink.doors) == 8, what="every reading consumed")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    (fault,) = sink.events
    assert fault.type == "sensor_fault"
    assert fault.data["compartment"] == "A01"


async def test_the_monitor_asks_the_service_which_doors_it_expects_to_move() -> None:
    sink = _Sink()
    sink.expected.add("A01")  # e.g. a technician opening and shutting it
    monitor = DoorMonitor(sink, [], debounce_reads=1)
    monitor.debouncer.flap_changes = 4
    for i in range(8):
        monitor._queue.put_nowait(reading(i % 2 == 1))
    task = asyncio.create_task(monitor._consume())
    await eventually(lambda: len(sink.doors) == 8, what="every reading consumed")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert sink.events == []


def test_the_simulated_board_follows_the_configured_register_map() -> None:
    board = board_for(ModbusRelaySettings(address=3, channels=4, coil_base=16, input_base=32))
    assert isinstance(board, SimModbusRelay)
    assert (board.address, board.channels, board.coil_base, board.input_base) == (3, 4, 16, 32)
