"""Bounded storage: retention prunes what no longer matters to a door; the outbox has
a hard ceiling; a compartment's service flag toggled over and over is one event; event
data that came from outside is stored as text any encoder can send. Real SQLite files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockerd.config import Retention
from lockerd.hub import domain as d
from lockerd.hub import jsonsafe
from lockerd.hub.store import Inbox, Store
from tests.support.hubs import SimHub

NOW = 10_000_000.0
DAY = 86_400.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "hub.db")
    s.sync_compartments([d.Compartment("A01", d.Size.S), d.Compartment("A02", d.Size.M)])
    return s


def full(store: Store) -> bool:
    return store.outbox_full


def flip(store: Store, label: str, in_service: bool, *, now: float = NOW) -> None:
    comp = store.compartment(label)
    assert comp is not None
    store.apply(
        d.set_service(comp, in_service, actor="tech:ana"),
        now=now,
        actor="tech:ana",
        action="service",
        target=label,
    )


# ======================================================================================
# coalescing and the ceiling
# ======================================================================================


def test_service_toggles_not_yet_taken_by_the_link_are_one_event(store: Store) -> None:
    for i in range(500):
        flip(store, "A01", i % 2 == 0)
    rows = store.outbox()
    assert [r.type for r in rows] == ["compartment_service"]
    assert rows[0].data["in_service"] is False  # the last flip: out (499 is odd)
    assert len(store.audit(1000)) == 500  # every flip is audited


def test_a_flip_after_the_link_took_the_last_one_is_a_new_event(store: Store) -> None:
    flip(store, "A01", False)
    taken = store.outbox(publishing=True)  # on its way to the broker: never changed
    flip(store, "A01", True)
    rows = store.outbox()
    assert [r.seq for r in rows] == [1, 2]
    assert rows[0].data["in_service"] is False
    assert taken[0].data == rows[0].data
    assert rows[1].data["in_service"] is True


def test_flips_of_other_doors_or_after_other_events_are_kept_apart(store: Store) -> None:
    flip(store, "A01", False)
    flip(store, "A02", False)
    flip(store, "A01", True)
    assert [(r.type, r.data["compartment"]) for r in store.outbox()] == [
        ("compartment_service", "A01"),
        ("compartment_service", "A02"),
        ("compartment_service", "A01"),
    ]


def test_what_a_former_run_left_in_the_outbox_is_never_changed(tmp_path: Path) -> None:
    first = Store(tmp_path / "hub.db")
    first.sync_compartments([d.Compartment("A01", d.Size.S)])
    flip(first, "A01", False)
    first.close()
    again = Store(tmp_path / "hub.db")  # the last run may have sent it already
    flip(again, "A01", True)
    assert [r.seq for r in again.outbox()] == [1, 2]


async def test_at_the_hard_ceiling_reservations_and_service_changes_wait(hub: SimHub) -> None:
    store = hub.store
    store.outbox_quota = 4_000
    for i in range(200):  # alarms: never dropped, so the outbox grows past its quota
        await hub.service.record(
            d.Change(events=(d.Event("forced_open", {"compartment": f"X{i}"}),)),
            actor="monitor",
            target=f"X{i}",
        )
    assert full(store)
    types = [r.type for r in store.outbox(limit=10_000)]
    assert types.count("outbox_quota_reached") == 1
    assert types.count("outbox_full") == 1
    out = await hub.service.set_service("A01", False, actor="tech:ana")
    assert out.status == "refused"
    assert "outbox is full" in out.message
    parcel = d.Parcel("P9", d.Kind.DELIVERY, d.Size.S, deposit_from=0, deposit_until=NOW * 2)
    out = await hub.service.reserve(
        parcel, {d.Purpose.DEPOSIT: "a" * 64, d.Purpose.COLLECT: "b" * 64}, actor="cloud"
    )
    assert out.status == "refused"
    assert store.parcel("P9") is None
    # the cloud takes its events: service changes go again
    store.delete_outbox([r.seq for r in store.outbox(limit=10_000)])
    assert not full(store)
    assert (await hub.service.set_service("A01", False, actor="tech:ana")).status == "ok"


# ======================================================================================
# retention
# ======================================================================================


def old_and_new(store: Store) -> None:
    """A bit of everything, a year ago and now."""
    for when in (NOW - 400 * DAY, NOW):
        tag = "old" if when < NOW else "new"
        store.answer(Inbox(f"cmd-{tag}", {"status": "ok"}), now=when)
        parcel = d.Parcel(
            f"P-{tag}", d.Kind.DELIVERY, d.Size.S, deposit_from=0, deposit_until=when + 9
        )
        store.add_parcel(
            parcel,
            {d.Purpose.DEPOSIT: (tag[0] * 64), d.Purpose.COLLECT: (tag[1] * 64)},
            now=when,
            actor="cloud",
        )
        stored = store.parcel(f"P-{tag}")
        assert stored is not None
        store.apply(d.cancel(stored), now=when, actor="cloud", action="cancel", target="x")
        store.apply(
            d.Change(events=(d.Event("forced_open", {"compartment": f"A-{tag}"}),)),
            now=when,
            actor="monitor",
            action="door",
            target="A01",
        )
        (alarm,) = [a for a in store.alarms() if a["target"] == f"A-{tag}"]
        store.ack(alarm["id"], actor="tech:ana", now=when)
        store.quarantine("cloud", f"q-{tag}", "ValueError", b"{}", now=when)
    # an open the last run never answered: kept whatever its age
    store.answer(Inbox("cmd-opening", {"status": "opening"}, publish=False), now=NOW - 400 * DAY)


async def test_prune_deletes_only_what_retention_lets_go(hub: SimHub) -> None:
    store = hub.store
    old_and_new(store)
    hub.service.clock = lambda: NOW
    pruned = await hub.service.prune(Retention(tombstone_days=500), batch=2)  # small batches
    assert pruned["inbox"] == 1
    assert pruned["parcels"] == 1
    assert pruned["alarms"] == 1
    assert pruned["quarantine"] == 1
    assert pruned["audit"] >= 4
    assert store.inbox("cmd-old") is None
    assert store.inbox("cmd-new") is not None
    assert store.inbox("cmd-opening") is not None
    assert store.parcel("P-old") is None
    assert store.parcel("P-new") is not None
    acked = [a["target"] for a in store.alarms(open_only=False) if a["acked"] is not None]
    assert acked == ["A-new"]
    assert [q["ref"] for q in store.quarantined()] == ["q-new"]
    assert all(row["at"] >= NOW - 365 * DAY for row in store.audit(10_000))
    # the old parcel's spent codes are tombstones until their own retention ends
    assert store.spent("o" * 64)
    assert (await hub.service.prune(Retention(tombstone_days=300)))["tombstones"] >= 2
    assert not store.spent("o" * 64)
    assert store.spent("n" * 64)
    assert store.integrity_ok()


async def test_settled_intents_are_pruned_and_open_ones_never(hub: SimHub) -> None:
    store = hub.store
    with store.transaction() as db:
        db.execute(
            "INSERT INTO intents(label, purpose, actor, created, outcome) "
            "VALUES('A01', 'service', 't', ?, 'opened')",
            (NOW - 100 * DAY,),
        )
        db.execute(
            "INSERT INTO intents(label, purpose, actor, created) VALUES('A02', 'service', 't', ?)",
            (NOW - 100 * DAY,),
        )
    hub.service.clock = lambda: NOW
    assert (await hub.service.prune(Retention()))["intents"] == 1
    assert [i.label for i in store.open_intents()] == ["A02"]


# ======================================================================================
# text from outside
# ======================================================================================

anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats()
    | st.text(alphabet=st.characters(codec=None, exclude_categories=())),
    lambda inner: st.lists(inner, max_size=80) | st.dictionaries(st.text(), inner, max_size=80),
    max_leaves=200,
)


@settings(max_examples=300, deadline=None)
@given(anything)
def test_cleaned_data_is_always_utf8_json_within_bounds(value: object) -> None:
    out = json.dumps(jsonsafe.clean(value), ensure_ascii=False)
    out.encode("utf-8")  # never raises: no lone surrogates
    data = json.loads(out)

    def check(v: object, depth: int) -> None:
        assert depth <= jsonsafe.MAX_DEPTH
        if isinstance(v, str):
            assert len(v) <= jsonsafe.MAX_STR
            assert all(not (0xD800 <= ord(c) <= 0xDFFF) for c in v)
            assert all(c in "\t\n" or ord(c) >= 0x20 for c in v if ord(c) < 0xA0)
        elif isinstance(v, dict):
            assert len(v) <= jsonsafe.MAX_ITEMS + 1
            for k, item in v.items():
                check(k, depth)
                check(item, depth + 1)
        elif isinstance(v, list):
            assert len(v) <= jsonsafe.MAX_ITEMS + 1
            for item in v:
                check(item, depth + 1)

    check(data, 0)


def test_a_surrogate_pair_that_spells_a_character_is_kept() -> None:
    assert jsonsafe.text("\ud83d\ude00") == "\U0001f600"
    assert jsonsafe.text("a\ud800b") == "a\ufffdb"
    assert jsonsafe.text("line\x1b[2Jx") == "line\ufffd[2Jx"


def test_an_event_with_outside_text_is_stored_sendable(store: Store) -> None:
    store.apply(
        d.Change(events=(d.Event("command_refused", {"type": "\ud800", "x": "y" * 10_000}),)),
        now=NOW,
        actor="cloud",
        action="record",
        target="-",
    )
    (row,) = store.outbox()
    assert row.data["type"] == "\ufffd"
    assert len(row.data["x"]) <= jsonsafe.MAX_STR


def test_check_config_refuses_a_retention_shorter_than_a_command_lives() -> None:
    from lockerd.config import ConfigInvalid, parse  # noqa: PLC0415

    text = (Path(__file__).resolve().parents[2] / "lockerd" / "demo" / "demo-hub.toml").read_text()
    text += '\n[cloud]\nurl = "mqtt://127.0.0.1:1883"\n\n[retention]\ninbox_days = 2\n'
    with pytest.raises(ConfigInvalid) as exc:
        parse(text, "hub.toml")
    (problem,) = exc.value.problems
    assert problem.where == "retention.inbox_days"
    assert "replayed command could be applied again" in problem.message
    assert problem.line is not None


async def test_a_kept_row_among_the_oldest_never_stops_the_prune(hub: SimHub) -> None:
    """Seen in review: the oldest 500 were taken and then filtered, so one open intent
    among them held the whole table at 499 deletions an hour."""
    store = hub.store
    with store.transaction() as db:
        db.execute(
            "INSERT INTO intents(label, purpose, actor, created) VALUES('A02', 'service', 't', ?)",
            (NOW - 100 * DAY,),
        )
        db.executemany(
            "INSERT INTO intents(label, purpose, actor, created, outcome) "
            "VALUES('A01', 'service', 't', ?, 'opened')",
            [(NOW - 99 * DAY,)] * 3000,
        )
    hub.service.clock = lambda: NOW
    assert (await hub.service.prune(Retention()))["intents"] == 3000
    assert [i.label for i in store.open_intents()] == ["A02"]


async def test_a_hub_without_a_cloud_keeps_its_events_as_long_as_its_audit(hub: SimHub) -> None:
    store = hub.store
    for when in (NOW - 400 * DAY, NOW):
        store.apply(
            d.Change(events=(d.Event("board_online", {"board": "A:0"}),)),
            now=when,
            actor="monitor",
            action="hardware",
            target="A:0",
        )
    hub.service.clock = lambda: NOW
    assert (await hub.service.prune(Retention()))["audit"] >= 1
    assert len(store.outbox()) == 2  # with a cloud link, the cloud takes them
    assert (await hub.service.prune(Retention(), outbox=True))["outbox"] == 1
    assert [r.at for r in store.outbox()] == [NOW]


def test_past_the_quota_a_repeated_open_alarm_is_not_queued_but_a_new_one_is(
    store: Store,
) -> None:
    store.outbox_quota = 500
    for _ in range(50):  # a door forced again and again, its alarm still open
        store.apply(
            d.Change(events=(d.Event("forced_open", {"compartment": "A01"}),)),
            now=NOW,
            actor="monitor",
            action="door",
            target="A01",
        )
    store.quarantine("cloud", "q-1", "ValueError: x", b"{}", now=NOW)
    types = [r.type for r in store.outbox(limit=1000)]
    assert types.count("forced_open") < 10
    assert types.count("message_quarantined") == 1  # a new alarm past the quota
    assert {a["type"] for a in store.alarms()} >= {"forced_open", "message_quarantined"}
