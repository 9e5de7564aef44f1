"""Occupancy sensors (Kerong CU16 infrared) reconcile what the store believes, over a
real pty with the simulator; and reservations made and cancelled through the service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.boards import make_board
from drivers.bus import Bus
from drivers.poll import BusPoller
from drivers.settings import BusSettings, Cu16Settings
from lockerd import domain as d
from lockerd.codes import CodeHasher
from lockerd.monitor import DoorMonitor
from lockerd.service import Door, HubService
from lockerd.store import Store
from simulator.boards import SimCu16
from simulator.line import Simulator
from tests.conftest import FAST_BUS
from tests.helpers import eventually

KEY = bytes(range(32))
LABELS = ["D01", "D02", "D03"]


@dataclass
class Cu16Hub:
    service: HubService
    store: Store
    board: SimCu16
    hasher: CodeHasher

    def content(self, label: str) -> d.CompartmentState:
        comp = self.store.compartment(label)
        assert comp is not None
        return comp.state

    def parcel(self, pid: str) -> d.ParcelState:
        p = self.store.parcel(pid)
        assert p is not None
        return p.state

    def events(self) -> list[str]:
        return [r.type for r in self.store.outbox(limit=10_000)]

    def parcel_for(self, pid: str) -> d.Parcel:
        return d.Parcel(pid, d.Kind.DELIVERY, d.Size.M, deposit_until=2e9, collect_window_s=3600)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Cu16Hub]:
    async with contextlib.AsyncExitStack() as stack:
        sim_board = SimCu16(0, 3, spring_delay_s=0.01)
        sim = Simulator([sim_board])
        await stack.enter_async_context(sim)
        bus = Bus(BusSettings(port=sim.url, **FAST_BUS))
        await stack.enter_async_context(bus)
        assert await bus.wait_open(5)
        board = make_board(bus, Cu16Settings(address=0, channels=3))
        store = Store(tmp_path / "hub.db")
        stack.callback(store.close)
        store.sync_compartments(d.Compartment(label, d.Size.M) for label in LABELS)
        hasher = CodeHasher(KEY)
        service = HubService(
            store,
            hasher,
            [Door(label, board, i + 1) for i, label in enumerate(LABELS)],
            open_confirm_s=1.0,
        )
        stack.callback(service.close)
        poller = BusPoller([board], interval_s=0.01, on_reading=lambda r: None)
        monitor = DoorMonitor(service, [poller], debounce_reads=2)
        task = asyncio.create_task(monitor.run())
        try:
            yield Cu16Hub(service, store, sim_board, hasher)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def reserve(hub: Cu16Hub, pid: str, deposit: str, pickup: str) -> None:
    out = await hub.service.reserve(
        hub.parcel_for(pid),
        {d.Purpose.DEPOSIT: hub.hasher.hash(deposit), d.Purpose.COLLECT: hub.hasher.hash(pickup)},
        actor="cloud",
    )
    assert out.status == "ok", out


async def test_something_in_an_empty_compartment_takes_it_out_of_allocation(
    hub: Cu16Hub,
) -> None:
    hub.board.put_parcel(1)  # left behind, or put in through a door nobody saw
    await eventually(lambda: "occupancy_mismatch" in hub.events(), what="mismatch alarm")
    assert hub.content("D01") is d.CompartmentState.ATTENTION
    await reserve(hub, "P1", "11112222", "33334444")
    out = await hub.service.enter_code("11112222", "keypad:1")
    assert out.status == "opened"
    assert out.compartment == "D02"  # never the one with something in it
    alarms = await hub.service.alarms()
    assert [(a["type"], a["target"]) for a in alarms] == [("occupancy_mismatch", "D01")]
    hub.board.put_parcel(1, False)  # a technician takes it out: the sensor settles it
    await eventually(
        lambda: hub.content("D01") is d.CompartmentState.FREE, what="settled by the sensor"
    )


async def test_a_deposit_is_confirmed_by_the_sensor_and_a_vanished_parcel_alarms(
    hub: Cu16Hub,
) -> None:
    await reserve(hub, "P1", "11112222", "33334444")
    out = await hub.service.enter_code("11112222", "keypad:1")
    assert out.status == "opened"
    assert out.compartment == "D01"
    hub.board.put_parcel(1)
    hub.board.close_door(1)
    await eventually(lambda: hub.parcel("P1") is d.ParcelState.STORED, what="stored")
    hub.board.put_parcel(1, False)  # the sensor no longer sees it, the door never opened
    await eventually(lambda: "occupancy_mismatch" in hub.events(), what="mismatch alarm")
    # never wished away: the parcel stays recorded, its pickup code still works
    assert hub.parcel("P1") is d.ParcelState.STORED
    assert hub.content("D01") is d.CompartmentState.OCCUPIED


async def test_a_carrier_who_shuts_an_empty_door_leaves_the_reservation_standing(
    hub: Cu16Hub,
) -> None:
    await reserve(hub, "P1", "11112222", "33334444")
    out = await hub.service.enter_code("11112222", "keypad:1")
    assert out.status == "opened"
    hub.board.close_door(1)  # nothing put in
    await eventually(lambda: "deposit_abandoned" in hub.events(), what="abandoned")
    assert hub.parcel("P1") is d.ParcelState.RESERVED
    assert hub.content("D01") is d.CompartmentState.FREE
    again = await hub.service.enter_code("11112222", "keypad:1")
    assert again.status == "opened"  # the code is still good


async def test_a_cancelled_reservation_opens_nothing(hub: Cu16Hub) -> None:
    await reserve(hub, "P1", "11112222", "33334444")
    assert (await hub.service.cancel("P1", actor="cloud")).status == "ok"
    assert (await hub.service.cancel("P1", actor="cloud")).status == "ok"  # idempotent
    assert hub.parcel("P1") is d.ParcelState.CANCELLED
    out = await hub.service.enter_code("11112222", "keypad:1")
    assert out.status == "refused"
    assert hub.board.unlocks_of(1) == hub.board.unlocks_of(2) == 0
    assert hub.events().count("parcel_cancelled") == 1


async def test_a_stored_parcel_cannot_be_cancelled(hub: Cu16Hub) -> None:
    await reserve(hub, "P1", "11112222", "33334444")
    assert (await hub.service.enter_code("11112222", "keypad:1")).status == "opened"
    hub.board.put_parcel(1)
    hub.board.close_door(1)
    await eventually(lambda: hub.parcel("P1") is d.ParcelState.STORED, what="stored")
    out = await hub.service.cancel("P1", actor="cloud")
    assert out.status == "refused"
    assert "too late" in out.message
    assert hub.parcel("P1") is d.ParcelState.STORED
    assert (await hub.service.cancel("nope", actor="cloud")).status == "refused"


async def test_a_reservation_is_refused_for_a_taken_id_or_code(hub: Cu16Hub) -> None:
    await reserve(hub, "P1", "11112222", "33334444")
    same_id = await hub.service.reserve(
        hub.parcel_for("P1"), {d.Purpose.DEPOSIT: hub.hasher.hash("55556666")}, actor="cloud"
    )
    assert same_id.status == "refused"
    same_code = await hub.service.reserve(
        hub.parcel_for("P2"), {d.Purpose.DEPOSIT: hub.hasher.hash("11112222")}, actor="cloud"
    )
    assert same_code.status == "refused"
    assert hub.store.parcel("P2") is None  # nothing half-stored
    assert hub.events().count("parcel_reserved") == 1
