"""Codes: keyed hashes, the per-hub key, and throttling of wrong codes.

A code is never stored, logged or sent: only ``HMAC-SHA256(key, code)`` is. The key
lives in a file readable only by the daemon (0600); the cloud computes the same
hashes with the same per-hub key (docs: the cloud guide). Lookups go by hash
through an index: the time a lookup takes depends only on the hash, which an
attacker cannot compute without the key, so it leaks nothing about codes; where a
hash is compared with a stored one, the comparison is constant-time.

Throttling (pure; time is passed in): every terminal may enter a few wrong codes
freely; after that each wrong code doubles its wait, up to a ceiling; and when the
whole hub sees more wrong codes per hour than its policy allows, every terminal
waits the ceiling. Past a threshold, an alarm event. What this leaves an attacker
is computed by :func:`guesses_per_day` (the README quotes it).
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

from pydantic import BaseModel, ConfigDict, Field

from lockerd.domain import Event

KEY_BYTES = 32


class KeyFileError(Exception):
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


class ThrottlePolicy(BaseModel):
    """How wrong codes slow a terminal and the hub (embedded in the hub config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    free_attempts: int = Field(
        default=3, ge=1, description="wrong codes a terminal may enter before delays start"
    )
    base_delay_s: float = Field(default=2.0, gt=0, description="first delay; doubles after")
    max_delay_s: float = Field(default=300.0, gt=0, description="longest delay")
    alarm_after: int = Field(
        default=10, ge=1, description="wrong codes from one terminal that raise an alarm"
    )
    hub_wide_per_hour: int = Field(
        default=20,
        ge=1,
        description="wrong codes in the window, all terminals together, after which every "
        "terminal waits the longest delay",
    )
    window_s: float = Field(default=3600.0, gt=0, description="how long a wrong code counts")


@dataclass
class _Terminal:
    wrong: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0
    alarmed: bool = False


class Throttle:
    """Wrong-code bookkeeping for every terminal and the hub as a whole."""

    def __init__(self, policy: ThrottlePolicy) -> None:
        self.policy = policy
        self._terminals: dict[str, _Terminal] = {}
        self._hub: deque[float] = deque()
        self._hub_alarmed = False

    def _prune(self, q: deque[float], now: float) -> None:
        while q and q[0] <= now - self.policy.window_s:
            q.popleft()

    def wait(self, terminal: str, now: float) -> float:
        """Seconds ``terminal`` must still wait before a code is checked (0: go)."""
        t = self._terminals.get(terminal)
        own = max(0.0, t.blocked_until - now) if t else 0.0
        self._prune(self._hub, now)
        if len(self._hub) >= self.policy.hub_wide_per_hour and self._hub:
            hub = max(0.0, self._hub[-1] + self.policy.max_delay_s - now)
            return max(own, hub)
        return own

    def wrong(self, terminal: str, now: float) -> list[Event]:
        """A wrong code from ``terminal``: its next wait grows; alarms past thresholds."""
        t = self._terminals.setdefault(terminal, _Terminal())
        self._prune(t.wrong, now)
        t.wrong.append(now)
        self._prune(self._hub, now)
        self._hub.append(now)
        over = len(t.wrong) - self.policy.free_attempts
        if over > 0:
            delay = min(self.policy.base_delay_s * 2 ** (over - 1), self.policy.max_delay_s)
            t.blocked_until = now + delay
        events: list[Event] = []
        if len(t.wrong) >= self.policy.alarm_after and not t.alarmed:
            t.alarmed = True
            events.append(
                Event(
                    "code_guessing",
                    {"terminal": terminal, "wrong": len(t.wrong), "window_s": self.policy.window_s},
                )
            )
        if len(t.wrong) < self.policy.alarm_after:
            t.alarmed = False
        if len(self._hub) >= self.policy.hub_wide_per_hour and not self._hub_alarmed:
            self._hub_alarmed = True
            events.append(
                Event(
                    "code_guessing_hub_wide",
                    {"wrong": len(self._hub), "window_s": self.policy.window_s},
                )
            )
        if len(self._hub) < self.policy.hub_wide_per_hour:
            self._hub_alarmed = False
        return events

    def state(self, now: float) -> dict[str, object]:
        self._prune(self._hub, now)
        return {
            "hub_wrong_in_window": len(self._hub),
            "terminals": {
                name: {
                    "wrong_in_window": len(t.wrong),
                    "wait_s": round(max(0.0, t.blocked_until - now), 1),
                }
                for name, t in self._terminals.items()
            },
        }


def guesses_per_day(policy: ThrottlePolicy, terminals: int = 1) -> int:
    """The most wrong codes an attacker gets through in 24 h (simulated, worst case:
    every attempt at the first moment it is allowed, every terminal at once)."""
    throttle = Throttle(policy)
    now, end, count = 0.0, 86_400.0, 0
    names = [f"t{i}" for i in range(terminals)]
    while now < end:
        waits = [throttle.wait(n, now) for n in names]
        step = min(waits)
        if step > 0:
            now += step
            continue
        for name in names:  # entries are checked one after another, as the service does
            if throttle.wait(name, now) == 0:
                throttle.wrong(name, now)
                count += 1
        now += 0.001  # a keypad entry takes time; this is generous to the attacker
    return count
