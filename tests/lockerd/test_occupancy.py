"""Occupancy sensors (Kerong CU16 infrared) reconcile what the store believes, over a
real pty with the simulator; and reservations made and cancelled through the service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lockerd.demo.ports import simulators
from lockerd.hub import domain as d
from lockerd.simulator.boards import SimCu16
from tests.support.hubs import BUS, HubView, open_sim_hub, sim_hub_config, socket_dir
from tests.support.waiting import eventually

LABELS = ["D01", "D02", "D03"]


@dataclass
class Cu16Hub(HubView):
    @property
    def board(self) -> SimCu16:
        b = simulators(self.hub)[BUS].board(0)
        assert isinstance(b, SimCu16)
        return b

    def content(self, label: str) -> d.CompartmentState:
        return self.state(label)

    def parcel_for(self, pid: str) -> d.Parcel:
        return d.Parcel(pid, d.Kind.DELIVERY, d.Size.M, deposit_until=2e9, collect_window_s=3600)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Cu16Hub]:
    """Three doors of size M on a Kerong CU16 with occupancy sensors; the wall clock."""
    async with contextlib.AsyncExitStack() as stack:
        cfg = sim_hub_config(
            tmp_path,
            [(label, d.Size.M) for label in LABELS],
            board={"kind": "kerong-cu16", "address": 0, "channels": 3},
            sockets=socket_dir(stack, tmp_path),
            timers={"open_confirm_s": 1.0, "poll_interval_s": 0.01, "debounce_reads": 2},
        )
        yield Cu16Hub(await open_sim_hub(stack, cfg))


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
