"""Codes: keyed hashes, the key file, and the throttle that makes guessing impractical."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from lockerd.config import ThrottlePolicy
from lockerd.hub.codes import (
    Attempt,
    CodeHasher,
    KeyFileError,
    Throttle,
    burst_allowance,
    create_key,
    guesses_per_day,
    load_key,
    new_code,
    normalise,
)
from lockerd.hub.domain import Event

KEY = bytes(range(32))


def test_a_code_is_stored_as_its_keyed_hash() -> None:
    h = CodeHasher(KEY)
    expected = hmac.new(KEY, b"12345678", hashlib.sha256).hexdigest()
    assert h.hash("1234 5678") == expected  # what the cloud guide tells the cloud to compute
    assert h.hash("1234-5678") == expected
    assert CodeHasher(bytes(32)).hash("12345678") != expected  # another hub, another hash
    assert h.matches("12345678", expected)
    assert not h.matches("12345679", expected)


def test_normalise_keeps_digits_only() -> None:
    assert normalise(" 12-34 56\n78 ") == "12345678"


def test_new_codes_have_the_length_asked_and_vary() -> None:
    codes = {new_code(8) for _ in range(50)}
    assert all(len(c) == 8 and c.isdigit() for c in codes)
    assert len(codes) > 45


def test_a_key_is_created_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "code.key"
    create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    key = load_key(path)
    assert len(key) == 32
    with pytest.raises(KeyFileError, match="never overwritten"):
        create_key(path)
    assert load_key(path) == key


def test_a_bad_key_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="lockerd keygen"):
        load_key(tmp_path / "missing.key")
    loose = tmp_path / "loose.key"
    loose.write_bytes(bytes(32))
    loose.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(loose)
    short = tmp_path / "short.key"
    short.write_bytes(b"tiny")
    short.chmod(0o600)
    with pytest.raises(KeyFileError, match="at least 32"):
        load_key(short)
    with pytest.raises(KeyFileError, match="needs 32"):
        CodeHasher(b"tiny")


def wrong(t: Throttle, terminal: str, now: float) -> list[Event]:
    """A wrong code checked on ``terminal`` at ``now`` (it must be allowed then)."""
    attempt = t.begin(terminal, now)
    assert isinstance(attempt, Attempt), f"{terminal} must wait {attempt} s at {now}"
    return attempt.wrong()


def test_a_terminal_gets_a_few_free_tries_then_doubling_waits() -> None:
    t = Throttle(ThrottlePolicy(free_attempts=3, base_delay_s=2, max_delay_s=16))
    now = 0.0
    for _ in range(2):
        assert t.wait("kiosk", now) == 0
        wrong(t, "kiosk", now)
    wrong(t, "kiosk", now)  # the third free one: the waits start after it
    waits = [t.wait("kiosk", now)]
    for _ in range(4):
        now += t.wait("kiosk", now) + 0.1
        wrong(t, "kiosk", now)
        waits.append(t.wait("kiosk", now))
    assert waits == pytest.approx([2.0, 4.0, 8.0, 16.0, 16.0])  # doubling, capped
    assert t.wait("other-kiosk", now) == 0  # per terminal
    assert t.begin("kiosk", now + 15.9) == pytest.approx(0.1)  # a wait is not counted
    assert t.wait("kiosk", now + 15.9) == pytest.approx(0.1)


def test_wrong_codes_age_out_of_the_window() -> None:
    policy = ThrottlePolicy(free_attempts=2, base_delay_s=5, window_s=60)
    t = Throttle(policy)
    wrong(t, "kiosk", 0)
    wrong(t, "kiosk", 1)
    assert t.wait("kiosk", 1) == 5  # after the second, the last free one
    wrong(t, "kiosk", 100)  # the earlier two are out of the window: this is the first again
    assert t.wait("kiosk", 100) == 0


def test_an_alarm_once_past_the_threshold_then_again_after_the_window() -> None:
    t = Throttle(
        ThrottlePolicy(alarm_after=4, window_s=60, hub_wide_per_hour=1000, free_attempts=100)
    )
    fired = [e.type for i in range(6) for e in wrong(t, "kiosk", float(i))]
    assert fired == ["code_guessing"]
    assert fired == [e.type for i in range(6) for e in wrong(t, "kiosk", 200.0 + i)]


def test_hub_wide_guessing_slows_every_terminal() -> None:
    t = Throttle(ThrottlePolicy(free_attempts=100, hub_wide_per_hour=5, max_delay_s=300))
    events = [e.type for i in range(5) for e in wrong(t, f"kiosk{i}", float(i))]
    assert events == ["code_guessing_hub_wide"]
    assert t.wait("a-fresh-terminal", 5.0) == pytest.approx(299.0)


def test_an_attempt_counts_from_the_moment_it_begins() -> None:
    """Requests in flight together see each other: the race of issue 10."""
    t = Throttle(ThrottlePolicy(free_attempts=3, base_delay_s=2))
    in_flight = [t.begin("kiosk", 0.0) for _ in range(10)]
    attempts = [a for a in in_flight if isinstance(a, Attempt)]
    assert len(attempts) == 3 == burst_allowance(t.policy)  # the free ones, no more
    assert in_flight[3:] == [pytest.approx(2.0)] * 7  # the rest wait; nothing counted
    assert t.state(0.0)["hub_wrong_in_window"] == 3


def test_a_refund_leaves_the_state_as_if_the_attempt_never_was() -> None:
    t = Throttle(ThrottlePolicy(free_attempts=2, base_delay_s=2, alarm_after=2))
    wrong(t, "kiosk", 0.0)  # one free attempt left: "kiosk" may go again at once
    for terminal in ("kiosk", "fresh"):
        before = t.snapshot(1.0)
        attempt = t.begin(terminal, 1.0)
        assert isinstance(attempt, Attempt)
        assert t.snapshot(1.0) != before
        attempt.refund()
        assert t.snapshot(1.0) == before
        assert attempt.wrong() == []  # settled once: a refund stays a refund
        assert t.snapshot(1.0) == before
    assert "fresh" not in t.state(1.0)["terminals"]  # type: ignore[operator]


def test_an_attempt_still_in_flight_raises_no_alarm_only_a_counted_one_does() -> None:
    t = Throttle(ThrottlePolicy(free_attempts=100, hub_wide_per_hour=3))
    right = [t.begin(f"kiosk{i}", 0.0) for i in range(2)]
    assert all(isinstance(a, Attempt) for a in right)
    assert wrong(t, "kiosk9", 0.0) == []  # 3 in the window, only one of them a guess
    assert isinstance(t.begin("kiosk8", 0.0), float)  # but all 3 count for the waits
    for a in right:
        assert isinstance(a, Attempt)
        a.refund()
    assert [e.type for e in wrong(t, "kiosk8", 0.0) + wrong(t, "kiosk7", 0.0)] == [
        "code_guessing_hub_wide"
    ]


def test_thousands_of_wrong_codes_in_the_window_never_overflow_the_wait() -> None:
    policy = ThrottlePolicy(
        base_delay_s=2, max_delay_s=300, window_s=1e9, hub_wide_per_hour=10**6, alarm_after=4_000
    )
    t = Throttle(policy)
    now, alarms = 0.0, []
    for _ in range(5_000):
        alarms += wrong(t, "kiosk", now)
        now += t.wait("kiosk", now)
    assert t.delay(10**9) == 300.0
    assert t.wait("kiosk", now - 1) == pytest.approx(1.0)
    assert [(e.type, e.data["wrong"]) for e in alarms] == [("code_guessing", 4_000)]


def test_what_the_default_policy_leaves_an_attacker() -> None:
    """The README's figures: a per-hub ceiling, whatever the number of terminals.

    One keypad: 3 at once, then 8 more after waits of 2, 4, ..., 256 s (the 11th at
    510 s), then one every 300 s from 810 s to 86,310 s (286): 297. The hub, from 2
    keypads on: its 20 (at once from 7 keypads; by 254 s with 2), then one every
    300 s while those are still in the window (11 more in the first hour), then 20
    in every hour: 31 + 23 x 20 = 491.
    """
    one = guesses_per_day(ThrottlePolicy(), terminals=1)
    many = [guesses_per_day(ThrottlePolicy(), terminals=n) for n in (2, 10, 64)]
    assert one == 3 + 8 + 286 == 297
    assert max(many) == min(many) == 31 + 23 * 20 == 491  # the hub-wide limit, not 10x one
    assert max(many) <= 500  # what the README promises
    assert burst_allowance(ThrottlePolicy(), terminals=1) == 3  # the free attempts
    assert burst_allowance(ThrottlePolicy(), terminals=64) == 20  # the hub-wide limit
