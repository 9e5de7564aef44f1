"""What the benchmarks share: a figure and how it is printed, percentiles, the machine
a run was on, the disk's floor, a door with no bus, a stall meter for door handling,
and a store loaded with many parcels. A benchmark module imports other benchmark code
only from here (tests/test_layout.py checks it); bench/__main__.py runs them all.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import platform
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockerd.demo.ports import simulators
from lockerd.hub import domain as d
from lockerd.hub.codes import CodeHasher
from lockerd.hub.service import HubService
from lockerd.hub.store import Store

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 50_000  # parcels a transaction in load_parcels


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.node()}: {os.cpu_count()} cores, {cpu}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def verdict(f: Figure) -> str:
    if f.ok is None:
        return ""
    return "met" if f.ok else "NOT met"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def deposit_code(i: int) -> str:
    """Parcel ``i``'s deposit code (8 digits; ``0`` first for i < 10,000,000)."""
    return f"{i:08d}"


def collect_code(i: int) -> str:
    return f"9{i:07d}"


def load_parcels(store: Store, key: bytes, n: int, now: float) -> float:
    """Reserve parcels ``P0000000``.. with their deposit and collect codes, in bulk.

    Hashes as ``CodeHasher`` does (HMAC-SHA256 of the digits), from a keyed HMAC
    copied per code rather than set up per code (half the cost; checked equal).
    Returns the seconds taken.
    """
    base = hmac.new(key, digestmod=hashlib.sha256)

    def hashed(code: str) -> str:
        h = base.copy()
        h.update(code.encode())
        return h.hexdigest()

    hasher = CodeHasher(key)
    assert hashed(deposit_code(0)) == hasher.hash(deposit_code(0))
    assert hashed(collect_code(0)) == hasher.hash(collect_code(0))
    deposit, collect = d.Purpose.DEPOSIT, d.Purpose.COLLECT
    t0 = time.perf_counter()
    for lo in range(0, n, BATCH):
        items = [
            (
                d.Parcel(
                    f"P{i:07d}",
                    d.Kind.DELIVERY,
                    d.Size.M,
                    deposit_from=now - 60,
                    deposit_until=now + 86_400,
                ),
                {deposit: hashed(deposit_code(i)), collect: hashed(collect_code(i))},
            )
            for i in range(lo, min(n, lo + BATCH))
        ]
        store.add_parcels(items, now=now, actor="bench")
    return time.perf_counter() - t0


class FsyncFloor:
    """The disk's floor: a one-row INSERT committed in SQLite (WAL, synchronous=FULL),
    in its own database next to the store; measured interleaved with the samples, so
    both see the same disk (a shared machine's disk load comes and goes)."""

    def __init__(self, directory: Path) -> None:
        self.one: list[float] = []  # one commit (seconds)
        self.two: list[float] = []  # two commits back to back
        self._db = sqlite3.connect(
            directory / "floor.db", isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, at REAL NOT NULL) STRICT")
        for _ in range(20):  # warm up: the WAL file exists, its pages are cached
            self._commit()

    def _commit(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("INSERT INTO t(at) VALUES(?)", (time.time(),))
        self._db.execute("COMMIT")

    def sample(self) -> None:
        t = time.perf_counter()
        self._commit()
        self.one.append(time.perf_counter() - t)
        t = time.perf_counter()
        self._commit()
        self._commit()
        self.two.append(time.perf_counter() - t)

    def close(self) -> None:
        self._db.close()


class InstantDoor:
    """A board whose door is seen open the moment it is unlocked (no bus)."""

    def __init__(self) -> None:
        self.key = "stub@0"
        self.service: HubService | None = None
        self.labels: dict[int, str] = {}
        self.pulsed_at = 0.0  # perf_counter() of the last unlock() call
        self.commit_s = 0.0  # how long the intent's COMMIT took (the store's last commit)

    async def unlock(self, channel: int) -> Any:
        self.pulsed_at = time.perf_counter()
        assert self.service is not None
        self.commit_s = self.service.store.last_commit_s
        asyncio.get_running_loop().call_soon(
            lambda: asyncio.ensure_future(self.service.door_changed(self.labels[channel], True))  # type: ignore[union-attr]
        )
        return None


class DoorStall:
    """How long door handling stalls while something else runs: the event loop's worst
    lateness, the longest poll cycle, and the slowest door change the service handled,
    while a person opens and shuts a door every 100 ms (its debounced change waits its
    turn behind whatever holds the loop or the store: that wait is the stall)."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.lag = 0.0
        self.door_worst = 0.0
        self.cycle = 0.0
        self._done = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for poller in self.hub.monitor.pollers:  # the first readings are in first
            await asyncio.wait_for(poller.cycle_done.wait(), 10)
            poller.stats.max_cycle_s = 0.0
        real = self.hub.service.door_changed

        async def timed(label: str, is_open: bool, occupied: bool | None = None) -> None:
            t = time.perf_counter()
            await real(label, is_open, occupied)
            self.door_worst = max(self.door_worst, time.perf_counter() - t)

        self.hub.service.door_changed = timed
        self._tasks = [asyncio.create_task(self._watch_loop()), asyncio.create_task(self._person())]

    async def stop(self) -> None:
        self._done.set()
        await asyncio.gather(*self._tasks)
        self.cycle = max(p.stats.max_cycle_s for p in self.hub.monitor.pollers)

    async def _watch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._done.is_set():
            t = loop.time()
            await asyncio.sleep(0.005)
            self.lag = max(self.lag, loop.time() - t - 0.005)

    async def _person(self) -> None:
        board = simulators(self.hub)["A"].board(0)
        is_open = False
        while not self._done.is_set():
            is_open = not is_open
            (board.open_door if is_open else board.close_door)(24)
            await asyncio.sleep(0.1)

    @property
    def worst(self) -> float:
        return max(self.lag, self.cycle, self.door_worst)

    def figures(self, what: str) -> list[Figure]:
        return [
            Figure(f"{what}: worst event-loop lateness", self.lag * 1e3, "ms"),
            Figure(f"{what}: longest poll cycle", self.cycle * 1e3, "ms"),
            Figure(f"{what}: slowest door change handled", self.door_worst * 1e3, "ms"),
            Figure(
                f"{what}: longest stall of door handling",
                self.worst * 1e3,
                "ms",
                "< 100 ms",
                self.worst < 0.1,
            ),
        ]
