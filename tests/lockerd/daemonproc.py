"""A real ``lockerd run`` process on the demo hub's config (simulated buses), for tests
of what only a whole process shows: systemd's notify protocol, the metrics endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def hub_config(
    root: Path,
    *,
    timers: dict[str, float] | None = None,
    paths: dict[str, float] | None = None,
    extra: str = "",
) -> Path:
    """The demo hub's config with its state and socket under ``root``; ``timers`` and
    ``paths`` added to their sections, ``extra`` (TOML tables) appended."""
    text = (ROOT / "config" / "demo-hub.toml").read_text()
    for section, values in (("timers", timers), ("paths", paths)):
        added = "".join(f"{k} = {v}\n" for k, v in (values or {}).items())
        text = text.replace(f"[{section}]\n", f"[{section}]\n{added}", 1)
    text = re.sub(r'state_dir = "[^"]*"', f'state_dir = "{root / "state"}"', text, count=1)
    text = re.sub(r'socket = "[^"]*"', f'socket = "{root / "api.sock"}"', text, count=1)
    path = root / "hub.toml"
    path.write_text(text + "\n" + extra)
    return path


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
    log = (root / "daemon.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from lockerd.cli import main; raise SystemExit(main())",
        "run",
        "--config",
        str(config),
        stdout=log,
        stderr=log,
        env=environ,
    )
    log.close()
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
