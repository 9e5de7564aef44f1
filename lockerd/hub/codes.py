"""Codes: keyed hashes, the per-hub key, and throttling of wrong codes.

A code is never stored, logged or sent: only ``HMAC-SHA256(key, code)`` is. The key
lives in a file readable only by the daemon (0600); the cloud computes the same
hashes with the same per-hub key (docs: the cloud guide). Lookups go by hash
through an index: the time a lookup takes depends only on the hash, which an
attacker cannot compute without the key, so it leaks nothing about codes; where a
hash is compared with a stored one, the comparison is constant-time.

Throttling (pure; time is passed in): every terminal may enter a few wrong codes
one right after another; after the last of them comes a wait, which each wrong code
after that doubles, up to a ceiling; and when the whole hub sees more wrong codes
per hour than its policy allows, every terminal waits the ceiling. Past a
threshold, an alarm event. A code is checked only after
:meth:`Throttle.begin` has decided and counted the attempt in one step, so requests
in flight together are throttled as if they came one after another; a right code
that opens is refunded. What this leaves an attacker is computed by
:func:`guesses_per_day` (the README quotes it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from lockerd.config import ThrottlePolicy
from lockerd.errors import LockerdError
from lockerd.hub.domain import Event

KEY_BYTES = 32


class KeyFileError(LockerdError):
    """The code key is missing, unreadable, too short or readable by others."""


def normalise(code: str) -> str:
    """What the keypad sends, as it is hashed: digits only (spaces and dashes dropped)."""
    return "".join(ch for ch in code if ch.isdigit())


class CodeHasher:
    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise KeyFileError(f"the code key has {len(key)} bytes; it needs {KEY_BYTES}")
        self._key = key

    def hash(self, code: str) -> str:
        return hmac.new(self._key, normalise(code).encode(), hashlib.sha256).hexdigest()

    def matches(self, code: str, stored_hash: str) -> bool:
        return hmac.compare_digest(self.hash(code), stored_hash)


def new_code(length: int) -> str:
    """A uniformly random code of ``length`` digits (for the demo and the cloud tool)."""
    return "".join(str(secrets.randbelow(10)) for _ in range(length))


def create_key(path: Path) -> None:
    """Write a new random key, mode 0600; never overwrites an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists already; a key is never overwritten") from None
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(KEY_BYTES))


def load_key(path: Path) -> bytes:
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"{path} is open to others (mode {st.st_mode & 0o777:o}): chmod 600 {path}"
            )
        key = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(
            f"{path} does not exist: create it with `lockerd keygen {path}`"
        ) from None
    except PermissionError:
        raise KeyFileError(f"{path} is not readable by this user") from None
    if len(key) < KEY_BYTES:
        raise KeyFileError(f"{path} holds {len(key)} bytes; a key has at least {KEY_BYTES}")
    return key


# ======================================================================================
# Throttling
# ======================================================================================


WindowView = tuple[tuple[tuple[float, bool], ...], bool]
MAX_DOUBLINGS = 62  # the exponent's cap: base * 2**62 is past any ceiling, never an overflow


@dataclass(eq=False)  # compared by identity: two attempts at one instant are two entries
class _Entry:
    at: float
    counted: bool = False  # settled as a guess; until then the attempt is in flight


@dataclass
class _Window:
    """The attempts of one terminal (or of the whole hub) within the policy's window,
    oldest first: the counted ones and those in flight alike."""

    entries: deque[_Entry] = field(default_factory=deque)
    counted: int = 0
    alarmed: bool = False

    def prune(self, now: float, window_s: float) -> None:
        while self.entries and self.entries[0].at <= now - window_s:
            if self.entries.popleft().counted:
                self.counted -= 1
        if not self.entries:
            self.alarmed = False  # the next crossing is a new one

    def remove(self, entry: _Entry) -> None:
        for i in range(len(self.entries) - 1, -1, -1):  # usually the newest
            if self.entries[i] is entry:
                del self.entries[i]
                return


class Attempt:
    """A code reserved for checking on ``terminal``. It counts, for that terminal and
    for the hub, from :meth:`Throttle.begin` on; settle it once: :meth:`refund` (a
    right code that opened, or a refusal that is not a guess) or :meth:`wrong`."""

    def __init__(self, throttle: Throttle, terminal: str, entry: _Entry) -> None:
        self._throttle = throttle
        self.terminal = terminal
        self._entry = entry
        self.settled = False

    @property
    def at(self) -> float:
        return self._entry.at

    def refund(self) -> None:
        """As if the attempt had never been made (the waits and the windows)."""
        if not self.settled:
            self.settled = True
            self._throttle._refund(self.terminal, self._entry)

    def wrong(self) -> list[Event]:
        """The attempt stays counted as a guess: the alarm events it raises (once per
        crossing of a threshold)."""
        if self.settled:
            return []
        self.settled = True
        return self._throttle._counted(self.terminal, self._entry)


class Throttle:
    """Guesses, per terminal and for the hub as a whole.

    A code is checked only through :meth:`begin`, which decides and counts in one
    step, so that a request arriving while others are being checked already sees
    them. A terminal's wait follows from its window alone: its last attempt plus
    :meth:`delay` of the attempts in the window; the hub's, from the hub's window.
    Nothing else is kept but the alarms' once-per-crossing flags, which only a
    counted guess sets: a refund leaves exactly the state without the attempt.
    """

    def __init__(self, policy: ThrottlePolicy) -> None:
        self.policy = policy
        self._terminals: dict[str, _Window] = {}
        self._hub = _Window()

    def delay(self, attempts: int) -> float:
        """The wait after a terminal's ``attempts``-th attempt in the window: none
        after the first ``free_attempts - 1``, ``base_delay_s`` after the
        ``free_attempts``-th (so that many, and no more, are checked one right after
        another: a burst's allowance), then doubling with each attempt up to
        ``max_delay_s``."""
        over = attempts - self.policy.free_attempts
        if over < 0:
            return 0.0
        doubled = self.policy.base_delay_s * 2.0 ** min(over, MAX_DOUBLINGS)
        return min(doubled, self.policy.max_delay_s)

    def _window(self, terminal: str, now: float) -> _Window | None:
        t = self._terminals.get(terminal)
        if t is not None:
            t.prune(now, self.policy.window_s)
            if not t.entries:
                del self._terminals[terminal]
                return None
        return t

    def wait(self, terminal: str, now: float) -> float:
        """Seconds ``terminal`` must still wait before a code is checked (0: go), to
        the first moment it may go if nothing else is attempted meanwhile: attempts
        that leave the window on the way count. A look only: a code is checked
        through :meth:`begin`."""
        ready = now
        window_s = self.policy.window_s
        if (t := self._window(terminal, now)) is not None:
            ready = self._terminal_ready(t.entries, now)
        hub = self._hub.entries
        self._hub.prune(now, window_s)
        over = len(hub) - self.policy.hub_wide_per_hour
        if over >= 0:  # until the last one's ceiling, or until enough have left the window
            ready = max(ready, min(hub[-1].at + self.policy.max_delay_s, hub[over].at + window_s))
        return max(0.0, ready - now)

    def _terminal_ready(self, entries: deque[_Entry], now: float) -> float:
        """When a terminal with these attempts in its window may go: its last attempt
        plus the delay of their count, the count falling as the oldest leave."""
        last, window_s = entries[-1].at, self.policy.window_s
        start = now
        for i, oldest in enumerate(entries):  # i of them have left the window
            ready = max(start, last + self.delay(len(entries) - i))
            leaves = oldest.at + window_s
            if ready < leaves:
                return ready
            start = leaves
        return start

    def begin(self, terminal: str, now: float) -> Attempt | float:
        """Either the seconds to wait (> 0; nothing counted) or the attempt, counted
        from now on for ``terminal`` and the hub: settle it after the lookup."""
        wait = self.wait(terminal, now)
        if wait > 0:
            return wait
        entry = _Entry(now)
        self._terminals.setdefault(terminal, _Window()).entries.append(entry)
        self._hub.entries.append(entry)
        return Attempt(self, terminal, entry)

    def _refund(self, terminal: str, entry: _Entry) -> None:
        self._hub.remove(entry)
        t = self._terminals.get(terminal)
        if t is not None:
            t.remove(entry)
            if not t.entries:
                del self._terminals[terminal]

    def _counted(self, terminal: str, entry: _Entry) -> list[Event]:
        entry.counted = True
        events: list[Event] = []
        now, window_s = entry.at, self.policy.window_s
        t = self._terminals.get(terminal)
        if t is not None and any(e is entry for e in reversed(t.entries)):
            t.counted += 1
            t.prune(now, window_s)
            if t.counted >= self.policy.alarm_after and not t.alarmed:
                t.alarmed = True
                events.append(
                    Event(
                        "code_guessing",
                        {"terminal": terminal, "wrong": t.counted, "window_s": window_s},
                    )
                )
            if t.counted < self.policy.alarm_after:
                t.alarmed = False
        hub = self._hub
        if any(e is entry for e in reversed(hub.entries)):
            hub.counted += 1
            hub.prune(now, window_s)
            if hub.counted >= self.policy.hub_wide_per_hour and not hub.alarmed:
                hub.alarmed = True
                events.append(
                    Event("code_guessing_hub_wide", {"wrong": hub.counted, "window_s": window_s})
                )
            if hub.counted < self.policy.hub_wide_per_hour:
                hub.alarmed = False
        return events

    def state(self, now: float) -> dict[str, object]:
        waits = {name: self.wait(name, now) for name in list(self._terminals)}
        return {
            "hub_wrong_in_window": len(self._hub.entries),
            "terminals": {
                name: {"wrong_in_window": len(t.entries), "wait_s": round(waits[name], 1)}
                for name, t in self._terminals.items()
            },
        }

    def snapshot(self, now: float) -> tuple[WindowView, dict[str, WindowView]]:
        """The whole state at ``now``, comparable: the hub's window and each terminal's,
        as ((time, counted) of every attempt, alarmed). For tests and the benchmark."""
        for name in list(self._terminals):
            self._window(name, now)
        self._hub.prune(now, self.policy.window_s)

        def view(w: _Window) -> WindowView:
            return (tuple((e.at, e.counted) for e in w.entries), w.alarmed)

        return view(self._hub), {name: view(t) for name, t in self._terminals.items()}


def _attempt_all(throttle: Throttle, names: list[str], now: float) -> int:
    """Every attempt each terminal is allowed at ``now``, one after another (as a
    burst is: each is counted before the next is decided), all wrong."""
    count = 0
    for name in names:
        while isinstance(attempt := throttle.begin(name, now), Attempt):
            attempt.wrong()
            count += 1
    return count


def burst_allowance(policy: ThrottlePolicy, terminals: int = 1) -> int:
    """The codes a fresh hub checks for a burst of any size on ``terminals`` terminals
    at one instant: the free attempts on each terminal (the first wait comes after
    the last of them), no more than the hub-wide limit in all."""
    return _attempt_all(Throttle(policy), [f"t{i}" for i in range(terminals)], 0.0)


def most_guesses(policy: ThrottlePolicy, terminals: int, seconds: float) -> int:
    """The most codes an attacker gets checked in ``seconds`` (from a fresh hub;
    attempts at 0 <= t < seconds): every attempt at the first moment it is allowed,
    on every terminal at once, bursts included (the service checks a code only
    through :meth:`Throttle.begin`, so a burst gets what this sequence gets)."""
    throttle = Throttle(policy)
    names = [f"t{i}" for i in range(terminals)]
    now, count = 0.0, 0
    while now < seconds:
        count += _attempt_all(throttle, names, now)
        now += min(throttle.wait(name, now) for name in names)  # each > 0 now
    return count


def guesses_per_day(policy: ThrottlePolicy, terminals: int = 1) -> int:
    """The most wrong codes an attacker gets checked in 24 h (see :func:`most_guesses`)."""
    return most_guesses(policy, terminals, 86_400.0)
