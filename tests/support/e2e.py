"""The end-to-end hub's parts: its config (``lockerd run`` on eight doors of one Kerong
CU48, with three keypads on sockets of their own) and its board, a separate
``lockerd-sim`` process on a pty (:class:`SimProcess`) that outlives the daemon, played
by a person at the simulator's control stdin. Used by tests/lockerd/test_e2e_flows.py
and bench/crash_campaign.py."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import IO

SIM = "from lockerd.simulator.cli import main; raise SystemExit(main())"
HUB_ID = "e2e-hub"  # the hub id of e2e_config's config

# label, size, channel on the one kerong-cu48 at address 0; A03 is accessible
DOORS: list[tuple[str, str, int, bool]] = [
    ("A01", "S", 1, False),
    ("A02", "S", 2, False),
    ("A03", "S", 3, True),
    ("A04", "M", 4, False),
    ("A05", "M", 5, False),
    ("A06", "L", 6, False),
    ("A07", "L", 7, False),
    ("A08", "XL", 8, False),
]
CHANNEL = {label: ch for label, _, ch, _ in DOORS}

THROTTLE: dict[str, float] = {
    "free_attempts": 5,
    "base_delay_s": 2.0,
    "max_delay_s": 300.0,
    "alarm_after": 10,
    "hub_wide_per_hour": 50,
    "window_s": 3600.0,
}


class SimProcess:
    """``lockerd-sim kerong-cu48:0:8 --link PATH --control``; a person at its stdin."""

    def __init__(self, proc: asyncio.subprocess.Process, path: str) -> None:
        self.proc = proc
        self.path = path
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, link: Path, stderr: IO[bytes]) -> SimProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SIM,
            "kerong-cu48:0:8",
            "--link",
            str(link),
            "--control",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            limit=1 << 22,  # `told` answers one long line
        )
        try:
            assert proc.stdout is not None
            first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
            assert first == str(link), f"the simulator said {first!r}"
        except BaseException:
            await stop_process(proc)
            raise
        return cls(proc, first)

    async def ask(self, command: str) -> str:
        # shielded: a caller cancelled between the command and its answer (the crash
        # campaign cancels its load) must not leave the answer for the next command
        return await asyncio.shield(self._ask(command))

    async def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        async with self._lock:
            self.proc.stdin.write(command.encode() + b"\n")
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), 15)
        return line.decode().strip()

    async def do(self, command: str) -> None:
        answer = await self.ask(command)
        assert answer == "ok", f"{command}: {answer}"

    async def open(self, label: str) -> None:
        """A person pulls the door open (forced, if the lock was not released)."""
        await self.do(f"open 0 {CHANNEL[label]}")

    async def shut(self, label: str) -> None:
        await self.do(f"close 0 {CHANNEL[label]}")

    async def jam(self, label: str, jammed: bool = True) -> None:
        await self.do(f"fault 0 jammed {CHANNEL[label]} {'on' if jammed else 'off'}")

    async def unlocks(self) -> Counter[str]:
        """Unlock pulses the board received, by compartment label."""
        told = (await self.ask("told 0")).split()
        by_channel = {ch: label for label, ch in CHANNEL.items()}
        return Counter(by_channel[int(t.split(":")[1])] for t in told if t.startswith("unlock:"))

    async def stop(self) -> None:
        await stop_process(self.proc)


async def stop_process(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM, then SIGKILL if it does not go; its exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


KEYPADS = ("keypad:1", "keypad:2", "keypad:3")


def keypad_sockets(sock: Path) -> dict[str, Path]:
    """The terminal sockets of the hub whose technician socket is ``sock``, by name."""
    return {name: sock.with_name(f"{sock.stem}-{name.replace(':', '-')}.sock") for name in KEYPADS}


def e2e_config(
    hub_root: Path, sock: Path, link: Path, timers: dict[str, float], throttle: dict[str, float]
) -> str:
    """The hub's config: technician socket ``sock``, and a terminal socket for each of
    :data:`KEYPADS` next to it (:func:`keypad_sockets`)."""
    terminals = "".join(
        f'\n[[terminals]]\nname = "{name}"\nsocket = "{path}"\n'
        for name, path in keypad_sockets(sock).items()
    )
    doors = "\n".join(
        f'  {{ label = "{label}", size = "{size}", bus = "A", board = 0, channel = {ch}, '
        f"accessible = {'true' if acc else 'false'} }},"
        for label, size, ch, acc in DOORS
    )
    timer_lines = "\n".join(f"{k} = {v}" for k, v in timers.items())
    throttle_lines = "\n".join(f"{k} = {v}" for k, v in throttle.items())
    return f"""
hub_id = "{HUB_ID}"
simulated = false
compartments = [
{doors}
]

[timers]
{timer_lines}

[codes]
length = 8
key_file = "{hub_root / "state" / "keys" / "code-hmac.key"}"
fallback_to_larger = true

[codes.throttle]
{throttle_lines}

[paths]
state_dir = "{hub_root / "state"}"
socket = "{sock}"
{terminals}

[[buses]]
name = "A"
port = "{link}"
baudrate = 19200
gap_ms = 1.0
timeout_ms = 100.0

[[buses.boards]]
kind = "kerong-cu48"
address = 0
channels = 8
"""
