"""Codes: keyed hashes, the key file, and the throttle that makes guessing impractical."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from lockerd.codes import (
    CodeHasher,
    KeyFileError,
    Throttle,
    ThrottlePolicy,
    create_key,
    guesses_per_day,
    load_key,
    new_code,
    normalise,
)

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


def test_a_terminal_gets_a_few_free_tries_then_doubling_waits() -> None:
    t = Throttle(ThrottlePolicy(free_attempts=3, base_delay_s=2, max_delay_s=16))
    now = 0.0
    for _ in range(3):
        assert t.wait("kiosk", now) == 0
        t.wrong("kiosk", now)
    waits = []
    for _ in range(5):
        now += 0.1
        t.wrong("kiosk", now)
        waits.append(t.wait("kiosk", now))
    assert waits == pytest.approx([2.0, 4.0, 8.0, 16.0, 16.0])  # doubling, capped
    assert t.wait("other-kiosk", now) == 0  # per terminal


def test_wrong_codes_age_out_of_the_window() -> None:
    policy = ThrottlePolicy(free_attempts=1, base_delay_s=5, window_s=60)
    t = Throttle(policy)
    t.wrong("kiosk", 0)
    t.wrong("kiosk", 1)
    assert t.wait("kiosk", 1) == 5
    t.wrong("kiosk", 100)  # the earlier two are out of the window: this is the first again
    assert t.wait("kiosk", 100) == 0


def test_an_alarm_once_past_the_threshold_then_again_after_the_window() -> None:
    t = Throttle(ThrottlePolicy(alarm_after=4, window_s=60, hub_wide_per_hour=1000))
    fired = [e.type for i in range(6) for e in t.wrong("kiosk", float(i))]
    assert fired == ["code_guessing"]
    assert fired == [e.type for i in range(6) for e in t.wrong("kiosk", 200.0 + i)]


def test_hub_wide_guessing_slows_every_terminal() -> None:
    t = Throttle(ThrottlePolicy(free_attempts=100, hub_wide_per_hour=5, max_delay_s=300))
    events = [e.type for i in range(5) for e in t.wrong(f"kiosk{i}", float(i))]
    assert events == ["code_guessing_hub_wide"]
    assert t.wait("a-fresh-terminal", 5.0) == pytest.approx(299.0)


def test_what_the_default_policy_leaves_an_attacker() -> None:
    """The README's figure: a per-hub ceiling, whatever the number of terminals."""
    one = guesses_per_day(ThrottlePolicy(), terminals=1)
    many = guesses_per_day(ThrottlePolicy(), terminals=10)
    assert one < 300
    assert many < 500  # the hub-wide limit, not 10x one terminal
