"""What docs/cloud-guide.md says the hub does where a cloud team would otherwise guess:
a reservation past its deposit window ("When `deposit_until` passes": it ends), a command id
used again with another body ("Idempotency"), a reservation with no compartment free
for it and accessible compartments ("Which compartment a parcel gets"). Each test is
the guide's sentences, run against the hub built by the one wiring (tests.support.hubs)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lockerd.cloud.link import CloudLink
from lockerd.config import Cloud, Retention
from lockerd.hub import domain as d
from tests.support.hubs import SIZES, SimHub

DAY = 86_400.0


def _parcel(hub: SimHub, pid: str, size: d.Size, *, accessible: bool = False) -> d.Parcel:
    now = hub.now[0]
    return d.Parcel(
        pid,
        d.Kind.DELIVERY,
        size,
        deposit_from=now - 10,
        deposit_until=now + 3600,
        accessible=accessible,
    )


async def _reserve(hub: SimHub, parcel: d.Parcel, deposit: str, pickup: str) -> None:
    codes = {
        d.Purpose.DEPOSIT: hub.hasher.hash(deposit),
        d.Purpose.COLLECT: hub.hasher.hash(pickup),
    }
    out = await hub.service.reserve(parcel, codes, actor="cloud")
    assert out.status == "ok", out


# ------------------------------------------------------------------ deposit_until


async def test_a_reservation_past_its_deposit_window_ends_once_with_an_event(
    hub: SimHub,
) -> None:
    hub.reserve("P1", d.Size.M, "11112222", "33334444")  # deposit_until: now + 1 day
    deposit = hub.hasher.hash("11112222")
    await hub.service.tick()
    assert hub.parcel("P1") is d.ParcelState.RESERVED  # within its window: nothing
    hub.now[0] += DAY + 1
    await hub.service.tick()
    await hub.service.tick()  # once: the second tick finds nothing to end
    assert hub.events() == ["reservation_expired"]
    assert hub.parcel("P1") is d.ParcelState.CANCELLED
    # its codes are tombstones: never accepted again at this hub
    assert hub.store.code(deposit) is None
    assert hub.store.spent(deposit)
    assert hub.store.spent(hub.hasher.hash("33334444"))
    # the keypad: the same words as a wrong code, counted as one
    out = await hub.service.enter_code("11112222", "keypad:1")
    assert (out.status, out.message) == ("refused", d.terminal_message(d.Refusal.UNKNOWN_CODE))
    assert hub.service.wrong_codes["keypad:1"] == 1
    # a new reservation carrying one of its hashes is refused as a code used before
    again = await hub.service.reserve(
        _parcel(hub, "P2", d.Size.M),
        {d.Purpose.DEPOSIT: deposit, d.Purpose.COLLECT: hub.hasher.hash("55556666")},
        actor="cloud",
    )
    assert again.status == "refused", again
    # its id stays taken while the ended parcel is kept, then it is pruned
    taken = await hub.service.reserve(
        _parcel(hub, "P1", d.Size.M),
        {
            d.Purpose.DEPOSIT: hub.hasher.hash("77778888"),
            d.Purpose.COLLECT: hub.hasher.hash("99990000"),
        },
        actor="cloud",
    )
    assert (taken.status, taken.message) == ("refused", "parcel P1 is already reserved")
    hub.now[0] += 1000 * DAY
    await hub.service.prune(Retention())
    assert hub.store.parcel("P1") is None


async def test_a_deposit_begun_in_its_window_is_not_ended_by_it(hub: SimHub) -> None:
    hub.reserve("P1", d.Size.M, "11112222", "33334444")
    opened = await hub.service.enter_code("11112222", "keypad:1")
    assert opened.status == "opened", opened
    hub.now[0] += DAY + 1  # the carrier is slow to shut the door
    await hub.service.tick()
    assert "reservation_expired" not in hub.events()
    assert hub.parcel("P1") is d.ParcelState.DEPOSITING


# ------------------------------------------------------------------ a command id used again


@dataclass
class _Message:
    payload: bytes
    retain: bool = False
    qos: int = 1
    mid: int = 1


@dataclass
class _Acks:
    acked: list[_Message] = field(default_factory=list)

    def ack(self, message: _Message) -> None:
        self.acked.append(message)


@dataclass
class _Client:
    published: list[dict[str, Any]] = field(default_factory=list)

    async def publish(self, topic: str, payload: str, qos: int = 0) -> None:
        assert topic.endswith("/reply")
        self.published.append(json.loads(payload))


SERVICE_OFF = {"type": "compartment.set_service", "compartment": "A01", "in_service": False}


async def test_an_id_used_again_gets_the_stored_reply_whatever_the_body(
    hub: SimHub, tmp_path: Path
) -> None:
    link = CloudLink(Cloud(url="mqtt://localhost"), "test-hub", hub.service, state_dir=tmp_path)
    client, acks = _Client(), _Acks()
    hub.reserve("P1", d.Size.M, "11112222", "33334444")
    hub.reserve("P2", d.Size.M, "11113333", "33335555")
    at = int(hub.now[0])
    base = {"id": "c-1", "hub": "test-hub", "issued_at": at}

    async def send(body: dict[str, Any], *, retain: bool = False) -> None:
        message = _Message(json.dumps(body).encode(), retain=retain)
        await link.handle(client, acks, message)  # type: ignore[arg-type]
        assert acks.acked[-1] is message  # acknowledged, whatever became of it

    await send({**base, "type": "parcel.cancel", "parcel": "P1"})
    (n, first), *_ = hub.store.replies()
    assert (first["status"], first["duplicate"]) == ("ok", False)
    assert hub.parcel("P1") is d.ParcelState.CANCELLED
    events = hub.events()
    cancel_p2 = {**base, "type": "parcel.cancel", "parcel": "P2"}
    bodies: list[tuple[dict[str, Any], bool]] = [
        (cancel_p2, False),
        ({**base, **SERVICE_OFF}, False),
        ({**cancel_p2, "hub": "another-hub"}, False),
        ({"id": "c-1", "type": "parcel.cancel"}, False),  # malformed
        (cancel_p2, True),  # retained
    ]
    for body, retain in bodies:
        await send(body, retain=retain)
        assert client.published[-1] == {**first, "duplicate": True}  # type parcel.cancel
    assert len(client.published) == 5
    assert hub.events() == events  # nothing done, not even a command_refused
    assert hub.parcel("P2") is d.ParcelState.RESERVED
    assert hub.state("A01") is d.CompartmentState.FREE
    # an id refused at the door is not kept: a new body under it is taken
    await send({**base, "id": "c-2", "hub": "another-hub", "type": "parcel.cancel", "parcel": "P2"})
    assert hub.store.inbox("c-2") is None
    await send({**base, "id": "c-2", "type": "parcel.cancel", "parcel": "P2"})
    assert hub.parcel("P2") is d.ParcelState.CANCELLED
    # once the id is pruned (retention.inbox_days), it is new again
    hub.store.delete_replies([n])
    hub.now[0] += 31 * DAY
    await hub.service.prune(Retention())
    assert hub.store.inbox("c-1") is None
    await send({**base, **SERVICE_OFF})
    assert hub.state("A01") is d.CompartmentState.OUT_OF_SERVICE


# ------------------------------------------------------------------ allocation


async def test_a_reservation_is_taken_with_no_compartment_free_and_the_keypad_says_so(
    hub: SimHub,
) -> None:
    assert (await hub.service.set_service("A04", False, actor="tech")).status == "ok"
    await _reserve(hub, _parcel(hub, "PX", d.Size.XL), "11112222", "33334444")
    assert hub.events() == ["compartment_service", "parcel_reserved"]
    out = await hub.service.enter_code("11112222", "keypad:1")
    assert (out.status, out.message) == ("refused", d.terminal_message(d.Refusal.NO_COMPARTMENT))
    assert out.message == "No free compartment of this size right now. Please try again later."
    assert hub.events() == ["compartment_service", "parcel_reserved"]  # no event
    # counted as a guess all the same (free_attempts = 2 here)
    assert (await hub.service.enter_code("11112222", "keypad:1")).status == "refused"
    assert (await hub.service.enter_code("11112222", "keypad:1")).status == "wait"
    p = hub.store.parcel("PX")
    assert p is not None
    assert (p.state, p.compartment) == (d.ParcelState.RESERVED, None)
    # chosen when the code is entered: a compartment free by then is taken
    await hub.service.set_service("A04", True, actor="tech")
    out = await hub.service.enter_code("11112222", "keypad:2")
    assert (out.status, out.compartment) == ("opened", "A04")


async def test_accessible_compartments_are_kept_for_those_who_need_them(hub: SimHub) -> None:
    # A02 (M) accessible, as `accessible = true` under its [[compartments]] makes it
    hub.store.sync_compartments(
        d.Compartment(label, size, accessible=label == "A02") for label, size in SIZES
    )
    await _reserve(hub, _parcel(hub, "P1", d.Size.M), "11110001", "22220001")
    await _reserve(hub, _parcel(hub, "P2", d.Size.M), "11110002", "22220002")
    await _reserve(hub, _parcel(hub, "P3", d.Size.M, accessible=True), "11110003", "22220003")
    # an ordinary parcel: the ordinary M first, then the accessible M before a larger one
    assert (await hub.service.enter_code("11110001", "keypad:1")).compartment == "A03"
    assert (await hub.service.enter_code("11110002", "keypad:2")).compartment == "A02"
    # an accessible parcel takes accessible compartments only: XL A04 is free, yet
    out = await hub.service.enter_code("11110003", "keypad:3")
    assert (out.status, out.message) == ("refused", d.terminal_message(d.Refusal.NO_COMPARTMENT))


def test_allocation_by_size_fallback_and_accessible() -> None:
    comps = [
        d.Compartment("A01", d.Size.S),
        d.Compartment("A02", d.Size.M, accessible=True),
        d.Compartment("A03", d.Size.L),
    ]

    def pick(size: d.Size, *, accessible: bool = False, fallback: bool = True) -> str | None:
        found = d.allocate(comps, size, accessible=accessible, fallback=fallback)
        return None if found is None else found.label

    assert pick(d.Size.S) == "A01"
    assert pick(d.Size.S, accessible=True) == "A02"  # larger, accessible
    assert pick(d.Size.S, accessible=True, fallback=False) is None
    assert pick(d.Size.M) == "A02"  # the accessible M before the larger L
    assert pick(d.Size.XL) is None
    assert pick(d.Size.M, fallback=False) == "A02"
    assert pick(d.Size.L, accessible=True) is None
    occupied = replace(comps[0], content=d.Content.PARCEL, parcel_id="PX")
    assert d.allocate([occupied, *comps[1:]], d.Size.S, accessible=False, fallback=False) is None
