"""The local history (issue 12): every event the hub recorded, kept at the hub as long as
its audit, whether the cloud took it or not; the audit trail read back; every alarm
acknowledged at once; a board back online clears its own alarm; ``codes.bulk`` tells
the cloud what ``parcel.reserve`` does. Real SQLite files, and the real service on
simulated boards (tests.support.hubs)."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path

import pytest

import lockerd.hub.store as store_module
from lockerd.cloud import contract as c
from lockerd.config import Retention
from lockerd.hub import domain as d
from lockerd.hub.store import AuditRow, HistoryRow, Store
from tests.support.hubs import SimHub

NOW = 10_000_000.0
DAY = 86_400.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "hub.db")
    s.sync_compartments([d.Compartment("A01", d.Size.S), d.Compartment("A02", d.Size.M)])
    return s


def record(
    store: Store,
    *events: d.Event,
    at: float = NOW,
    actor: str = "monitor",
    target: str = "A01",
) -> None:
    store.apply(d.Change(events=events), now=at, actor=actor, action="door", target=target)


def parcel(pid: str, size: d.Size = d.Size.M) -> d.Parcel:
    return d.Parcel(pid, d.Kind.DELIVERY, size, deposit_from=NOW - 10, deposit_until=NOW + DAY)


# ======================================================================================
# the history
# ======================================================================================


def test_the_history_outlives_the_cloud_taking_the_events(store: Store) -> None:
    """Issue 12: `events` read the outbox, which is empty on a connected hub."""
    record(store, d.Event("door_opened", {"compartment": "A01"}), at=NOW)
    record(store, d.Event("door_shut", {"compartment": "A01"}), at=NOW + 1, actor="keypad:1")
    store.delete_outbox([r.seq for r in store.outbox(publishing=True)])  # the cloud took them
    assert store.outbox() == []
    rows = store.history(limit=10)
    assert [(r.type, r.at, r.actor, r.target) for r in rows] == [
        ("door_shut", NOW + 1, "keypad:1", "A01"),  # newest first
        ("door_opened", NOW, "monitor", "A01"),
    ]
    assert all(isinstance(r, HistoryRow) for r in rows)
    assert rows[0].data == {"compartment": "A01"}
    assert rows[0].seq > rows[1].seq


def test_the_history_keeps_what_the_cloud_never_gets(tmp_path: Path) -> None:
    """Past the quota, telemetry is not queued for the cloud; the history has it all,
    and the quota's own alarm; a service flag flipped twice before the cloud took the
    first flip is one outbox event but two in the history."""
    store = Store(tmp_path / "hub.db")
    store.outbox_quota = 1_000  # bytes
    door = d.Event("door_opened", {"compartment": "A01"})
    for _ in range(20):
        record(store, door)
    queued = [r.type for r in store.outbox(limit=1000)]
    assert queued.count("door_opened") < 20
    kept = [r.type for r in store.history(limit=1000)]
    assert kept.count("door_opened") == 20
    assert kept.count("outbox_quota_reached") == 1
    store.outbox_quota = None
    store.sync_compartments([d.Compartment("A01", d.Size.S)])
    for in_service in (False, True):
        flip = d.Event(
            "compartment_service", {"compartment": "A01", "in_service": in_service, "by": "t"}
        )
        record(store, flip, actor="tech:ana")
    assert [r.type for r in store.outbox(limit=1000)].count("compartment_service") == 1
    flips = store.history(limit=2, types=["compartment_service"])
    assert [r.data["in_service"] for r in flips] == [True, False]
    assert {r.actor for r in flips} == {"tech:ana"}


def test_the_history_is_read_by_time_by_page_and_by_type(store: Store) -> None:
    for i in range(10):
        record(store, d.Event("door_opened", {"compartment": "A01"}), at=NOW + i)
        record(store, d.Event("forced_open", {"compartment": "A02"}), at=NOW + i, target="A02")
    assert len(store.history(limit=100)) == 20
    assert len(store.history(limit=3)) == 3
    recent = store.history(limit=100, since=NOW + 8)
    assert [r.at for r in recent] == [NOW + 9, NOW + 9, NOW + 8, NOW + 8]
    assert store.history(limit=100, since=NOW + 100) == []
    first = store.history(limit=5)
    page = store.history(limit=5, before_seq=first[-1].seq)
    assert [r.seq for r in page] == [first[-1].seq - i for i in range(1, 6)]
    forced = store.history(limit=100, types=["forced_open"])
    assert len(forced) == 10
    assert {(r.type, r.target) for r in forced} == {("forced_open", "A02")}
    assert store.history(limit=100, types=[]) == []
    both = store.history(limit=100, since=NOW + 5, types=["door_opened"], before_seq=first[0].seq)
    assert [r.at for r in both] == [NOW + 9, NOW + 8, NOW + 7, NOW + 6, NOW + 5]


def test_a_rolled_back_change_leaves_no_history(store: Store) -> None:
    def fails() -> None:
        with store.transaction() as db:
            event = d.Event("door_opened", {"compartment": "A01"})
            store._record(db, [event], now=NOW, actor="t", action="t", target="A01")
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        fails()
    assert store.history(limit=10) == []


async def test_the_history_is_pruned_with_the_audit(hub: SimHub) -> None:
    store = hub.store
    record(store, d.Event("board_online", {"board": "A:0"}), at=NOW - 400 * DAY, target="A:0")
    record(store, d.Event("board_online", {"board": "A:0"}), at=NOW, target="A:0")
    hub.service.clock = lambda: NOW
    pruned = await hub.service.prune(Retention(audit_days=365))
    assert pruned["history"] == 1
    assert [r.at for r in store.history(limit=10, types=["board_online"])] == [NOW]


def test_an_older_store_keeps_its_waiting_events_as_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = store_module.SCHEMA
    monkeypatch.setattr(store_module, "SCHEMA", current[:7])  # before the history
    Store(tmp_path / "hub.db").close()
    db = sqlite3.connect(tmp_path / "hub.db")
    db.execute(
        "INSERT INTO outbox(seq, id, type, at, data) VALUES "
        '(1, \'e1\', \'deposited\', 5.0, \'{"compartment": "A01", "parcel": "P1"}\'), '
        "(2, 'e2', 'board_online', 6.0, '{\"board\": \"A:0\"}')"
    )
    db.execute("INSERT INTO meta(key, value) VALUES('next_seq', '3')")
    db.commit()
    db.close()
    monkeypatch.setattr(store_module, "SCHEMA", current)
    store = Store(tmp_path / "hub.db")
    assert [(r.type, r.at, r.target) for r in store.history(limit=10)] == [
        ("board_online", 6.0, "A:0"),
        ("deposited", 5.0, "P1"),
    ]
    record(store, d.Event("door_opened", {"compartment": "A01"}), at=7.0)
    assert [r.type for r in store.history(limit=1)] == ["door_opened"]


# ======================================================================================
# the audit trail, acknowledging every alarm, an alarm the hub clears
# ======================================================================================


def test_the_audit_trail_reads_newest_first_and_since_a_time(store: Store) -> None:
    for i in range(5):
        record(store, d.Event("door_opened", {"compartment": "A01"}), at=NOW + i, actor=f"a{i}")
    rows = store.audit_log(limit=3)
    assert all(isinstance(r, AuditRow) for r in rows)
    assert [r.actor for r in rows] == ["a4", "a3", "a2"]
    assert rows[0].detail == {"events": ["door_opened"]}
    assert (rows[0].action, rows[0].target, rows[0].at) == ("door", "A01", NOW + 4)
    assert [r.actor for r in store.audit_log(limit=100, since=NOW + 3)] == ["a4", "a3"]
    assert store.audit_log(limit=100, since=NOW + 99) == []


def test_every_open_alarm_is_acknowledged_at_once_and_audited(store: Store) -> None:
    record(store, d.Event("forced_open", {"compartment": "A01"}))
    record(store, d.Event("door_jammed", {"compartment": "A02"}), target="A02")
    assert len(store.alarms()) == 2
    assert store.ack_all(actor="tech:ana", now=NOW + 1) == 2
    assert store.alarms() == []
    assert {a["acked_by"] for a in store.alarms(open_only=False)} == {"tech:ana"}
    acks = [r for r in store.audit_log(limit=10) if r.action == "ack"]
    assert {(r.actor, r.detail["type"]) for r in acks} == {
        ("tech:ana", "forced_open"),
        ("tech:ana", "door_jammed"),
    }
    assert store.ack_all(actor="tech:ana", now=NOW + 2) == 0


async def test_the_service_acknowledges_every_alarm(hub: SimHub) -> None:
    record(hub.store, d.Event("forced_open", {"compartment": "A01"}))
    out = await hub.service.ack_all(actor="tech:ana")
    assert (out.status, out.message) == ("ok", "1 alarm acknowledged")
    assert await hub.service.alarms() == []
    assert (await hub.service.ack_all(actor="tech:ana")).message == "no open alarm"


def test_a_board_back_online_clears_its_offline_alarm(store: Store) -> None:
    offline = d.Event("board_offline", {"board": "kerong-cu48@0", "error": "no reply"})
    record(store, offline, target="kerong-cu48@0")
    record(store, d.Event("board_offline", {"board": "other@1", "error": "x"}), target="other@1")
    record(store, d.Event("board_online", {"board": "kerong-cu48@0"}), at=NOW + 5)
    assert [(a["type"], a["target"]) for a in store.alarms()] == [("board_offline", "other@1")]
    (cleared,) = [a for a in store.alarms(open_only=False) if a["target"] == "kerong-cu48@0"]
    assert (cleared["acked_by"], cleared["acked"]) == ("lockerd", NOW + 5)
    (line,) = [r for r in store.audit_log(limit=10) if r.action == "ack"]
    assert (line.actor, line.target) == ("lockerd", str(cleared["id"]))
    assert line.detail["cleared_by"] == "board_online"
    record(store, offline, at=NOW + 6)  # offline again: a new alarm
    assert len(store.alarms()) == 2


# ======================================================================================
# codes.bulk and parcel.reserve tell the cloud the same
# ======================================================================================


async def test_codes_bulk_records_one_parcel_reserved_per_parcel_reserved(hub: SimHub) -> None:
    """Issue 12: codes.bulk recorded no event, parcel.reserve one."""
    h = hub.hasher.hash
    one = await hub.service.reserve(
        parcel("P0"), {d.Purpose.DEPOSIT: h("10000000")}, actor="cloud:c0"
    )
    assert one.status == "ok"
    items = [(parcel(f"P{i}"), {d.Purpose.DEPOSIT: h(f"1{i:07d}")}) for i in range(1, 8)]
    items.append((parcel("P0"), {d.Purpose.DEPOSIT: h("20000000")}))  # exists
    items.append((parcel("P9"), {d.Purpose.DEPOSIT: h("10000001")}))  # P1's code
    fate = await hub.service.reserve_many(items, actor="cloud:c1", chunk=3)
    assert sorted(p for p, f in fate.items() if f == "reserved") == [f"P{i}" for i in range(1, 8)]
    assert (fate["P0"], fate["P9"]) == ("exists", "code_conflict")
    reserved = [r for r in hub.store.outbox(limit=1000) if r.type == "parcel_reserved"]
    assert [r.data["parcel"] for r in reserved] == [f"P{i}" for i in range(8)]
    assert [r.seq for r in reserved] == sorted(r.seq for r in reserved)
    assert {r.data["kind"] for r in reserved} == {"delivery"}
    for row in reserved:  # the same event, as the contract describes it
        c.EVENT_DATA["parcel_reserved"].model_validate(row.data)
    assert reserved[0].data.keys() == reserved[1].data.keys()
    history = hub.store.history(limit=100, types=["parcel_reserved"])
    assert [(r.target, r.actor) for r in reversed(history)][:3] == [
        ("P0", "cloud:c0"),
        ("P1", "cloud:c1"),
        ("P2", "cloud:c1"),
    ]


def test_bulk_reservations_are_queued_past_the_quota(tmp_path: Path) -> None:
    """Parcel events are never dropped for the quota; crossing it raises its alarm once."""
    store = Store(tmp_path / "hub.db")
    store.outbox_quota = 2_000  # bytes
    items = [(parcel(f"P{i:04d}"), {d.Purpose.DEPOSIT: f"h{i}"}) for i in range(100)]
    for start in range(0, 100, 25):
        fate = store.add_new_parcels(items[start : start + 25], now=NOW, actor="cloud")
        assert set(fate.values()) == {"reserved"}
    types = [r.type for r in store.outbox(limit=1000)]
    assert types.count("parcel_reserved") == 100
    assert types.count("outbox_quota_reached") == 1
    rows = store.outbox(limit=1000)
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))  # gapless


def test_event_ids_are_unique_uuids_in_time_order(store: Store) -> None:
    """Version 7 (RFC 9562): the outbox's unique index on the id grows at its end."""
    for _ in range(3):
        record(store, *(d.Event("door_opened", {"compartment": "A01"}) for _ in range(200)))
    ids = [r.id for r in store.outbox(limit=1000)]
    assert len(set(ids)) == 600
    parsed = [uuid.UUID(i) for i in ids]
    assert {(u.version, u.variant) for u in parsed} == {(7, uuid.RFC_4122)}
    stamps = [u.int >> 80 for u in parsed]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] / 1000 - time.time()) < 60
