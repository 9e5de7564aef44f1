"""The local API under a connection flood: a keypad's ``enter_code`` with 2,000 idle
connections held open on the same terminal socket.

The demo hub runs as ``lockerd run`` in its own process (tests/support/daemon.py's
config: every bus on the in-process simulator, the keypad ``keypad:1`` on its terminal
socket, ``[api]`` at its defaults: 32 connections per socket), with 1,024 file handles
(``RLIMIT_NOFILE`` lowered with prlimit: what a unit without ``LimitNOFILE`` gets). The
code throttle is opened wide for the run (free attempts, alarms and the hub-wide limit
at 10^6), so every request is a wrong code that is really checked: HMAC, the store's
index on its thread, the refusal. The keypad connects anew for each code, as
``lockerctl enter-code`` does; one sample is ``lockerd.api.server.call``: connect, request,
reply, close (``time.perf_counter``).

Three phases, the same number of samples each:

1. alone: nothing else on the socket;
2. 2,000 idle: 2,000 connections opened on the keypad's socket first and held open by
   this process (the daemon closes the longest-idle ones to stay at its cap; the
   keypad's newcomer always gets in);
3. churn: another process holds 2,000 connections and re-opens each one the daemon
   closes, as fast as it can (a connect flood: every keypad connection races it).

Target (issue 10): phase 2 p99 under 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from bench.common import RESULTS, Figure, percentile
from lockerd.api.server import call
from tests.support.daemon import api_up, hub_config, spawn

TARGET_MS = 50.0
IDLE = 2_000
DAEMON_FILES = 1_024  # a unit without LimitNOFILE


def config(root: Path) -> Path:
    """The demo hub's config under ``root``, its code throttle opened wide."""
    path = hub_config(root)
    text = path.read_text()
    for name in ("free_attempts", "alarm_after", "hub_wide_per_hour"):
        text = re.sub(rf"(?m)^{name} = \d+", f"{name} = 1000000", text)
    path.write_text(text)
    return path


def own_file_handles(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def hold(path: Path, n: int) -> list[socket.socket]:
    """``n`` connections to ``path``, opened one after another and held, never used
    (blocking connects: one waits while the daemon's backlog is full, at most 30 s)."""
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        out.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 30, 0))
        s.connect(str(path))
    return out


async def flood(path: Path, n: int) -> None:
    """Hold ``n`` connections to ``path``; re-open each one the daemon closes (runs in
    its own process: ``python -m bench.api_bench --flood PATH N``)."""

    async def one() -> None:
        while True:
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_unix_connection(str(path))
                await reader.read()  # until the daemon closes it
                writer.close()

    await asyncio.gather(*(one() for _ in range(n)))


async def samples(keypad: Path, n: int) -> list[float]:
    """``n`` wrong codes at the keypad, each on a new connection: latencies (s)."""
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        reply = await call(keypad, {"op": "enter_code", "code": f"9{i:07d}"}, within=30)
        out.append(time.perf_counter() - t0)
        if reply.get("result", {}).get("status") != "refused":
            raise RuntimeError(f"api bench: the keypad was not answered with refused: {reply}")
    return out


async def terminal_stats(sock: Path) -> dict[str, Any]:
    status = (await call(sock, {"op": "status"}))["result"]["api"]
    found: dict[str, Any] = next(s for s in status["sockets"] if s["role"] == "terminal")
    found["accept_failures"] = status["accept_failures"]
    return found


async def until(accept: Callable[[dict[str, Any]], bool], sock: Path, within: float = 60) -> None:
    """Poll the terminal socket's figures until ``accept`` holds (at most ``within`` s)."""
    deadline = time.monotonic() + within
    while not accept(await terminal_stats(sock)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"api bench: the daemon did not settle within {within} s")
        await asyncio.sleep(0.02)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def measure(root: Path, n: int, log: IO[bytes]) -> dict[str, Any]:
    own_file_handles(IDLE + 1_000)
    proc = await spawn(config(root), log, log)
    out: dict[str, Any] = {}
    sock, keypad = root / "api.sock", root / "terminal.sock"
    try:
        await api_up(sock, proc)
        _, hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (DAEMON_FILES, hard))
        await samples(keypad, 20)  # warm-up
        out["alone"] = await samples(keypad, n)

        before = (await terminal_stats(sock))["evicted"]
        idle = await asyncio.to_thread(hold, keypad, IDLE)
        try:
            out["first"] = await samples(keypad, 1)  # while the daemon still takes them in
            # held: once the daemon has taken them all in (and closed all but its cap)
            await until(lambda s: s["evicted"] >= before + IDLE - s["connections"], sock)
            out["idle_fds"] = fds(proc.pid)
            out["idle"] = await samples(keypad, n)
            out["idle_stats"] = await terminal_stats(sock)
        finally:
            for s in idle:
                s.close()

        flooder = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.api_bench", "--flood", str(keypad), str(IDLE)
        )
        try:
            before = (await terminal_stats(sock))["evicted"]
            await until(lambda s: s["evicted"] >= before + IDLE, sock)  # it is flooding
            out["churn"] = await samples(keypad, n)
            after = await terminal_stats(sock)
            out["churn_evicted"] = after["evicted"] - before
            out["churn_fds"] = fds(proc.pid)
            out["accept_failures"] = after["accept_failures"]
        finally:
            flooder.send_signal(signal.SIGKILL)
            await flooder.wait()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    return out


def figures(run: dict[str, Any]) -> list[Figure]:
    name = "API: keypad enter_code (new connection, wrong code checked)"
    out: list[Figure] = []
    for phase, what in (
        ("alone", "alone"),
        ("idle", f"with {IDLE:,} idle connections on its socket"),
        ("churn", f"with {IDLE:,} connections re-opened as fast as they are closed"),
    ):
        ms = [s * 1e3 for s in run[phase]]
        p99 = percentile(ms, 0.99)
        target, ok = (f"< {TARGET_MS:g} ms", p99 < TARGET_MS) if phase == "idle" else ("", None)
        out += [
            Figure(f"{name}, {what}: p50", percentile(ms, 0.5), "ms"),
            Figure(f"{name}, {what}: p99", p99, "ms", target, ok),
            Figure(f"{name}, {what}: max", max(ms), "ms"),
        ]
    stats = run["idle_stats"]
    out += [
        Figure(
            f"{name}: the first code right after the {IDLE:,} connections arrived",
            run["first"][0] * 1e3,
            "ms",
        ),
        Figure(
            f"API: daemon file handles with {IDLE:,} idle connections held (limit {DAEMON_FILES})",
            run["idle_fds"],
            "",
        ),
        Figure(
            f"API: idle connections closed to make room, of the {IDLE:,}",
            stats["evicted"],
            "",
        ),
        Figure("API: connections closed to make room during the churn", run["churn_evicted"], ""),
        Figure("API: failed accepts (out of file handles), whole run", run["accept_failures"], ""),
    ]
    return out


def write(found: list[Figure], n: int) -> Path:
    RESULTS.mkdir(exist_ok=True)
    lines = [
        "# API under a connection flood (bench/api_bench.py)",
        "",
        f"- command: `python -m bench.api_bench{'' if n > 100 else ' --quick'}`, {n} samples "
        "per phase",
        "",
        "| figure | value | unit | target | |",
        "| --- | ---: | --- | --- | --- |",
    ]
    lines += [
        f"| {f.name} | {f.value:.3f} | {f.unit} | {f.target} | "
        f"{'' if f.ok is None else ('met' if f.ok else 'NOT met')} |"
        for f in found
    ]
    path = RESULTS / "api_bench.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(quick: bool = False) -> list[Figure]:
    n = 100 if quick else 1_000
    with (
        tempfile.TemporaryDirectory(prefix="lkapi-") as tmp,
        (Path(tmp) / "daemon.log").open("ab") as log,
    ):
        run = asyncio.run(measure(Path(tmp), n, log))
    found = figures(run)
    write(found, n)
    return found


if __name__ == "__main__":
    if sys.argv[1:2] == ["--flood"]:
        own_file_handles(int(sys.argv[3]) + 100)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(flood(Path(sys.argv[2]), int(sys.argv[3])))
        sys.exit(0)
    for f in main(quick="--quick" in sys.argv):
        print(f"{f.name}: {f.value:.3f} {f.unit} {f.target}")
    print(f"written to {RESULTS / 'api_bench.md'}")
