"""Guessing benchmark: what bursts of concurrent codes get checked (issue 10, ADR 0013).

Through ``HubService.enter_code`` with a real SQLite store (the doors are stubs that
report open at once, as in hub_bench: no bus), under the default throttle policy,
with the service's clock a fake one the benchmark moves:

(a) a burst of 1,000 codes in flight together on one fresh terminal, 999 wrong and
    the right code of a stored reservation last: the codes checked (counted at the
    store's lookup), and whether a door opened. Target (issue 10): no more than the
    policy's free attempts (3), which is what it lets one keypad typing at one
    instant, ``burst_allowance`` (the first wait comes after the last free one).
(b) 24 hours of an attacker at 8 terminals who, at every moment the hub allows
    (the replies' ``wait_s`` say when), fires a burst of 125 wrong codes on each of
    them, 1,000 in flight together: the codes checked in the day. Target: what the
    README states for the whole hub (``guesses_per_day``), and at most 500.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import structlog

from bench.common import RESULTS, Figure, InstantDoor, machine, verdict
from lockerd.config import ThrottlePolicy
from lockerd.hub import domain as d
from lockerd.hub.codes import CodeHasher, burst_allowance, guesses_per_day
from lockerd.hub.service import Door, HubService, Outcome
from lockerd.hub.store import Store
from lockerd.logs import configure

KEY = bytes(range(32))
RIGHT = "11112222"
README_HUB_PER_DAY = 491  # README, "Codes and guessing"
PROMISED = 500
DAY = 86_400.0


class _Hub:
    """A service on a real store in ``directory``, a fake clock, lookups counted."""

    def __init__(self, directory: Path, policy: ThrottlePolicy) -> None:
        self.now = 1_000_000.0
        self.store = Store(directory / "hub.db")
        labels = [f"A{i:02d}" for i in range(1, 5)]
        self.store.sync_compartments(d.Compartment(label, d.Size.M) for label in labels)
        hasher = CodeHasher(KEY)
        parcel = d.Parcel(
            "P1", d.Kind.DELIVERY, d.Size.M, deposit_from=0.0, deposit_until=self.now + 10 * DAY
        )
        self.store.add_parcel(
            parcel,
            {d.Purpose.DEPOSIT: hasher.hash(RIGHT), d.Purpose.COLLECT: hasher.hash("33334444")},
            now=self.now,
            actor="bench",
        )
        self.door = InstantDoor()
        self.service = HubService(
            self.store,
            hasher,
            [Door(label, self.door, i + 1) for i, label in enumerate(labels)],  # type: ignore[arg-type]
            throttle=policy,
            open_confirm_s=2.0,
            clock=lambda: self.now,
        )
        self.door.service = self.service
        self.door.labels = {i + 1: label for i, label in enumerate(labels)}
        self.lookups = 0
        real = self.store.code

        def code(code_hash: str) -> tuple[d.Parcel, d.Purpose] | None:
            self.lookups += 1
            return real(code_hash)

        self.store.code = code  # type: ignore[method-assign]

    async def burst(self, requests: list[tuple[str, str]]) -> list[Outcome]:
        return await asyncio.gather(*(self.service.enter_code(c, t) for c, t in requests))

    def close(self) -> None:
        self.service.close()
        self.store.close()


def wrong(i: int) -> str:
    return f"5{i:07d}"


async def one_burst(directory: Path, policy: ThrottlePolicy, size: int) -> list[Figure]:
    hub = _Hub(directory, policy)
    try:
        requests = [(wrong(i), "keypad:1") for i in range(size - 1)] + [(RIGHT, "keypad:1")]
        t = time.perf_counter()
        outcomes = await hub.burst(requests)
        took = time.perf_counter() - t
        statuses = Counter(o.status for o in outcomes)
        allowed = policy.free_attempts  # issue 10's target
        return [
            Figure(
                f"guessing: codes checked in a burst of {size:,} on one terminal",
                hub.lookups,
                "codes",
                f"<= {allowed} (free attempts)",
                hub.lookups <= allowed,
            ),
            Figure(
                "guessing: burst_allowance, the model of that burst (one terminal)",
                burst_allowance(policy),
                "codes",
                f"== {allowed}",
                burst_allowance(policy) == allowed,
            ),
            Figure(
                f"guessing: doors opened by that burst (right code last; {statuses['wait']:,} "
                "told to wait)",
                statuses["opened"],
                "doors",
                "0",
                statuses["opened"] == 0 and hub.door.pulsed_at == 0.0,
            ),
            Figure(f"guessing: the burst of {size:,}, answered in", took * 1e3, "ms"),
        ]
    finally:
        hub.close()


async def a_day_of_bursts(
    directory: Path, policy: ThrottlePolicy, terminals: int, per_terminal: int
) -> list[Figure]:
    hub = _Hub(directory, policy)
    names = [f"keypad:{n}" for n in range(1, terminals + 1)]
    start, bursts, sent, n = hub.now, 0, 0, 0
    t = time.perf_counter()
    try:
        while hub.now < start + DAY:
            requests = []
            for _ in range(per_terminal):
                for name in names:
                    requests.append((wrong(n), name))
                    n += 1
            outcomes = await hub.burst(requests)
            bursts += 1
            sent += len(requests)
            assert not any(o.status == "opened" for o in outcomes)
            # the attacker comes back the moment the first terminal may go again
            hub.now += min(o.wait_s for o in outcomes if o.status == "wait")
        alarms = Counter(
            e.type for e in hub.store.outbox(limit=100_000) if e.type.startswith("code_guessing")
        )
    finally:
        hub.close()
    took = time.perf_counter() - t
    model = guesses_per_day(policy, terminals)
    return [
        Figure(
            f"guessing: codes checked in 24 h, {terminals} terminals, a burst of "
            f"{per_terminal * terminals:,} at every moment allowed",
            hub.lookups,
            "codes/day",
            f"<= {README_HUB_PER_DAY} (README; <= {PROMISED})",
            hub.lookups <= README_HUB_PER_DAY <= PROMISED,
        ),
        Figure(
            "guessing: guesses_per_day, the model the README quotes (whole hub)",
            model,
            "codes/day",
            f"== {README_HUB_PER_DAY}",
            model == README_HUB_PER_DAY,
        ),
        Figure("guessing: that day's bursts", bursts, "bursts"),
        Figure("guessing: that day's requests", sent, "requests"),
        Figure("guessing: that day, simulated in", took, "s"),
        Figure(
            "guessing: alarms raised in that day, hub-wide (one per crossing of the limit)",
            alarms["code_guessing_hub_wide"],
            "alarms",
        ),
        Figure(
            "guessing: alarms raised in that day, per terminal", alarms["code_guessing"], "alarms"
        ),
    ]


async def run(quick: bool) -> list[Figure]:
    policy = ThrottlePolicy()  # the default: the README's figures
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="lockerd-guessbench-") as tmp:
        (Path(tmp) / "a").mkdir()
        figures += await one_burst(Path(tmp) / "a", policy, 1_000)
        (Path(tmp) / "b").mkdir()
        figures += await a_day_of_bursts(Path(tmp) / "b", policy, 8, 25 if quick else 125)
    return figures


def main(quick: bool = False) -> list[Figure]:
    return asyncio.run(run(quick))


def write(figures: list[Figure], command: str) -> Path:
    """bench/results/guess_bench.md: the figures of a run on its own."""

    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Guessing benchmark",
        "",
        f"- when: {when}",
        f"- machine: {machine()}",
        f"- command: `{command}`",
        "",
        "| figure | value | unit | target | |",
        "| --- | ---: | --- | --- | --- |",
        *(f"| {f.name} | {f.value:.3f} | {f.unit} | {f.target} | {verdict(f)} |" for f in figures),
    ]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "guess_bench.md"
    out.write_text("\n".join(lines) + "\n")
    return out


if __name__ == "__main__":
    configure(level="warning", stream=sys.stderr)
    # the alarms the attack raises are counted (a figure), not printed one by one
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    quick = "--quick" in sys.argv
    found = main(quick=quick)
    for f in found:
        print(f"{f.name}: {f.value:.3f} {f.unit} {f.target}")
    print(f"written to {write(found, 'python -m bench.guess_bench' + ' --quick' * quick)}")
