"""A real ``lockerd run`` process on the demo hub's config (simulated buses), for tests
of what only a whole process shows: systemd's notify protocol, the metrics endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from lockerd.api.server import call

ROOT = Path(__file__).resolve().parents[2]


def hub_config(
    root: Path,
    *,
    timers: dict[str, float] | None = None,
    paths: dict[str, float | str] | None = None,  # a str is TOML: '"a-group"'
    extra: str = "",
) -> Path:
    """The demo hub's config with its state, its technician socket (``api.sock``) and its
    keypad's terminal socket (``terminal.sock``, terminal ``keypad:1``) under ``root``;
    ``timers`` and ``paths`` added to their sections, ``extra`` (TOML tables) appended."""
    text = (ROOT / "lockerd" / "demo" / "demo-hub.toml").read_text()
    for section, values in (("timers", timers), ("paths", paths)):
        for k in values or {}:  # a setting the demo's config has already is replaced
            text = re.sub(rf"(?m)^{re.escape(k)}\s*=.*\n", "", text)
        added = "".join(f"{k} = {v}\n" for k, v in (values or {}).items())
        text = text.replace(f"[{section}]\n", f"[{section}]\n{added}", 1)
    text = re.sub(r'state_dir = "[^"]*"', f'state_dir = "{root / "state"}"', text, count=1)
    text = re.sub(r'socket = "[^"]*api.sock"', f'socket = "{root / "api.sock"}"', text, count=1)
    text = re.sub(
        r'socket = "[^"]*terminal.sock"', f'socket = "{root / "terminal.sock"}"', text, count=1
    )
    path = root / "hub.toml"
    path.write_text(text + "\n" + extra)
    return path


async def lockerd(
    *args: str,
    out: IO[bytes] | int | None = None,
    err: IO[bytes] | int | None = None,
    env: dict[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """``lockerd ARGS`` in its own process, as the installed command runs it."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from lockerd.cli.main import main; raise SystemExit(main())",
        *args,
        stdout=out,
        stderr=err,
        env=env,
    )


async def spawn(
    config: Path, out: IO[bytes], err: IO[bytes], *, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """``lockerd run --config CONFIG`` (the files may be closed once it runs: it has
    its own copies)."""
    return await lockerd("run", "--config", str(config), out=out, err=err, env=env)


@contextlib.asynccontextmanager
async def run_daemon(
    root: Path, config: Path, env: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``lockerd run --config``, its stdout and stderr in ``root/daemon.log``; killed on
    the way out if still running."""
    environ = {**os.environ, **(env or {})}
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LOCKERD_FAILPOINT"):
        if name not in (env or {}):
            environ.pop(name, None)
    with (root / "daemon.log").open("ab") as log:
        proc = await spawn(config, log, log, env=environ)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def api_up(
    sock: Path, proc: asyncio.subprocess.Process | None = None, *, within: float = 30.0
) -> None:
    """Wait until the daemon at ``sock`` answers ``status``; fail at once if ``proc``
    exits first, and after ``within`` seconds otherwise."""
    deadline = time.monotonic() + within
    while True:
        if proc is not None and proc.returncode is not None:
            raise RuntimeError(f"lockerd exited {proc.returncode} before its API answered")
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            if (await call(sock, {"op": "status"}, within=2)).get("ok"):
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"lockerd did not answer on {sock} within {within:.0f} s")
        await asyncio.sleep(0.05)


LOCKERCTL = "from lockerd.cli.ctl import main; raise SystemExit(main())"


async def lockerctl(sock: Path, *args: str) -> tuple[int, str, str]:
    """``lockerctl --socket SOCK ARGS...`` in its own process: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOCKERCTL,
        "--socket",
        str(sock),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
