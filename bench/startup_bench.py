"""Daemon start-up time and peak memory: 1,000 compartments, 100,000 parcels.

A generated hub config (``simulated = true``: every bus served in the daemon's own
process by ``lockerd.demo.ports.SimulatedPorts``, a simulator on a real pty) with
1,000 compartments on 21 Kerong CU48 boards of 48 channels across 3 buses of 7 (a
CU48's address is 0..9), and a store pre-seeded with 100,000 reservations (key made
with ``codes.create_key``; the
store synced with the config and loaded with ``Store.add_parcels`` before the
daemon starts, as a first cloud sync would leave it).

Then ``lockerd run --config FILE`` is spawned as its own process:

- start-up: from the spawn until the API socket answers a ``status`` request
  (polled every few ms with a deadline); it includes the interpreter, the imports,
  the config check, opening the store (with its integrity check), the simulator,
  opening both buses, one poll of every board and reconciliation;
- peak RSS: ``VmHWM`` of the daemon process, read after a few ``status`` requests,
  just before SIGTERM; the in-process simulator's memory is included.

For a reader to see what start-up is made of: the bare interpreter
(``python -c pass``) and the interpreter plus imports (``python -c "import
lockerd.daemon.wiring"``, and of ``lockerd.cli.main``, what ``lockerd run`` imports), spawn to exit.

Targets (issue 3): start-up under 1.5 s, peak RSS under 80 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bench.common import Figure, load_parcels
from lockerd.api.server import call
from lockerd.config import load
from lockerd.hub import domain as d
from lockerd.hub.codes import create_key, load_key
from lockerd.hub.store import Store

ROOT = Path(__file__).resolve().parent.parent
LOCKERD = "from lockerd.cli.main import main; raise SystemExit(main())"

COMPARTMENTS = 1000
PARCELS = 100_000
CHANNELS = 48
# 21 boards x 48 channels = 1,008 locks; a CU48's address is 0..9, so at most 10 boards
# share a bus: three buses of 7
BOARDS = {"A": 7, "B": 7, "C": 7}
TARGET_S = 1.5
TARGET_MB = 80.0


def _size(channel: int) -> str:
    if channel <= 16:
        return "S"
    if channel <= 32:
        return "M"
    return "L" if channel <= 44 else "XL"


def hub_toml(state_dir: Path, socket: Path) -> str:
    """The config text: 1,000 compartments, labels such as ``AA01`` (bus A, board 0, ch 1)."""
    doors: list[str] = []
    for bus, boards in BOARDS.items():
        for address in range(boards):
            for channel in range(1, CHANNELS + 1):
                if len(doors) == COMPARTMENTS:
                    break
                label = f"{bus}{chr(ord('A') + address)}{channel:02d}"
                accessible = ", accessible = true" if channel <= 2 else ""
                doors.append(
                    f'  {{ label = "{label}", size = "{_size(channel)}", bus = "{bus}", '
                    f"board = {address}, channel = {channel}{accessible} }},"
                )
    lines = [
        'hub_id = "bench-hub-1000"',
        "simulated = true",
        "",
        "compartments = [",
        *doors,
        "]",
        "",
        "[paths]",
        f'state_dir = "{state_dir}"',
        f'socket = "{socket}"',
    ]
    for i, (bus, boards) in enumerate(BOARDS.items()):
        lines += [
            "",
            "[[buses]]",
            f'name = "{bus}"',
            f'port = "/dev/ttyBENCH{i}"',
            "baudrate = 19200",
            "gap_ms = 5.0",
            "timeout_ms = 100.0",
        ]
        for address in range(boards):
            lines += [
                "",
                "[[buses.boards]]",
                'kind = "kerong-cu48"',
                f"address = {address}",
                f"channels = {CHANNELS}",
            ]
    return "\n".join(lines) + "\n"


def prepare(tmp: Path) -> tuple[Path, Path, float]:
    """Write the config, make the key, seed the store. (config, socket, seed seconds)."""
    state = tmp / "state"
    socket = tmp / "api.sock"
    path = tmp / "hub.toml"
    path.write_text(hub_toml(state, socket))
    cfg = load(path)
    assert len(cfg.compartments) == COMPARTMENTS
    state.mkdir(mode=0o700)
    create_key(cfg.key_path())
    store = Store(state / "lockerd.db")
    try:
        store.sync_compartments(
            d.Compartment(c.label, d.Size(c.size), c.accessible) for c in cfg.compartments
        )
        seed_s = load_parcels(store, load_key(cfg.key_path()), PARCELS, time.time())
    finally:
        store.close()
    return path, socket, seed_s


@dataclass(frozen=True)
class Start:
    ready_s: float  # spawn -> first status answered
    status_ms: float  # the slowest of the status requests after it
    hwm_kb: int  # VmHWM before SIGTERM
    rss_kb: int  # VmRSS then
    stop_s: float  # SIGTERM -> exit
    returncode: int


def _proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    return out


async def start_once(config: Path, socket: Path, log: IO[bytes], within: float = 30.0) -> Start:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOCKERD,
        "run",
        "--config",
        str(config),
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"lockerd exited with {proc.returncode} during start-up")
            with contextlib.suppress(OSError, TimeoutError):
                reply = await call(socket, {"op": "status"}, within=5.0)
                if reply.get("ok"):
                    break
            if time.perf_counter() - t0 > within:
                raise TimeoutError(f"lockerd did not answer within {within} s")
            await asyncio.sleep(0.003)
        ready = time.perf_counter() - t0
        slowest = 0.0
        for _ in range(5):
            t = time.perf_counter()
            reply = await call(socket, {"op": "status"}, within=5.0)
            slowest = max(slowest, time.perf_counter() - t)
            assert len(reply["result"]["compartments"]) == COMPARTMENTS
        mem = _proc_status(proc.pid)
        t = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 15)
        stop = time.perf_counter() - t
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return Start(ready, slowest * 1e3, mem["VmHWM"], mem["VmRSS"], stop, rc)


def spawn_to_exit(code: str, runs: int) -> float:
    """Seconds from spawning ``python -c CODE`` to its exit: the median of ``runs``."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _check_exits(starts: list[Start]) -> None:
    if any(s.returncode != 0 for s in starts):
        raise RuntimeError(f"lockerd exited with {[s.returncode for s in starts]} on SIGTERM")


def _starts(runs: int) -> tuple[list[Start], float]:
    with tempfile.TemporaryDirectory(prefix="lockerd-startup-") as tmp_dir:
        tmp = Path(tmp_dir)
        config, socket, seed_s = prepare(tmp)
        with open(tmp / "daemon.log", "w+b") as log:
            try:
                starts = [asyncio.run(start_once(config, socket, log)) for _ in range(runs)]
                _check_exits(starts)
            except BaseException:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-3000:]
                print(f"lockerd's log (end):\n{tail}", file=sys.stderr)
                raise
    return starts, seed_s


def main(quick: bool = False) -> list[Figure]:
    runs = 1 if quick else 3
    starts, seed_s = _starts(runs)
    imports = 1 if quick else 7
    bare = spawn_to_exit("pass", imports)
    daemon = spawn_to_exit("import lockerd.daemon.wiring", imports)
    cli = spawn_to_exit("import lockerd.cli.main", imports)
    ready = [s.ready_s for s in starts]
    hwm = max(s.hwm_kb for s in starts) / 1024
    name = f"start-up, {COMPARTMENTS:,} compartments, {PARCELS:,} parcels"
    of_runs = "1 run" if runs == 1 else f"slowest of {runs} runs"
    highest = "1 run" if runs == 1 else f"highest of {runs} runs"
    figures = [
        Figure(f"{name}: store seeding before the start (bulk)", seed_s, "s"),
        Figure(
            f"{name}: spawn -> first status answered ({of_runs})",
            max(ready),
            "s",
            f"< {TARGET_S:g} s",
            max(ready) < TARGET_S,
        ),
    ]
    if runs > 1:
        figures.append(
            Figure(
                f"{name}: spawn -> first status answered (median of {runs})",
                statistics.median(ready),
                "s",
            )
        )
    figures += [
        Figure(
            f"{name}: peak RSS (VmHWM, {highest}) incl. the in-process simulator",
            hwm,
            "MiB",
            f"< {TARGET_MB:g} MB",
            hwm * 1024 * 1024 < TARGET_MB * 1e6,
        ),
        Figure(
            f"{name}: RSS after 6 status requests (VmRSS)",
            max(s.rss_kb for s in starts) / 1024,
            "MiB",
        ),
        Figure(f"{name}: status request, slowest of 5", max(s.status_ms for s in starts), "ms"),
        Figure(f"{name}: SIGTERM -> exit", max(s.stop_s for s in starts), "s"),
        Figure("start-up part: bare interpreter, spawn -> exit", bare, "s"),
        Figure(
            "start-up part: interpreter + import lockerd.daemon.wiring, spawn -> exit",
            daemon,
            "s",
        ),
        Figure("start-up part: interpreter + import lockerd.cli.main, spawn -> exit", cli, "s"),
    ]
    return figures


if __name__ == "__main__":
    for f in main(quick="--quick" in sys.argv):
        print(f"{f.name}: {f.value:.3f} {f.unit} {f.target}")
