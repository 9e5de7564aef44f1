"""The store on real SQLite files: atomic changes with their events, a gapless seq,
intents, spent codes, and refusal to touch a damaged file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lockerd.hub.store as store_module
from lockerd.hub import domain as d
from lockerd.hub.store import CodeSpent, Store, StoreConflict, StoreCorrupt, StoreFull

NOW = 50_000.0
COMPS = [d.Compartment("A01", d.Size.S), d.Compartment("A02", d.Size.M, accessible=True)]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "hub.db")
    s.sync_compartments(COMPS)
    return s


def reserve(store: Store, pid: str = "P1", code: str = "h-dep", pickup: str = "h-pick") -> d.Parcel:
    p = d.Parcel(pid, d.Kind.DELIVERY, d.Size.M, deposit_from=NOW - 10, deposit_until=NOW + 999)
    store.add_parcel(
        p,
        {d.Purpose.DEPOSIT: code, d.Purpose.COLLECT: pickup},
        now=NOW,
        actor="cloud",
        events=[d.Event("parcel_reserved", {"parcel": pid})],
    )
    return p


def test_a_new_store_is_wal_with_full_sync_and_the_current_schema(tmp_path: Path) -> None:
    s = Store(tmp_path / "hub.db")
    db = sqlite3.connect(tmp_path / "hub.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(store_module.SCHEMA)
    assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert s.integrity_ok()


def test_a_reservation_and_its_codes_land_together(store: Store) -> None:
    reserve(store)
    found = store.code("h-dep")
    assert found is not None
    assert found[0].id == "P1"
    assert found[1] is d.Purpose.DEPOSIT
    assert [r.type for r in store.outbox()] == ["parcel_reserved"]
    assert store.audit(1)[0]["actor"] == "cloud"


def test_a_changes_audit_line_says_why_beside_its_events(store: Store) -> None:
    comp = store.compartment("A01")
    assert comp is not None
    change = d.service_open(comp, NOW, actor="tech:ana", reason="check")
    store.apply(
        change,
        now=NOW,
        actor="tech:ana",
        action="open",
        target="A01",
        detail={"reason": "check"},
    )
    (line,) = store.audit_log(limit=10)
    assert (line.actor, line.action, line.target) == ("tech:ana", "open", "A01")
    assert line.detail == {"reason": "check", "events": ["door_open_requested"]}


def test_a_refused_action_is_one_small_audit_line_and_nothing_else(store: Store) -> None:
    store.audit_refused(
        now=NOW,
        actor="tech:ana",
        action="cancel",
        target="P9",
        detail={"refused": "unknown_parcel", "why": "no parcel P9", "reason": "x" * 5000},
    )
    (line,) = store.audit_log(limit=10)
    assert (line.actor, line.action, line.target) == ("tech:ana", "refused:cancel", "P9")
    assert line.detail["refused"] == "unknown_parcel"
    assert len(line.detail["reason"]) < 300  # bounded: one small row
    assert store.outbox() == []
    assert store.history(limit=10) == []


def test_a_code_already_live_elsewhere_is_refused_and_nothing_is_stored(store: Store) -> None:
    reserve(store)
    with pytest.raises(StoreConflict):
        reserve(store, pid="P2", code="h-other", pickup="h-pick")  # same pickup hash
    assert store.parcel("P2") is None
    assert store.code("h-other") is None
    assert len(store.outbox()) == 1


def test_a_change_commits_with_its_events_and_seq_never_restarts(store: Store) -> None:
    p = reserve(store)
    comp = store.compartment("A02")
    assert comp is not None
    started = d.start(p, d.Purpose.DEPOSIT, comp, NOW)
    intent = store.apply(
        started,
        now=NOW,
        actor="terminal:1",
        action="enter_code",
        target="A02",
        intent=("A02", d.Purpose.DEPOSIT, "P1"),
    )
    assert intent is not None
    assert [i.label for i in store.open_intents()] == ["A02"]
    stored = store.parcel("P1")
    assert stored is not None
    assert stored.state is d.ParcelState.DEPOSITING
    assert store.code("h-dep") is not None  # kept until the deposit is confirmed ...
    assert d.check_code(stored, d.Purpose.DEPOSIT, NOW) is d.Refusal.SPENT  # ... but refused
    seqs = [r.seq for r in store.outbox()]
    assert seqs == [1, 2]
    store.delete_outbox(seqs)  # delivered to the cloud
    comp2 = store.compartment("A02")
    assert comp2 is not None
    opened = d.door_opened(comp2, NOW + 1)
    store.apply(
        opened,
        now=NOW + 1,
        actor="monitor",
        action="door",
        target="A02",
        resolve=(intent, "opened"),
    )
    assert store.open_intents() == []
    assert [r.seq for r in store.outbox()] == [3]  # gapless and monotonic, even after deletes


def test_spent_codes_are_deleted(store: Store) -> None:
    p = reserve(store)
    comp = store.compartment("A02")
    assert comp is not None
    store.apply(
        d.start(p, d.Purpose.DEPOSIT, comp, NOW), now=NOW, actor="t", action="a", target="A02"
    )
    c = store.compartment("A02")
    assert c is not None
    store.apply(d.door_opened(c, NOW), now=NOW, actor="m", action="door", target="A02")
    c, par = store.compartment("A02"), store.parcel("P1")
    assert c is not None
    assert par is not None
    store.apply(d.door_shut(c, par, NOW + 5), now=NOW + 5, actor="m", action="door", target="A02")
    par = store.parcel("P1")
    c = store.compartment("A02")
    assert par is not None
    assert c is not None
    assert store.code("h-pick") is not None  # the pickup code is live now
    assert store.code("h-dep") is None  # the deposit is confirmed: its code is spent
    assert store.spent("h-dep")  # ... and tombstoned
    assert not store.spent("h-pick")
    store.apply(
        d.start(par, d.Purpose.COLLECT, c, NOW + 9),
        now=NOW + 9,
        actor="t",
        action="a",
        target="A02",
    )
    c, par = store.compartment("A02"), store.parcel("P1")
    assert c is not None
    assert par is not None
    store.apply(d.door_opened(c, NOW + 10), now=NOW + 10, actor="m", action="door", target="A02")
    c = store.compartment("A02")
    assert c is not None
    store.apply(d.door_shut(c, par, NOW + 15), now=NOW + 15, actor="m", action="door", target="A02")
    final = store.parcel("P1")
    assert final is not None
    assert final.state is d.ParcelState.COLLECTED
    assert store.code("h-pick") is None  # spent: gone for good
    assert store.spent("h-pick")
    # never accepted again: not for a new parcel, not as a new code of a live one
    with pytest.raises(CodeSpent):
        reserve(store, pid="P2", code="h-new", pickup="h-pick")
    assert store.parcel("P2") is None
    reserve(store, pid="P3", code="h-dep3", pickup="h-pick3")
    for spent in ("h-dep", "h-pick"):
        with pytest.raises(CodeSpent):
            store.set_codes("P3", {d.Purpose.COLLECT: spent}, now=NOW + 20, actor="cloud")
    assert store.code("h-pick3") is not None  # nothing changed
    fate = store.add_new_parcels(
        [
            (
                d.Parcel(f"B{i}", d.Kind.DELIVERY, d.Size.S, deposit_from=0.0, deposit_until=NOW),
                codes,
            )
            for i, codes in enumerate(
                [
                    {d.Purpose.DEPOSIT: "h-b0", d.Purpose.COLLECT: "h-pick"},
                    {d.Purpose.DEPOSIT: "h-b1", d.Purpose.COLLECT: "h-b1p"},
                    {d.Purpose.DEPOSIT: "h-b2", d.Purpose.COLLECT: "h-pick3"},
                ]
            )
        ],
        now=NOW + 20,
        actor="cloud",
    )
    assert fate == {"B0": "code_used", "B1": "reserved", "B2": "code_conflict"}
    assert store.code("h-b0") is None


def test_a_replaced_code_is_tombstoned_and_the_same_code_again_is_no_change(
    store: Store,
) -> None:
    reserve(store)
    store.set_codes("P1", {d.Purpose.COLLECT: "h-pick"}, now=NOW + 1, actor="cloud")  # the same
    assert store.code("h-pick") is not None
    assert not store.spent("h-pick")
    store.set_codes("P1", {d.Purpose.COLLECT: "h-pick2"}, now=NOW + 2, actor="cloud")
    assert store.code("h-pick") is None
    assert store.spent("h-pick")
    with pytest.raises(CodeSpent):  # the replaced code cannot come back
        store.set_codes("P1", {d.Purpose.COLLECT: "h-pick"}, now=NOW + 3, actor="cloud")
    found = store.code("h-pick2")
    assert found is not None
    assert found[1] is d.Purpose.COLLECT


def test_a_cancelled_parcels_codes_are_tombstoned(store: Store) -> None:
    p = reserve(store)
    store.apply(d.cancel(p), now=NOW + 1, actor="cloud", action="cancel", target="P1")
    assert store.code("h-dep") is None
    assert store.spent("h-dep")
    assert store.spent("h-pick")


def prune_all(store: Store, table: str, before: float, *, batch: int = 500) -> int:
    """Batch after batch, as the service prunes, until a batch is short."""
    total = 0
    while (n := store.prune(table, before, batch)) == batch:
        total += n
    return total + n


def test_tombstones_are_pruned_in_batches(store: Store) -> None:
    for i in range(25):
        reserve(store, pid=f"P{i}", code=f"d{i}", pickup=f"p{i}")
        p = store.parcel(f"P{i}")
        assert p is not None
        now = NOW + i
        store.apply(d.cancel(p), now=now, actor="cloud", action="cancel", target=p.id)
    assert prune_all(store, "tombstones", NOW + 10, batch=3) == 20  # P0..P9, two codes each
    assert not store.spent("d9")
    assert store.spent("d10")
    assert prune_all(store, "tombstones", NOW + 10) == 0
    reserve(store, pid="again", code="d0", pickup="p0")  # forgotten: accepted again


def test_everything_survives_a_reopen(tmp_path: Path) -> None:
    s = Store(tmp_path / "hub.db")
    s.sync_compartments(COMPS)
    reserve(s)
    s.close()
    again = Store(tmp_path / "hub.db")
    assert again.parcel("P1") is not None
    assert [c.label for c in again.compartments()] == ["A01", "A02"]
    assert [r.seq for r in again.outbox()] == [1]


def test_a_full_disk_rolls_the_change_back_and_keeps_what_was_there(store: Store) -> None:
    reserve(store)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own "disk is full"

    def fill() -> None:
        for i in range(200):
            reserve(store, pid=f"X{i}", code=f"c{i}" * 40, pickup=f"p{i}" * 40)

    with pytest.raises(StoreFull, match="disk is full"):
        fill()
    assert store.parcel("P1") is not None
    assert store.integrity_ok()
    store._db.execute("PRAGMA max_page_count=1073741823")
    reserve(store, pid="P9", code="h9", pickup="h9p")  # works again once there is room


def test_a_compartment_holding_a_parcel_cannot_vanish_from_the_config(store: Store) -> None:
    p = reserve(store)
    comp = store.compartment("A02")
    assert comp is not None
    store.apply(
        d.start(p, d.Purpose.DEPOSIT, comp, NOW), now=NOW, actor="t", action="a", target="A02"
    )
    with pytest.raises(StoreConflict, match="A02 holds parcel P1"):
        store.sync_compartments(COMPS[:1])
    assert store.compartment("A02") is not None


def test_a_damaged_file_stops_everything_and_is_never_recreated(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreCorrupt, match="never recreates"):
        Store(path)
    assert path.read_bytes().startswith(b"this is not a database")


def test_a_foreign_or_newer_database_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "other.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE x(y)")
    db.commit()
    db.close()
    with pytest.raises(StoreCorrupt, match="not lockerd's"):
        Store(foreign)
    newer = tmp_path / "newer.db"
    Store(newer).close()
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(StoreCorrupt, match="newer than this lockerd"):
        Store(newer)


def test_an_old_store_is_migrated_in_place_with_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = store_module.SCHEMA
    monkeypatch.setattr(store_module, "SCHEMA", current[:1])  # a hub of the first release
    old = Store(tmp_path / "hub.db")
    old.sync_compartments(COMPS)
    p = d.Parcel("P1", d.Kind.DELIVERY, d.Size.M, deposit_from=NOW - 10, deposit_until=NOW + 999)
    with old.transaction() as db:  # as the first release stored it (it had no tombstones)
        old._insert_parcels(db, [(p, {d.Purpose.DEPOSIT: "h-dep"})], NOW, spent_checked=True)
    old.close()
    monkeypatch.setattr(store_module, "SCHEMA", current)
    new = Store(tmp_path / "hub.db")
    assert new._db.execute("PRAGMA user_version").fetchone()[0] == len(current)
    assert new.parcel("P1") is not None
    assert new.alarms() == []


def test_alarm_events_open_one_alarm_until_acknowledged(store: Store) -> None:
    comp = store.compartment("A01")
    assert comp is not None
    for _ in range(2):  # the same alarm twice: one open alarm
        store.apply(
            d.Change(events=(d.Event("forced_open", {"compartment": "A01"}),)),
            now=NOW,
            actor="monitor",
            action="door",
            target="A01",
        )
    (alarm,) = store.alarms()
    assert (alarm["type"], alarm["target"]) == ("forced_open", "A01")
    assert store.ack(alarm["id"], actor="tech:ana", now=NOW + 1)
    assert store.alarms() == []
    assert not store.ack(alarm["id"], actor="tech:ana", now=NOW + 2)
    assert len(store.alarms(open_only=False)) == 1


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    doors=st.lists(
        st.tuples(
            st.sampled_from(list(d.Size)),
            st.booleans(),
            st.booleans(),
            st.sampled_from(["empty", "unknown"]),
        ),
        min_size=1,
        max_size=12,
    ),
    size=st.sampled_from(list(d.Size)),
    accessible=st.booleans(),
    fallback=st.booleans(),
)
def test_allocation_candidates_choose_what_allocate_would_choose(
    tmp_path_factory: pytest.TempPathFactory,
    doors: list[tuple[d.Size, bool, bool, str]],
    size: d.Size,
    accessible: bool,
    fallback: bool,
) -> None:
    s = Store(tmp_path_factory.mktemp("alloc") / "hub.db")
    comps = [
        d.Compartment(f"A{i:02d}", sz, accessible=acc, in_service=svc, content=d.Content(content))
        for i, (sz, acc, svc, content) in enumerate(doors)
    ]
    s.sync_compartments(comps)
    with s.transaction() as db:
        for c in comps:
            db.execute(
                "UPDATE compartments SET in_service=?, content=? WHERE label=?",
                (int(c.in_service), c.content.value, c.label),
            )
    everything = d.allocate(s.compartments(), size, accessible=accessible, fallback=fallback)
    few = d.allocate(
        s.allocation_candidates(size, accessible=accessible, fallback=fallback),
        size,
        accessible=accessible,
        fallback=fallback,
    )
    assert (few.label if few else None) == (everything.label if everything else None)
    s.close()


def test_the_outbox_quota_drops_only_door_telemetry_and_keeps_seq_gapless(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "hub.db")
    store.outbox_quota = 2_000  # bytes
    door = d.Event("door_opened", {"compartment": "A01"})
    deposit = d.Event("deposited", {"compartment": "A01", "parcel": "P1"})
    for _ in range(30):
        store.apply(d.Change(events=(door, deposit)), now=1.0, actor="t", action="t", target="-")
    rows = store.outbox(limit=1000)
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))  # gapless
    types = [r.type for r in rows]
    assert types.count("deposited") == 30  # never dropped
    assert types.count("outbox_quota_reached") == 1  # one alarm when it fills up
    assert types.count("door_opened") < 30  # telemetry past the quota is not queued
    # (30 deposits outgrow even twice the quota: the hard ceiling's alarm too)
    assert [a["type"] for a in store.alarms()] == ["outbox_quota_reached", "outbox_full"]
    assert types.count("outbox_full") == 1
    dropped = [a for a in store.audit(1000) if a["detail"].get("dropped")]
    assert dropped  # the audit says what was not queued
    store.delete_outbox([r.seq for r in rows])  # the cloud took them
    store.apply(d.Change(events=(door,)), now=2.0, actor="t", action="t", target="-")
    assert [r.type for r in store.outbox()] == ["door_opened"]  # queued again
    store.close()
    reopened = Store(tmp_path / "hub.db")  # the counter is rebuilt from the file
    assert reopened.outbox_size()[0] == 1
    reopened.close()
