"""Hub benchmark: checking a code through the service with many stored parcels.

The store holds N reservations (100,000 by default; ``--million`` for 1,000,000),
as SQLite on disk with ``synchronous=FULL``. Measured through ``HubService``:
- a wrong code: hash, index lookup, throttle bookkeeping, refusal;
- a right code, without the bus: the door is a stub whose unlock reports the
  door open at once, so the figure is lookup + decision + the intent's commit +
  the outcome's commit (two fsync'd transactions).
Target (issue 3): p99 under 2 ms without the bus.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bus_bench import Figure, percentile
from lockerd import domain as d
from lockerd.codes import CodeHasher, ThrottlePolicy
from lockerd.service import Door, HubService
from lockerd.store import Store


class _InstantDoor:
    """A board whose door is seen open the moment it is unlocked (no bus)."""

    def __init__(self) -> None:
        self.key = "stub@0"
        self.service: HubService | None = None
        self.labels: dict[int, str] = {}

    async def unlock(self, channel: int) -> Any:
        assert self.service is not None
        asyncio.get_running_loop().call_soon(
            lambda: asyncio.ensure_future(self.service.door_changed(self.labels[channel], True))  # type: ignore[union-attr]
        )
        return None


async def run(parcels: int, samples: int) -> list[Figure]:
    tmp = Path(tempfile.mkdtemp(prefix="lockerd-hubbench-"))
    store = Store(tmp / "hub.db")
    labels = [f"A{i:03d}" for i in range(1, samples + 2)]
    store.sync_compartments(d.Compartment(label, d.Size.M) for label in labels)
    hasher = CodeHasher(bytes(range(32)))
    now = time.time()
    t0 = time.perf_counter()
    batch: list[tuple[d.Parcel, dict[d.Purpose, str]]] = []
    for i in range(parcels):
        p = d.Parcel(
            f"P{i}", d.Kind.DELIVERY, d.Size.M, deposit_from=now - 60, deposit_until=now + 86_400
        )
        batch.append(
            (
                p,
                {
                    d.Purpose.DEPOSIT: hasher.hash(f"{i:08d}"),
                    d.Purpose.COLLECT: hasher.hash(f"9{i:07d}"),
                },
            )
        )
        if len(batch) == 50_000:
            store.add_parcels(batch, now=now, actor="bench")
            batch = []
    if batch:
        store.add_parcels(batch, now=now, actor="bench")
    load_s = time.perf_counter() - t0
    door = _InstantDoor()
    service = HubService(
        store,
        hasher,
        [Door(label, door, i + 1) for i, label in enumerate(labels)],  # type: ignore[arg-type]
        throttle=ThrottlePolicy(free_attempts=10**9, hub_wide_per_hour=10**9, alarm_after=10**9),
        open_confirm_s=2.0,
    )
    door.service = service
    door.labels = {i + 1: label for i, label in enumerate(labels)}
    wrong, right = [], []
    for i in range(samples):
        t = time.perf_counter()
        out = await service.enter_code(f"7{i:07d}", "bench")
        wrong.append(time.perf_counter() - t)
        assert out.status == "refused"
    for i in range(samples):
        t = time.perf_counter()
        out = await service.enter_code(f"{i:08d}", "bench")
        right.append(time.perf_counter() - t)
        assert out.status == "opened", out
    service.close()
    store.close()
    label = f"{parcels:,} parcels"
    return [
        Figure(f"enter-code, {label}: store load (bulk)", load_s, "s"),
        Figure(f"enter-code, {label}: wrong code p50", percentile(wrong, 0.5) * 1e3, "ms"),
        Figure(
            f"enter-code, {label}: wrong code p99",
            percentile(wrong, 0.99) * 1e3,
            "ms",
            "< 2 ms",
            percentile(wrong, 0.99) < 0.002,
        ),
        Figure(
            f"enter-code, {label}: right code to door open, no bus p50",
            percentile(right, 0.5) * 1e3,
            "ms",
        ),
        Figure(
            f"enter-code, {label}: right code to door open, no bus p99",
            percentile(right, 0.99) * 1e3,
            "ms",
            "< 2 ms",
            percentile(right, 0.99) < 0.002,
        ),
    ]


def main(quick: bool = False, million: bool = False) -> list[Figure]:
    figures = asyncio.run(run(10_000 if quick else 100_000, 200 if quick else 1000))
    if million:
        figures += asyncio.run(run(1_000_000, 1000))
    return figures


if __name__ == "__main__":
    for f in main(quick="--quick" in sys.argv, million="--million" in sys.argv):
        print(f"{f.name}: {f.value:.3f} {f.unit} {f.target}")
