"""Child of the RSS benchmark: drive 10 buses of 10 CU48 boards, print peak RSS.

The simulators run in their own processes, so the figure is the driving side
alone (what the daemon pays for the hardware layer). Prints ``VmHWM_kB readings``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

from lockerd.drivers.boards import DoorReading, make_board
from lockerd.drivers.bus import Bus
from lockerd.drivers.poll import BusPoller
from lockerd.drivers.settings import BusSettings, Cu48Settings
from lockerd.logs import configure

BUSES = 10
BOARDS = 10


def vm_hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


async def main(seconds: float) -> None:
    sims: list[asyncio.subprocess.Process] = []
    urls: list[str] = []
    for _ in range(BUSES):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lockerd.simulator.cli",
            *[f"kerong-cu48:{a}" for a in range(BOARDS)],
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        urls.append((await proc.stdout.readline()).decode().strip())
        sims.append(proc)
    readings = 0

    def count(_: DoorReading) -> None:
        nonlocal readings
        readings += 1

    buses = [Bus(BusSettings(port=url)) for url in urls]
    tasks: list[asyncio.Task[Any]] = []
    try:
        for bus in buses:
            await bus.start()
            assert await bus.wait_open(5)
            boards = [make_board(bus, Cu48Settings(address=a)) for a in range(BOARDS)]
            poller = BusPoller(boards, interval_s=0.5, on_reading=count)
            tasks.append(asyncio.create_task(poller.run()))
        await asyncio.sleep(seconds)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for bus in buses:
            await bus.close()
        for p in sims:
            p.terminate()
            await p.wait()
    print(vm_hwm_kb(), readings)


if __name__ == "__main__":
    configure(level="warning", stream=sys.stderr)
    asyncio.run(main(float(sys.argv[1])))
