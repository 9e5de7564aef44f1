"""Hardware-layer benchmark: the software's own cost per bus transaction.

The pty carries bytes instantly, so what is measured is our stack's cost per
transaction (driver, bus worker, pty, simulator in its own process) next to the
physical floor it adds to: the frames' wire time at 9600 and 19200 baud.

Figures:
- per protocol, status read and unlock: p50/p99 latency (from the call to the
  reply in hand), transactions/s back to back, p99 as a share of wire time;
- a full poll of a bus of 10 CU48 boards with the simulator emulating 19200 baud:
  cycle time against wire time + configured gaps (target: within 1.1x);
- peak RSS of one process driving 10 buses of 10 boards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import tty
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import Figure, percentile
from lockerd.drivers.boards import Board, make_board
from lockerd.drivers.bus import Bus, Timing
from lockerd.drivers.errors import DriverError
from lockerd.drivers.framing import frame_silence, wire_time
from lockerd.drivers.settings import BusSettings, Cu16Settings, Cu48Settings, ModbusRelaySettings
from lockerd.logs import configure

SIM = [sys.executable, "-m", "lockerd.simulator.cli"]


@contextlib.asynccontextmanager
async def simulator(*args: str) -> AsyncIterator[str]:
    """``lockerd-sim ARGS`` in its own process; yields the bus path it prints."""
    proc = await asyncio.create_subprocess_exec(
        *SIM, *args, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        yield line.decode().strip()
    finally:
        proc.terminate()
        await proc.wait()


async def idle_samples(
    bus: Bus, op: Callable[[], Awaitable[Any]], n: int, warmup: int = 50, idle_s: float = 0.008
) -> tuple[list[float], list[float]]:
    """One transaction at a time on an idle bus (no queue, no gap wait).

    Returns (call latencies, our own cost): our own cost is the time from the call
    to the request being handed to the port, plus from the reply's first byte (or,
    for a request without reply, from the port taking the bytes) to the caller
    holding the result; the rest is the pty, the simulator and the wire.
    """
    loop = asyncio.get_running_loop()
    calls: list[float] = []
    own: list[float] = []
    for i in range(warmup + n):
        await asyncio.sleep(idle_s)  # longer than a frame + the silence: the bus is idle
        bus.last_timing = None
        t0 = loop.time()
        try:
            await op()
        except DriverError:  # a stalled VM can miss a timeout: the sample is dropped
            continue
        t1 = loop.time()
        if i < warmup:
            continue
        calls.append(t1 - t0)
        tm = _last_timing(bus)  # set by the transaction (mypy cannot see that through await)
        assert tm is not None
        after_port = tm.first_byte or tm.sent  # a reply's first byte, or the write's return
        own.append((tm.written - t0) + (t1 - after_port))
    return calls, own


def _last_timing(bus: Bus) -> Timing | None:
    return bus.last_timing


def pty_floor(request_len: int, reply_len: int, n: int) -> list[float]:
    """Round trip of the same bytes through a bare pty between two processes.

    Blocking reads and writes, no framework: what the kernel's pty and process
    wake-ups cost on this machine, which no code of ours can go below.
    """
    master, slave = os.openpty()
    tty.setraw(slave)
    pid = os.fork()
    if pid == 0:  # the echoing board
        os.close(slave)
        reply = b"r" * reply_len
        got = 0
        while True:
            data = os.read(master, 256)
            if data == b"q":
                os._exit(0)
            got += len(data)
            if got >= request_len:
                got = 0
                os.write(master, reply)
    os.close(master)
    samples = []
    request = b"x" * request_len
    for i in range(n + 50):
        time.sleep(0.002)
        t0 = time.perf_counter()
        os.write(slave, request)
        got = 0
        while got < reply_len:
            got += len(os.read(slave, 256))
        if i >= 50:
            samples.append(time.perf_counter() - t0)
    os.write(slave, b"q")
    os.waitpid(pid, 0)
    os.close(slave)
    return samples


# protocol -> (sim board spec, board settings, request/reply bytes of status, of unlock)
PROTOCOLS: dict[str, tuple[str, Any, tuple[int, int], tuple[int, int]]] = {
    "kerong-cu48": ("kerong-cu48:0", Cu48Settings(address=0), (6, 12), (6, 0)),
    "kerong-cu16": ("kerong-cu16:0", Cu16Settings(address=0), (5, 9), (5, 0)),
    "modbus-rtu": (
        "modbus-relay:1:8",
        ModbusRelaySettings(address=1, channels=8),
        (8, 6),
        (8, 8),
    ),
}


async def bench_protocol(protocol: str, n: int) -> list[Figure]:
    spec, settings, status_len, unlock_len = PROTOCOLS[protocol]
    figures: list[Figure] = []
    async with simulator(spec, "--spring-delay", "0") as url:
        # gap 0: the bus still keeps the 3.5-character silence at 19200 baud between frames
        # a board's allowance of 20 ms: the simulator answers in well under 1 ms
        bus = Bus(BusSettings(port=url, baudrate=19200, gap_ms=0, timeout_ms=20))
        async with bus:
            assert await bus.wait_open(5)
            board: Board[Any] = make_board(bus, settings)
            for what, op, lengths in (
                ("status", board.read, status_len),
                ("unlock", lambda: board.unlock(1), unlock_len),
            ):
                # after an unlock that may get a reply (CU16), the bus keeps the line free
                # for it (timeout + its wire time): idle longer than that
                idle = 0.03 if protocol == "kerong-cu16" and what == "unlock" else 0.008
                calls, own = await idle_samples(bus, op, n, idle_s=idle)
                t0 = time.perf_counter()
                failed = 0
                for _ in range(n):
                    try:
                        await op()
                    except DriverError:  # a stalled VM can miss a timeout: count it
                        failed += 1
                tps = n / (time.perf_counter() - t0)
                label = f"{protocol} {what}"
                if failed:
                    figures.append(Figure(f"{label}: back to back, failed", failed, "calls"))
                figures += [
                    Figure(f"{label}: call latency p50 (pty + simulator)", pct(calls, 0.5), "ms"),
                    Figure(f"{label}: call latency p99 (pty + simulator)", pct(calls, 0.99), "ms"),
                    Figure(f"{label}: our own cost p50", pct(own, 0.5), "ms"),
                    Figure(f"{label}: our own cost p99", pct(own, 0.99), "ms"),
                    Figure(
                        f"{label}: transactions/s back to back (3.5-char silence kept)",
                        tps,
                        "1/s",
                    ),
                ]
                if lengths[1]:
                    floor = pty_floor(lengths[0], lengths[1], n)
                    figures.append(
                        Figure(f"{label}: bare pty round trip p99 (floor)", pct(floor, 0.99), "ms")
                    )
                for baud in (9600, 19200):
                    wire = wire_time(sum(lengths), baud)
                    share = percentile(own, 0.99) / wire * 100
                    target = "< 5 %" if baud == 19200 else ""
                    figures.append(
                        Figure(
                            f"{label}: our own cost p99 / wire time at {baud} baud "
                            f"({wire * 1e3:.2f} ms)",
                            share,
                            "%",
                            target,
                            (share < 5) if target else None,
                        )
                    )
                    e2e = percentile(calls, 0.99) / wire * 100
                    figures.append(
                        Figure(f"{label}: call p99 incl. pty / wire time at {baud} baud", e2e, "%")
                    )
    return figures


def pct(samples: list[float], q: float) -> float:
    """Percentile in milliseconds."""
    return percentile(samples, q) * 1e3


async def bench_full_poll(cycles: int) -> list[Figure]:
    """10 CU48 boards, simulator emulating 19200 baud: one poll cycle vs its physical floor."""
    baud, gap_ms = 19200, 5.0
    specs = [f"kerong-cu48:{a}" for a in range(10)]
    async with simulator(*specs, "--baud", str(baud)) as url:
        bus = Bus(BusSettings(port=url, baudrate=baud, gap_ms=gap_ms, timeout_ms=100))
        async with bus:
            assert await bus.wait_open(5)
            boards = [make_board(bus, Cu48Settings(address=a)) for a in range(10)]
            for b in boards:  # warm up
                await b.read()
            times = []
            for _ in range(cycles):
                t0 = time.perf_counter()
                for b in boards:
                    await b.read()
                times.append(time.perf_counter() - t0)
    gap = max(gap_ms / 1000, frame_silence(baud))
    floor = 10 * (wire_time(6 + 12, baud) + gap)
    p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
    return [
        Figure("full poll, 10 x CU48 at 19200 baud: wire time + gaps", floor * 1e3, "ms"),
        Figure("full poll, 10 x CU48 at 19200 baud: cycle p50", p50 * 1e3, "ms"),
        Figure(
            "full poll, 10 x CU48 at 19200 baud: cycle p50 / (wire + gaps)",
            p50 / floor,
            "x",
            "<= 1.1",
            p50 / floor <= 1.1,
        ),
        Figure(
            "full poll, 10 x CU48 at 19200 baud: cycle p99 / (wire + gaps)",
            p99 / floor,
            "x",
        ),
    ]


def rss_of_driver_process(seconds: float) -> list[Figure]:
    """Peak RSS of a child process that drives 10 buses x 10 boards for ``seconds``."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.rss_child", str(seconds)],
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split()
    hwm_kb, readings = int(out[0]), int(out[1])
    return [
        Figure("10 buses x 10 boards: readings in the run", readings, "readings"),
        Figure("10 buses x 10 boards: peak RSS of the driving process", hwm_kb / 1024, "MiB"),
    ]


async def run_all(quick: bool) -> list[Figure]:
    n = 300 if quick else 3000
    figures: list[Figure] = []
    for protocol in PROTOCOLS:
        figures += await bench_protocol(protocol, n)
    figures += await bench_full_poll(20 if quick else 200)
    figures += rss_of_driver_process(2.0 if quick else 10.0)
    return figures


def main(quick: bool = False) -> list[Figure]:
    return asyncio.run(run_all(quick))


if __name__ == "__main__":
    configure(level="warning", stream=sys.stderr)
    for f in main(quick="--quick" in sys.argv):
        print(f"{f.name}: {f.value:.3f} {f.unit} {f.target}")
