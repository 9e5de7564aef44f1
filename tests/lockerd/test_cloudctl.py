"""``lockerctl cloud`` plays the cloud against ``lockerd demo --mqtt`` over a real
Mosquitto: reserve, the code works at the keypad, a signed remote open, a cancel."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Broker
from tests.support.demoproc import HUB_ID, kill_started, start_demo, watch_cloud
from tests.support.waiting import eventually

PARCEL = re.compile(r"^parcel (\S+) size (\S+) deposit (\d+) pickup (\d+)$", re.M)


@pytest.fixture(autouse=True)
def _no_daemon_left_behind() -> Iterator[None]:
    """Whatever a test asserts, every daemon it started is gone afterwards."""
    yield
    kill_started()


async def lockerctl(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from lockerd.cli.ctl import main; raise SystemExit(main())",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_lockerctl_cloud_drives_a_demo_hub(tmp_path: Path, broker: Broker) -> None:
    state = tmp_path / "hub"
    async with watch_cloud(broker) as (_, seen):
        proc = await start_demo(state, broker)
        await eventually(  # subscribed: a command sent now reaches it
            lambda: any(m["topic"] == "status" and m["state"] == "online" for m in seen),
            what="the hub's birth",
            within=10,
        )
    as_cloud = ["cloud", "--mqtt", broker.url, "--hub", HUB_ID, "--state-dir", str(state)]
    local = ["--socket", str(state / "api.sock"), "--json"]
    try:
        rc, out = await lockerctl(*local, "status")
        assert rc == 0, out
        link = json.loads(out)["cloud"]
        assert link["connected"] is True
        assert link["broker"] == broker.url
        rc, out = await lockerctl(*as_cloud, "reserve", "M")
        assert rc == 0, out
        match = PARCEL.search(out)
        assert match is not None, out
        pid, _, deposit, _ = match.groups()
        rc, out = await lockerctl(*local, "enter-code", deposit)
        assert rc == 0, out
        assert json.loads(out)["status"] == "opened"

        rc, out = await lockerctl(*as_cloud, "open", "A05", "--reason", "support call")
        assert rc == 0, out
        assert '"status": "opened"' in out

        rc, out = await lockerctl(*as_cloud, "reserve", "S", "--parcel", "P-cancel")
        assert rc == 0, out
        rc, out = await lockerctl(*as_cloud, "cancel", "P-cancel")
        assert rc == 0, out
        rc, out = await lockerctl(*as_cloud, "cancel", pid)  # deposit under way: too late
        assert rc == 1, out
        assert "too late" in out
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_lockerctl_cloud_without_a_broker_says_so(tmp_path: Path) -> None:
    rc, out = await lockerctl(
        "cloud",
        "--mqtt",
        "mqtt://127.0.0.1:9",
        "--hub",
        HUB_ID,
        "--state-dir",
        str(tmp_path),
        "sync",
    )
    assert rc == 3
    assert "cannot reach" in out
