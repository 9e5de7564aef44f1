"""The service end to end on the simulator: real pty, real bus, real SQLite file; the hub
built by the one wiring, open_hub (tests.support.hubs)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from lockerd.hub import domain as d
from lockerd.hub.codes import CodeHasher
from lockerd.hub.store import Store
from tests.support.hubs import KEY, SimHub, make_hub
from tests.support.waiting import eventually


async def test_carrier_deposit_then_resident_pickup(hub: SimHub) -> None:
    hub.reserve("P1", d.Size.M, "11112222", "33334444")
    out = await hub.service.enter_code("1111 2222", "keypad:1")
    assert out.status == "opened", out
    assert out.compartment == "A02"  # the smallest free M
    hub.board.close_door(2)  # the carrier puts the parcel in and shuts the door
    await eventually(lambda: hub.parcel("P1") is d.ParcelState.STORED, what="deposit confirmed")
    assert hub.state("A02") is d.CompartmentState.OCCUPIED
    again = await hub.service.enter_code("11112222", "keypad:1")
    assert again.status == "refused"  # the deposit code is spent
    out = await hub.service.enter_code("33334444", "keypad:1")
    assert out.status == "opened"
    hub.board.close_door(2)
    await eventually(lambda: hub.parcel("P1") is d.ParcelState.COLLECTED, what="collected")
    assert hub.state("A02") is d.CompartmentState.FREE
    assert {"deposited", "collected", "door_opened", "door_shut"} <= set(hub.events())
    assert hub.board.unlocks_of(2) == 2  # one pulse per visit, never more


async def test_a_jammed_lock_is_reported_and_another_door_is_offered(hub: SimHub) -> None:
    hub.reserve("P1", d.Size.M, "11112222", "33334444")
    hub.board.faults.jammed.add(2)
    out = await hub.service.enter_code("11112222", "keypad:1")
    assert out.status == "jammed"
    assert hub.state("A02") is d.CompartmentState.OUT_OF_SERVICE
    assert hub.parcel("P1") is d.ParcelState.RESERVED
    assert "door_jammed" in hub.events()
    retry = await hub.service.enter_code("11112222", "keypad:1")
    assert retry.status == "opened"
    assert retry.compartment == "A03"


async def test_wrong_codes_are_refused_alike_then_throttled(hub: SimHub) -> None:
    first = await hub.service.enter_code("00000000", "keypad:1")
    second = await hub.service.enter_code("99999999", "keypad:1")
    assert first.status == second.status == "refused"
    assert first.message == second.message
    blocked = await hub.service.enter_code("12345679", "keypad:1")  # free_attempts = 2
    assert blocked.status == "wait"
    assert blocked.wait_s > 0
    assert (await hub.service.enter_code("12345679", "keypad:2")).status == "refused"


async def test_a_bus_failure_changes_nothing(hub: SimHub) -> None:
    hub.reserve("P1", d.Size.M, "11112222", "33334444")
    hub.sim.vanish()
    await eventually(lambda: not hub.bus.is_open, what="port lost")
    out = await hub.service.enter_code("11112222", "keypad:1")
    assert out.status == "failed"
    assert hub.parcel("P1") is d.ParcelState.RESERVED
    assert hub.state("A02") is d.CompartmentState.FREE
    assert hub.store.open_intents() == []


async def test_a_forced_door_needs_a_look(hub: SimHub) -> None:
    hub.board.open_door(4)
    await eventually(lambda: "forced_open" in hub.events(), what="forced open seen")
    hub.board.close_door(4)

    def shut() -> bool:
        comp = hub.store.compartment("A04")
        return comp is not None and not comp.door_open

    await eventually(shut, what="the door seen shut")
    assert hub.state("A04") is d.CompartmentState.ATTENTION  # neither empty nor full
    out = await hub.service.inspect("A04", False, actor="tech:ana")
    assert out.status == "ok"
    assert hub.state("A04") is d.CompartmentState.FREE
    (alarm,) = await hub.service.alarms()
    assert (alarm["type"], alarm["target"]) == ("forced_open", "A04")
    assert (await hub.service.ack(alarm["id"], actor="tech:ana")).status == "ok"
    assert await hub.service.alarms() == []


async def test_a_technician_open_needs_a_reason_and_is_audited(hub: SimHub) -> None:
    refused = await hub.service.open_compartment("A01", actor="tech:ana", reason=" ")
    assert refused.status == "refused"
    assert hub.board.unlocks_of(1) == 0
    out = await hub.service.open_compartment("A01", actor="tech:ana", reason="cleaning")
    assert out.status == "opened"
    audit = hub.store.audit(50)
    assert any(a["actor"] == "tech:ana" and a["action"] == "open" for a in audit)


async def test_a_restart_mid_open_never_pulses_again(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        hub = await make_hub(stack, tmp_path, start_monitor=False)
        hub.reserve("P1", d.Size.M, "11112222", "33334444")
        # the first run decided and committed the intent, then died before the pulse
        found = hub.store.code(hub.hasher.hash("11112222"))
        assert found is not None
        comp = hub.store.compartment("A02")
        assert comp is not None
        change = d.start(found[0], d.Purpose.DEPOSIT, comp, hub.now[0])
        hub.store.apply(
            change,
            now=hub.now[0],
            actor="keypad:1",
            action="enter_code",
            target="A02",
            intent=("A02", d.Purpose.DEPOSIT, "P1"),
        )
        settled = await hub.service.reconcile({"A02": False})
        assert settled == ["A02:interrupted"]
        assert hub.board.unlocks_of(2) == 0  # never pulsed blindly
        assert hub.state("A02") is d.CompartmentState.ATTENTION
        assert hub.parcel("P1") is d.ParcelState.RESERVED  # the carrier's code works again
        assert hub.store.open_intents() == []


def test_no_code_reaches_the_store_in_plain_text(tmp_path: Path) -> None:
    store = Store(tmp_path / "hub.db")
    hasher = CodeHasher(KEY)
    store.add_parcel(
        d.Parcel("P1", d.Kind.DELIVERY, d.Size.S),
        {d.Purpose.DEPOSIT: hasher.hash("55556666")},
        now=0,
        actor="cloud",
    )
    store.close()
    for f in tmp_path.iterdir():
        assert b"55556666" not in f.read_bytes()


async def test_a_dead_board_and_its_return_reach_the_outbox(hub: SimHub) -> None:
    hub.board.faults.dead = True
    await eventually(lambda: "board_offline" in hub.events(), within=10, what="board offline")
    hub.board.faults.clear()
    await eventually(lambda: "board_online" in hub.events(), within=10, what="board back")
    assert hub.events().count("board_offline") == 1


async def test_an_expired_parcel_is_emptied_by_a_technician(hub: SimHub) -> None:
    hub.reserve("P1", d.Size.M, "11112222", "33334444")
    assert (await hub.service.enter_code("11112222", "keypad:1")).status == "opened"
    hub.board.close_door(2)
    await eventually(lambda: hub.parcel("P1") is d.ParcelState.STORED, what="stored")
    hub.now[0] += 3601  # past the pickup window
    await hub.service.tick()
    assert hub.parcel("P1") is d.ParcelState.EXPIRED
    assert (await hub.service.enter_code("33334444", "keypad:1")).status == "refused"
    (out,) = await hub.service.empty_expired(actor="tech:ana")
    assert out.status == "opened"
    assert out.compartment == "A02"
    hub.board.close_door(2)
    await eventually(lambda: hub.parcel("P1") is d.ParcelState.RECALLED, what="emptied")
    assert hub.state("A02") is d.CompartmentState.FREE
    assert {"parcel_expired", "recalled"} <= set(hub.events())


async def test_a_door_left_open_raises_one_alarm(hub: SimHub) -> None:
    hub.reserve("P1", d.Size.M, "11112222", "33334444")
    assert (await hub.service.enter_code("11112222", "keypad:1")).status == "opened"
    hub.now[0] += 121  # the carrier walked away with the door open
    await hub.service.tick()
    await hub.service.tick()
    assert hub.events().count("door_left_open") == 1
    assert [a["type"] for a in await hub.service.alarms()] == ["door_left_open"]
    assert hub.parcel("P1") is d.ParcelState.DEPOSITING  # nothing assumed about the parcel
