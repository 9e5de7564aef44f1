"""Code guessing that cannot be raced (issue 10, ADR 0013).

Through the real service, a real SQLite store and simulated boards on real ptys
(``make_hub`` of tests.support.hubs): bursts of concurrent codes on one terminal and on
several, a right code that cannot open now, a check that fails half-way, and
thousands of wrong codes in one window. Then, against the pure throttle, random
interleavings of attempts in flight together, which must never get more codes
checked than the sequential model allows, and refunds that leave no trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockerd.config import ThrottlePolicy
from lockerd.hub import domain as d
from lockerd.hub.codes import Attempt, Throttle, WindowView, burst_allowance, most_guesses
from lockerd.hub.service import Outcome
from lockerd.hub.store import Store
from tests.support.hubs import SIZES, SimHub, make_hub
from tests.support.waiting import eventually

POLICY = ThrottlePolicy()  # the default: what the README's figures are about
RIGHT, RIGHT_COLLECT = "11112222", "33334444"
CHANNELS = range(1, len(SIZES) + 1)


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[SimHub]:
    """The hub of tests.support.hubs under the default throttle policy."""
    async with contextlib.AsyncExitStack() as stack:
        hub = await make_hub(stack, tmp_path)
        hub.service.throttle = Throttle(POLICY)
        yield hub


def count_lookups(store: Store) -> list[str]:
    """Every code hash the store is asked about: the codes checked."""
    looked: list[str] = []
    real = store.code

    def code(code_hash: str) -> tuple[d.Parcel, d.Purpose] | None:
        looked.append(code_hash)
        return real(code_hash)

    store.code = code  # type: ignore[method-assign]
    return looked


def wrong_code(i: int) -> str:
    return f"5{i:07d}"


def statuses(outcomes: list[Outcome]) -> Counter[str]:
    return Counter(o.status for o in outcomes)


async def test_a_burst_on_one_terminal_checks_no_more_than_one_keypad_could(
    guarded: SimHub,
) -> None:
    """Issue 10: 949 wrong codes and then the right one, all in flight together."""
    hub = guarded
    hub.reserve("P1", d.Size.M, RIGHT, RIGHT_COLLECT)
    looked = count_lookups(hub.store)
    codes = [wrong_code(i) for i in range(949)] + [RIGHT]
    outcomes = await asyncio.gather(*(hub.service.enter_code(c, "keypad:1") for c in codes))
    allowed = burst_allowance(POLICY)  # the free attempts, no more: 3
    assert allowed == POLICY.free_attempts == 3
    assert len(looked) == allowed
    assert statuses(outcomes) == {"refused": allowed, "wait": len(codes) - allowed}
    assert outcomes[-1].status == "wait"
    assert outcomes[-1].wait_s == pytest.approx(POLICY.base_delay_s)
    assert all(hub.board.unlocks_of(ch) == 0 for ch in CHANNELS)
    assert hub.parcel("P1") is d.ParcelState.RESERVED
    assert hub.service.wrong_codes["keypad:1"] == allowed

    # once the wait is over the right code opens, and is not counted
    hub.now[0] += outcomes[-1].wait_s
    before = hub.service.throttle.snapshot(hub.now[0])
    opened = await hub.service.enter_code(RIGHT, "keypad:1")
    assert opened.status == "opened", opened
    assert hub.service.throttle.snapshot(hub.now[0]) == before
    assert len(looked) == allowed + 1


async def test_bursts_on_many_terminals_stop_at_the_hub_wide_limit(guarded: SimHub) -> None:
    hub = guarded
    hub.reserve("P1", d.Size.M, RIGHT, RIGHT_COLLECT)
    looked = count_lookups(hub.store)
    terminals = [f"keypad:{n}" for n in range(1, 9)]
    per_terminal = 125
    requests = [  # interleaved, as a crowd of scripts would send them
        (wrong_code(i * len(terminals) + n), terminal)
        for i in range(per_terminal)
        for n, terminal in enumerate(terminals)
    ]
    requests[-1] = (RIGHT, terminals[-1])  # the right code comes last
    outcomes = await asyncio.gather(*(hub.service.enter_code(c, t) for c, t in requests))
    allowed = burst_allowance(POLICY, len(terminals))
    assert allowed == POLICY.hub_wide_per_hour == 20  # not 8 x 3
    assert len(looked) == allowed
    assert statuses(outcomes) == {"refused": allowed, "wait": len(requests) - allowed}
    assert all(hub.board.unlocks_of(ch) == 0 for ch in CHANNELS)
    assert hub.parcel("P1") is d.ParcelState.RESERVED
    assert hub.events().count("code_guessing_hub_wide") == 1
    late = await hub.service.enter_code(RIGHT, "keypad:99")  # even a fresh keypad waits
    assert (late.status, late.wait_s) == ("wait", POLICY.max_delay_s)


def readme_throttle() -> tuple[int, float]:
    """What the README's "Codes and guessing" says: the free wrong codes, the first wait."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    free = re.search(r"the first (\d+) are free", readme)
    wait = re.search(r"after the \w+ comes a wait of (\d+) s", readme)
    assert free is not None
    assert wait is not None
    return int(free.group(1)), float(wait.group(1))


async def test_wrong_codes_typed_one_after_another_get_what_the_readme_says(
    guarded: SimHub,
) -> None:
    """Issue 12 says the throttle frees 4 wrong codes, not the README's 3. Typed one
    after another (each answered before the next, a person's second apart), the
    default policy checks 3; the 4th is told to wait out the 2 s after the 3rd; once
    it has, it is checked, and the wait after it is 4 s. (4 in a row are checked only
    by someone who takes more than 2 s over the 4th: the README's "wait of 2 s".)"""
    hub = guarded
    looked = count_lookups(hub.store)
    free, base = readme_throttle()
    assert (free, base) == (POLICY.free_attempts, POLICY.base_delay_s) == (3, 2.0)
    outcomes = []
    for i in range(free + 1):
        outcomes.append(await hub.service.enter_code(wrong_code(i), "keypad:1"))
        hub.now[0] += 0.5
    assert [o.status for o in outcomes] == ["refused"] * free + ["wait"]
    assert len(looked) == free  # checked before the first delay: the README's 3
    assert outcomes[-1].wait_s == pytest.approx(base - 0.5 * free + 1.0)  # 2 s after the 3rd
    hub.now[0] += outcomes[-1].wait_s
    fourth = await hub.service.enter_code(wrong_code(free), "keypad:1")
    assert fourth.status == "refused"
    assert len(looked) == free + 1
    fifth = await hub.service.enter_code(wrong_code(free + 1), "keypad:1")
    assert (fifth.status, fifth.wait_s) == ("wait", 2 * base)  # doubled


async def test_a_right_code_that_cannot_open_now_is_told_so_and_counted(guarded: SimHub) -> None:
    """ADR 0013: the message tells a code is valid, so the attempt is counted."""
    hub = guarded
    hub.reserve("P1", d.Size.XL, "11110000", "11119999")
    hub.reserve("P2", d.Size.XL, RIGHT, RIGHT_COLLECT)
    first = await hub.service.enter_code("11110000", "keypad:1")
    assert (first.status, first.compartment) == ("opened", "A04")  # the only XL: in use
    free = POLICY.free_attempts
    outcomes = [await hub.service.enter_code(RIGHT, "keypad:2") for _ in range(free + 2)]
    no_room = d.terminal_message(d.Refusal.NO_COMPARTMENT)
    assert [o.message for o in outcomes[:free]] == [no_room] * free
    # counted like wrong codes: 3 checked, then a wait (2 s, not yet over)
    assert [(o.status, o.wait_s) for o in outcomes[free:]] == [("wait", POLICY.base_delay_s)] * 2
    assert hub.service.wrong_codes["keypad:2"] == 0  # not wrong codes, though
    assert hub.parcel("P2") is d.ParcelState.RESERVED


async def test_a_check_that_fails_half_way_stays_counted(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        hub = await make_hub(stack, tmp_path)
        hub.service.throttle = Throttle(ThrottlePolicy(alarm_after=1))
        real = hub.store.code

        def broken(code_hash: str) -> tuple[d.Parcel, d.Purpose] | None:
            hub.store.code = real  # type: ignore[method-assign]
            raise RuntimeError("the store failed mid-lookup")

        hub.store.code = broken  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="mid-lookup"):
            await hub.service.enter_code(wrong_code(1), "keypad:1")
        terminals = hub.service.throttle.state(hub.now[0])["terminals"]
        assert terminals == {"keypad:1": {"wrong_in_window": 1, "wait_s": 0.0}}
        await eventually(lambda: "code_guessing" in hub.events(), what="the alarm committed")


async def test_thousands_of_wrong_codes_in_one_window_never_overflow(tmp_path: Path) -> None:
    """Past 1,027 wrong codes the old delay overflowed: `internal` errors, no alarms."""
    policy = ThrottlePolicy(window_s=1e9, hub_wide_per_hour=10**6, alarm_after=4_000)
    async with contextlib.AsyncExitStack() as stack:
        hub = await make_hub(stack, tmp_path)
        hub.service.throttle = Throttle(policy)
        refused = waits = 0
        while refused < 5_000:
            out = await hub.service.enter_code(wrong_code(refused), "keypad:1")
            if out.status == "wait":
                waits += 1
                assert 0 < out.wait_s <= policy.max_delay_s
                hub.now[0] += out.wait_s  # the guesser comes back the moment it may
            else:
                assert out.status == "refused", out
                refused += 1
        assert waits == refused - burst_allowance(policy)
        assert hub.service.throttle.wait("keypad:1", hub.now[0]) == policy.max_delay_s
        assert hub.events().count("code_guessing") == 1  # at the 4,000th


# ======================================================================================
# The pure throttle under random interleavings
# ======================================================================================

Result = Literal["wrong", "right", "cannot"]


@dataclass(frozen=True)
class Arrive:
    terminal: int
    after_s: float  # since the previous arrival (the fake clock)
    result: Result  # what the lookup will find


@dataclass(frozen=True)
class Settle:
    pick: int  # which of the attempts in flight finishes now (modulo their number)


Op = Arrive | Settle
TERMINALS = 5

policies = st.builds(
    lambda free, base, top, hub, window, alarm: ThrottlePolicy(
        free_attempts=free,
        base_delay_s=base,
        max_delay_s=max(base, top),
        hub_wide_per_hour=hub,
        window_s=window,
        alarm_after=alarm,
    ),
    st.integers(1, 4),
    st.sampled_from([0.5, 1.0, 2.0, 5.0]),
    st.sampled_from([4.0, 10.0, 60.0, 300.0]),
    st.integers(1, 12),
    st.sampled_from([20.0, 100.0, 600.0, 3600.0]),
    st.integers(1, 10),
)
arrivals = st.builds(
    Arrive,
    st.integers(0, TERMINALS - 1),
    st.sampled_from([0.0, 0.0, 0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 7.0, 30.0, 120.0, 400.0]),
    st.sampled_from(["wrong", "wrong", "right", "cannot"]),
)
schedules = st.lists(st.one_of(arrivals, arrivals, st.builds(Settle, st.integers(0, 64))))


@dataclass
class Run:
    throttle: Throttle
    now: float = 0.0
    checked: int = 0  # codes that got to the lookup
    guesses: int = 0  # of those, the ones that stay counted (wrong, or cannot open now)
    counted: list[tuple[str, float]] | None = None  # (terminal, at) of each, in begin order


def run(
    policy: ThrottlePolicy,
    ops: list[Op],
    *,
    concurrent: bool,
    on_refund: Callable[[Throttle, float], None] | None = None,
) -> Run:
    """The schedule against one throttle: with ``concurrent`` each admitted attempt
    stays in flight until a Settle picks it (or the end); else it settles at once."""
    r = Run(Throttle(policy), counted=[])
    flight: list[tuple[Attempt, Result]] = []

    def settle(attempt: Attempt, result: Result) -> None:
        if result == "right":
            attempt.refund()
            if on_refund is not None:
                on_refund(r.throttle, r.now)
        else:
            attempt.wrong()
            r.guesses += 1

    for op in ops:
        if isinstance(op, Arrive):
            r.now += op.after_s
            attempt = r.throttle.begin(f"t{op.terminal}", r.now)
            if isinstance(attempt, Attempt):
                r.checked += 1
                assert r.counted is not None
                if op.result != "right":
                    r.counted.append((attempt.terminal, attempt.at))
                if concurrent:
                    flight.append((attempt, op.result))
                else:
                    settle(attempt, op.result)
            else:
                assert attempt > 0
        elif flight:
            settle(*flight.pop(op.pick % len(flight)))
    for attempt, result in flight:
        settle(attempt, result)
    return r


def windows(view: tuple[WindowView, dict[str, WindowView]]) -> object:
    """The attempts in every window, without the alarms' once-per-crossing flags."""
    hub, terminals = view
    return hub[0], {name: w[0] for name, w in terminals.items()}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies, schedules)
def test_no_interleaving_gets_more_codes_checked_than_the_sequential_model(
    policy: ThrottlePolicy, ops: list[Op]
) -> None:
    concurrent = run(policy, ops, concurrent=True)
    sequential = run(policy, ops, concurrent=False)
    # the same arrivals one after another: never fewer guesses than in flight together
    assert concurrent.guesses <= sequential.guesses
    # nor more than an attacker at every terminal, every moment allowed, over the span
    assert concurrent.guesses <= most_guesses(
        policy, TERMINALS, math.nextafter(concurrent.now, math.inf)
    )
    # whatever was refunded left no trace: the windows hold exactly the counted guesses
    replay = Throttle(policy)
    assert concurrent.counted is not None
    for terminal, at in concurrent.counted:
        attempt = replay.begin(terminal, at)
        assert isinstance(attempt, Attempt)  # a subset of what was admitted: admitted
        attempt.wrong()
    assert windows(replay.snapshot(concurrent.now)) == windows(
        concurrent.throttle.snapshot(concurrent.now)
    )


@settings(max_examples=200, deadline=None)
@given(policies, schedules)
def test_a_refund_at_once_leaves_the_state_exactly_as_it_was(
    policy: ThrottlePolicy, ops: list[Op]
) -> None:
    def begin_and_refund(throttle: Throttle, now: float) -> None:
        for terminal in ("t0", f"t{TERMINALS}"):  # one that guessed, one never seen
            before = throttle.snapshot(now)
            attempt = throttle.begin(terminal, now)
            if isinstance(attempt, Attempt):
                attempt.refund()
            assert throttle.snapshot(now) == before

    run(policy, ops, concurrent=True, on_refund=begin_and_refund)
    run(policy, ops, concurrent=False, on_refund=begin_and_refund)
