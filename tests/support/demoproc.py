"""``lockerd demo --mqtt`` in a process of its own (so that it can be killed, or killed
at a named failpoint: ``LOCKERD_FAILPOINT``), and a bare cloud on the broker that
records everything the hub publishes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt

from tests.support.broker import Broker

HUB_ID = "crash-hub"  # the hub id start_demo gives the demo

# every demo start_demo started, for kill_started() after the test
STARTED: list[asyncio.subprocess.Process] = []


def kill_started() -> None:
    """Kill every demo :func:`start_demo` started that still runs."""
    while STARTED:
        proc = STARTED.pop()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


async def start_demo(
    state: Path, broker: Broker, failpoint: str | None = None
) -> asyncio.subprocess.Process:
    """``lockerd demo --state-dir STATE --mqtt BROKER --hub-id`` :data:`HUB_ID`, its
    stderr in ``STATE/../daemon.log``; returned once it serves."""
    env = {**os.environ}
    env.pop("LOCKERD_FAILPOINT", None)
    if failpoint:
        env["LOCKERD_FAILPOINT"] = failpoint
    log = (state.parent / "daemon.log").open("ab")  # for a failure's post-mortem
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from lockerd.cli.main import main; raise SystemExit(main())",
        "demo",
        "--state-dir",
        str(state),
        "--mqtt",
        broker.url,
        "--hub-id",
        HUB_ID,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        env=env,
    )
    log.close()  # the daemon has its own copy
    STARTED.append(proc)
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, "the demo exited early"
        if line.startswith("serving until"):
            return proc


@contextlib.asynccontextmanager
async def watch_cloud(
    broker: Broker,
) -> AsyncIterator[tuple[aiomqtt.Client, list[dict[str, Any]]]]:
    """The cloud's client on ``broker``, subscribed to everything of :data:`HUB_ID`, and
    what it received: each message's JSON body with ``topic`` (its last level) added."""
    seen: list[dict[str, Any]] = []
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="cloud", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(f"lockers/{HUB_ID}/#", qos=1)

        async def collect() -> None:
            async for m in client.messages:
                body = json.loads(bytes(m.payload))  # type: ignore[arg-type,unused-ignore]
                seen.append({"topic": str(m.topic).rsplit("/", 1)[1], **body})

        task = asyncio.create_task(collect())
        try:
            yield client, seen
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
