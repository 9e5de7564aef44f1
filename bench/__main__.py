"""``python -m bench [--quick] [--million] [--campaign N]``: run every benchmark, print and
write the figures.

bus_bench (the hardware layer), hub_bench (enter-code through the service with many
stored parcels; ``--million`` adds 1,000,000), e2e_bench (API request to the unlock
frame on the demo hub), startup_bench (daemon start-up and peak RSS, 1,000
compartments and 100,000 parcels), cloud_bench (outbox drain against a bare aiomqtt loop;
codes.bulk of 100,000 while doors are handled), bounds_bench (the loop's stall and the
daemon's peak RSS under commands at the size limit), guess_bench (codes checked in a
burst of 1,000 on one terminal, and in a day of bursts on 8 terminals), api_bench (a
keypad's enter_code with 2,000 idle connections on its terminal socket); with
``--campaign N``, the crash campaign of N runs (bench/crash_campaign.py, which also
runs on its own and writes bench/results/crash_campaign.md).

Writes ``bench/results/latest.md`` (a table of every figure with its target and
the machine it ran on) and ``bench/results/latest.json``.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

from bench import (
    api_bench,
    bounds_bench,
    bus_bench,
    cloud_bench,
    e2e_bench,
    guess_bench,
    hub_bench,
    startup_bench,
)
from bench.common import RESULTS, Figure, machine, verdict
from lockerd.logs import configure


def write(figures: list[Figure], quick: bool) -> Path:
    RESULTS.mkdir(exist_ok=True)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmark results",
        "",
        f"- when: {when}",
        f"- machine: {machine()}",
        f"- command: `./dev bench{''.join(' ' + a for a in sys.argv[1:])}` (python -m bench)",
        "",
        "| figure | value | unit | target | |",
        "| --- | ---: | --- | --- | --- |",
    ]
    lines += [
        f"| {f.name} | {f.value:.3f} | {f.unit} | {f.target} | {verdict(f)} |" for f in figures
    ]
    out = RESULTS / "latest.md"
    out.write_text("\n".join(lines) + "\n")
    (RESULTS / "latest.json").write_text(
        json.dumps(
            {
                "when": when,
                "machine": machine(),
                "quick": quick,
                "figures": [f.__dict__ for f in figures],
            },
            indent=1,
        )
    )
    return out


def main() -> int:
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        return 0
    quick = "--quick" in sys.argv[1:]
    configure(level="warning", stream=sys.stderr)
    figures = bus_bench.main(quick=quick)
    figures += hub_bench.main(quick=quick, million="--million" in sys.argv[1:])
    figures += e2e_bench.main(quick=quick)
    figures += startup_bench.main(quick=quick)
    figures += cloud_bench.main(quick=quick)
    figures += guess_bench.main(quick=quick)
    figures += bounds_bench.main(quick=quick)
    figures += api_bench.main(quick=quick)
    if "--campaign" in sys.argv[1:]:  # --campaign N: the crash campaign, N runs
        from bench import crash_campaign  # noqa: PLC0415 - minutes long: only when asked

        runs = int(sys.argv[sys.argv.index("--campaign") + 1])
        figures += crash_campaign.figures(crash_campaign.run(runs, seed=runs))
    width = max(len(f.name) for f in figures)
    for f in figures:
        print(f"{f.name:<{width}}  {f.value:>10.3f} {f.unit:<9} {f.target:<8} {verdict(f)}")
    print(f"\nwritten to {write(figures, quick)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
