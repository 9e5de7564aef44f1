"""The hub's rules, flow by flow (the state machine test checks them all mixed)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lockerd.hub import domain as d

NOW = 10_000.0


def comps(*sizes: str, accessible: tuple[int, ...] = ()) -> list[d.Compartment]:
    return [
        d.Compartment(f"A{i:02d}", d.Size(s), accessible=i in accessible)
        for i, s in enumerate(sizes, 1)
    ]


def parcel(
    size: str = "M", kind: d.Kind = d.Kind.DELIVERY, *, has_recall_code: bool = False
) -> d.Parcel:
    return d.Parcel(
        "P1",
        kind,
        d.Size(size),
        deposit_from=NOW - 60,
        deposit_until=NOW + 3600,
        collect_window_s=3600,
        has_recall_code=has_recall_code,
    )


def events(change: d.Change) -> list[str]:
    return [e.type for e in change.events]


def deposit(
    p: d.Parcel, c: d.Compartment, occupied: bool | None = None
) -> tuple[d.Parcel, d.Compartment, d.Change]:
    started = d.start(p, d.Purpose.DEPOSIT, c, NOW, actor="terminal:1")
    assert started.parcel is not None
    assert started.compartment is not None
    seen = d.door_opened(started.compartment, NOW + 1)
    assert seen.compartment is not None
    shut = d.door_shut(seen.compartment, started.parcel, NOW + 20, occupied=occupied)
    assert shut.parcel is not None
    assert shut.compartment is not None
    return shut.parcel, shut.compartment, shut


def test_carrier_deposit_then_resident_pickup() -> None:
    p, c, shut = deposit(parcel(), comps("M")[0])
    assert p.state is d.ParcelState.STORED
    assert c.state is d.CompartmentState.OCCUPIED
    assert events(shut) == ["deposited", "door_shut"]
    assert d.check_code(p, d.Purpose.DEPOSIT, NOW + 30) is d.Refusal.SPENT  # single use
    started = d.start(p, d.Purpose.COLLECT, c, NOW + 60)
    assert started.compartment is not None
    assert started.parcel is not None
    opened = d.door_opened(started.compartment, NOW + 61)
    assert opened.compartment is not None
    done = d.door_shut(opened.compartment, started.parcel, NOW + 70)
    assert done.parcel is not None
    assert done.compartment is not None
    assert done.parcel.state is d.ParcelState.COLLECTED
    assert done.compartment.state is d.CompartmentState.FREE
    assert events(done) == ["collected", "door_shut"]
    assert d.check_code(done.parcel, d.Purpose.COLLECT, NOW + 80) is d.Refusal.SPENT


def test_a_jammed_deposit_door_frees_the_code_and_takes_the_lock_out() -> None:
    p, c = parcel(), comps("M", "M")[0]
    started = d.start(p, d.Purpose.DEPOSIT, c, NOW)
    assert started.compartment is not None
    jam = d.open_not_seen(started.compartment, started.parcel, NOW + 3)
    assert jam.parcel is not None
    assert jam.compartment is not None
    assert events(jam) == ["door_jammed"]
    assert jam.parcel.state is d.ParcelState.RESERVED  # the carrier can try again
    assert d.check_code(jam.parcel, d.Purpose.DEPOSIT, NOW + 4) is None
    assert jam.compartment.state is d.CompartmentState.OUT_OF_SERVICE


def test_a_jammed_pickup_door_does_not_spend_the_code() -> None:
    p, c, _ = deposit(parcel(), comps("M")[0])
    started = d.start(p, d.Purpose.COLLECT, c, NOW + 60)
    assert started.compartment is not None
    jam = d.open_not_seen(started.compartment, started.parcel, NOW + 63)
    assert jam.parcel is not None
    assert jam.parcel.state is d.ParcelState.STORED
    assert d.check_code(jam.parcel, d.Purpose.COLLECT, NOW + 64) is None


def test_a_forced_door_makes_the_content_unknown_until_someone_says() -> None:
    c = comps("S")[0]
    forced = d.door_opened(c, NOW)
    assert events(forced) == ["forced_open"]
    assert forced.compartment is not None
    shut = d.door_shut(forced.compartment, None, NOW + 5)
    assert shut.compartment is not None
    assert shut.compartment.state is d.CompartmentState.ATTENTION  # neither empty nor full
    assert d.allocate([shut.compartment], d.Size.S, accessible=False, fallback=True) is None
    ok = d.inspected(shut.compartment, holds_parcel=False, actor="tech:ana")
    assert ok.compartment is not None
    assert ok.compartment.state is d.CompartmentState.FREE


def test_a_sensor_settles_a_forced_door_by_itself() -> None:
    forced = d.door_opened(comps("S")[0], NOW)
    assert forced.compartment is not None
    shut = d.door_shut(forced.compartment, None, NOW + 5, occupied=False)
    assert shut.compartment is not None
    assert shut.compartment.state is d.CompartmentState.FREE


def test_a_carrier_who_puts_nothing_in_leaves_a_free_door_and_a_live_code() -> None:
    p, c, shut = deposit(parcel(), comps("M")[0], occupied=False)
    assert p.state is d.ParcelState.RESERVED
    assert c.state is d.CompartmentState.FREE
    assert events(shut) == ["deposit_abandoned", "door_shut"]


def test_a_parcel_left_behind_at_pickup_stays_stored() -> None:
    p, c, _ = deposit(parcel(), comps("M")[0])
    started = d.start(p, d.Purpose.COLLECT, c, NOW + 60)
    assert started.compartment is not None
    opened = d.door_opened(started.compartment, NOW + 61)
    assert opened.compartment is not None
    shut = d.door_shut(opened.compartment, started.parcel, NOW + 70, occupied=True)
    assert shut.parcel is not None
    assert shut.compartment is not None
    assert shut.parcel.state is d.ParcelState.STORED
    assert shut.compartment.state is d.CompartmentState.OCCUPIED


def test_expiry_then_recall_by_the_carrier() -> None:
    p, c, _ = deposit(parcel(has_recall_code=True), comps("M")[0])
    assert d.expire(p, NOW + 100).parcel is None  # not yet
    late = NOW + 20 + 3600 + 1
    assert d.check_code(p, d.Purpose.COLLECT, late) is d.Refusal.EXPIRED  # before expire() runs
    exp = d.expire(p, late)
    assert exp.parcel is not None
    assert events(exp) == ["parcel_expired"]
    assert d.check_code(exp.parcel, d.Purpose.COLLECT, late) is d.Refusal.EXPIRED
    started = d.start(exp.parcel, d.Purpose.RECALL, c, late)
    assert started.compartment is not None
    opened = d.door_opened(started.compartment, late + 1)
    assert opened.compartment is not None
    done = d.door_shut(opened.compartment, started.parcel, late + 9)
    assert done.parcel is not None
    assert done.parcel.state is d.ParcelState.RECALLED
    assert events(done) == ["recalled", "door_shut"]


def test_a_return_goes_in_with_the_residents_code_and_out_with_the_carriers() -> None:
    p, c, shut = deposit(parcel(kind=d.Kind.RETURN), comps("M")[0])
    assert events(shut)[0] == "return_deposited"
    started = d.start(p, d.Purpose.COLLECT, c, NOW + 60)
    assert started.compartment is not None
    opened = d.door_opened(started.compartment, NOW + 61)
    assert opened.compartment is not None
    done = d.door_shut(opened.compartment, started.parcel, NOW + 70)
    assert events(done)[0] == "return_collected"
    assert d.check_code(p, d.Purpose.RECALL, NOW) is d.Refusal.WRONG_STATE


def test_cancel_only_before_the_deposit() -> None:
    p = parcel()
    cancelled = d.cancel(p)
    assert cancelled.parcel is not None
    assert d.check_code(cancelled.parcel, d.Purpose.DEPOSIT, NOW) is d.Refusal.CANCELLED
    assert d.cancel(cancelled.parcel).events == ()  # idempotent
    stored, _, _ = deposit(p, comps("M")[0])
    assert d.cancel(stored).refusal is d.Refusal.WRONG_STATE


@pytest.mark.parametrize(
    ("sizes", "want", "fallback", "accessible", "chosen"),
    [
        (("L", "M", "S"), "M", True, False, "A02"),  # exactly its size
        (("L", "XL", "S"), "M", True, False, "A01"),  # the smallest larger one
        (("L", "XL", "S"), "M", False, False, None),  # no fallback configured
        (("S",), "M", True, False, None),  # never smaller
        (("M", "M"), "M", True, False, "A02"),  # keep the accessible A01 for those who need it
        (("M", "M"), "M", True, True, "A01"),  # ... who get it
    ],
)
def test_allocation(
    sizes: tuple[str, ...], want: str, fallback: bool, accessible: bool, chosen: str | None
) -> None:
    pool = comps(*sizes, accessible=(1,) if sizes == ("M", "M") else ())
    got = d.allocate(pool, d.Size(want), accessible=accessible, fallback=fallback)
    assert (got.label if got else None) == chosen


def test_out_of_service_and_busy_compartments_are_never_allocated() -> None:
    a, b = comps("M", "M")
    a = replace(a, in_service=False)
    b = replace(b, operation=d.Operation(d.Purpose.SERVICE, None, NOW))
    assert d.allocate([a, b], d.Size.M, accessible=False, fallback=True) is None


def test_codes_not_yet_valid_or_past_their_window() -> None:
    p = parcel()
    assert d.check_code(p, d.Purpose.DEPOSIT, NOW - 120) is d.Refusal.NOT_YET_VALID
    assert d.check_code(p, d.Purpose.DEPOSIT, NOW + 7200) is d.Refusal.EXPIRED


def test_every_refused_code_reads_the_same_on_the_keypad() -> None:
    texts = {
        d.terminal_message(r)
        for r in (
            d.Refusal.UNKNOWN_CODE,
            d.Refusal.SPENT,
            d.Refusal.EXPIRED,
            d.Refusal.CANCELLED,
            d.Refusal.NOT_YET_VALID,
            d.Refusal.WRONG_STATE,
        )
    }
    assert len(texts) == 1  # a guesser learns nothing about which codes exist


def test_a_door_left_open_raises_an_alarm_once_past_the_limit() -> None:
    started = d.start(parcel(), d.Purpose.DEPOSIT, comps("M")[0], NOW)
    assert started.compartment is not None
    opened = d.door_opened(started.compartment, NOW + 1)
    assert opened.compartment is not None
    assert d.left_open(opened.compartment, NOW + 50, 60).events == ()
    assert events(d.left_open(opened.compartment, NOW + 61, 60)) == ["door_left_open"]


def test_a_recorded_parcel_is_never_wished_away_by_inspection() -> None:
    _, c, _ = deposit(parcel(), comps("M")[0])
    assert d.inspected(c, holds_parcel=False, actor="tech:ana").refusal is d.Refusal.WRONG_STATE


def test_no_event_ever_carries_a_code() -> None:
    _, _, shut = deposit(parcel(), comps("M")[0])
    for e in shut.events:
        assert not any("code" in k for k in e.data), e
