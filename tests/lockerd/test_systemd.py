"""Running under systemd: the notify protocol spoken to a real datagram socket, and the
unit file checked by systemd's own tools where they are installed.

The daemon is the real ``lockerd run`` process on the demo hub's config (simulated
buses), with ``NOTIFY_SOCKET`` pointing at a socket this test reads, and
``WATCHDOG_USEC`` of 1 s (a ping every 0.5 s while healthy).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from lockerd.api.server import call
from lockerd.hub.store import Store
from lockerd.ops.sdnotify import Notifier
from tests.support.daemon import hub_config, run_daemon

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "lockerd.service"
WATCHDOG_USEC = 1_000_000
BUS_STALE_S = 2.0


class NotifySocket:
    """What systemd listens on: a datagram socket; every message it got, stamped with
    the time it arrived (read as it comes, by the test's event loop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.got: list[tuple[float, str]] = []
        asyncio.get_running_loop().add_reader(self.sock, self._read)

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            self.got.append((time.monotonic(), data.decode()))

    def when(self, field: str) -> list[float]:
        return [at for at, msg in self.got if field in msg.split("\n")]

    def has(self, field: str) -> bool:
        return bool(self.when(field))

    def pings(self, after: float, before: float = float("inf")) -> int:
        return sum(1 for at in self.when("WATCHDOG=1") if after <= at <= before)

    def statuses(self) -> list[tuple[float, str]]:
        return [
            (at, line.removeprefix("STATUS="))
            for at, msg in self.got
            for line in msg.split("\n")
            if line.startswith("STATUS=")
        ]

    async def wait_for(self, check: Callable[[], bool], what: str, within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within} s waiting for {what}: {self.got}")
            await asyncio.sleep(0.02)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock)
        self.sock.close()


@pytest.fixture
async def notify(tmp_path: Path) -> AsyncIterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


@contextlib.asynccontextmanager
async def daemon(root: Path, notify: NotifySocket) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    async with run_daemon(root, hub_config(root, timers={"bus_stale_s": BUS_STALE_S}), env) as p:
        yield p


async def test_ready_then_pings_then_stopping_on_sigterm(
    tmp_path: Path, notify: NotifySocket
) -> None:
    async with daemon(tmp_path, notify) as proc:
        await notify.wait_for(lambda: notify.has("READY=1"), "READY=1")
        # READY comes after the store is open and every bus was polled once: the API
        # already answers, and every board has been read
        status = await call(tmp_path / "api.sock", {"op": "status"})
        assert status["ok"]
        assert all(b["replies"] >= 1 for b in status["result"]["boards"])
        ready_at = notify.when("READY=1")[0]
        await notify.wait_for(lambda: notify.pings(ready_at) >= 3, "three pings")
        assert any(f"MAINPID={proc.pid}" in msg for _, msg in notify.got)
        proc.send_signal(signal.SIGTERM)
        await notify.wait_for(lambda: notify.has("STOPPING=1"), "STOPPING=1")
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    log = (tmp_path / "daemon.log").read_text()
    assert "lockerd_draining" in log
    assert "lockerd_stopping" in log


async def test_no_ping_while_the_event_loop_is_blocked(
    tmp_path: Path, notify: NotifySocket
) -> None:
    async with daemon(tmp_path, notify):
        await notify.wait_for(lambda: notify.has("READY=1"), "READY=1")
        began = time.monotonic()
        await notify.wait_for(lambda: notify.pings(began) >= 2, "pings before the stall")
        reply = await call(tmp_path / "api.sock", {"op": "sim_stall", "seconds": 2.5}, within=30)
        ended = time.monotonic()  # the reply is written as the stall ends
        assert reply["ok"], reply
        # a healthy daemon pings every 0.5 s: 4-5 pings in this window; a blocked one none
        assert notify.pings(ended - 2.3, ended - 0.1) == 0, notify.got
        await notify.wait_for(lambda: notify.pings(ended) >= 2, "pings again after it")


async def test_no_ping_while_a_bus_that_answered_is_dead(
    tmp_path: Path, notify: NotifySocket
) -> None:
    sock = tmp_path / "api.sock"

    async def watchdog() -> dict[str, Any]:
        reply = await call(sock, {"op": "status"})
        return reply["result"]["watchdog"]  # type: ignore[no-any-return]

    async with daemon(tmp_path, notify):
        await notify.wait_for(lambda: notify.has("READY=1"), "READY=1")
        assert (await watchdog())["healthy"]
        reply = await call(sock, {"op": "sim_bus", "bus": "B", "action": "dead"})
        assert reply["ok"], reply
        # once bus B has been silent for bus_stale_s, the pings stop and STATUS says why
        await notify.wait_for(
            lambda: any("unhealthy: bus B" in s for _, s in notify.statuses()),
            "an unhealthy STATUS naming bus B",
        )
        unhealthy_at = next(at for at, s in notify.statuses() if "unhealthy: bus B" in s)
        checks = (await watchdog())["checks"]
        while (w := await watchdog())["checks"] < checks + 3:  # three more checks, unhealthy
            assert not w["healthy"]
            assert w["problems"][0].startswith("bus B:")
            await asyncio.sleep(0.05)
        revived = time.monotonic()
        assert notify.pings(unhealthy_at, revived) == 0, notify.got
        assert (await call(sock, {"op": "sim_bus", "bus": "B", "action": "alive"}))["ok"]
        await notify.wait_for(lambda: notify.pings(revived) >= 2, "pings after recovery")
        assert any(s == "serving" for at, s in notify.statuses() if at > revived)
        assert (await watchdog())["healthy"]
    assert "watchdog_withheld" in (tmp_path / "daemon.log").read_text()


async def test_sigterm_drains_an_open_under_way_to_its_outcome(
    tmp_path: Path, notify: NotifySocket
) -> None:
    """A stop during an open: the open reaches its outcome (here: jammed, after the
    3 s open_confirm_s) before the daemon exits; a new open meanwhile is refused."""
    sock = tmp_path / "api.sock"
    async with daemon(tmp_path, notify) as proc:
        await notify.wait_for(lambda: notify.has("READY=1"), "READY=1")
        assert (await call(sock, {"op": "sim_door", "label": "A05", "action": "jam"}))["ok"]
        opening = asyncio.create_task(
            call(sock, {"op": "open", "label": "A05", "reason": "drain test"})
        )
        # the API logs a request before it reaches the service, with no wait between
        await notify.wait_for(
            lambda: '"op": "open"' in (tmp_path / "daemon.log").read_text(),
            "the open under way",
        )
        kiosk = await asyncio.open_unix_connection(str(sock))  # a kept connection
        proc.send_signal(signal.SIGTERM)
        await notify.wait_for(lambda: notify.has("STOPPING=1"), "STOPPING=1")
        with pytest.raises(ConnectionRefusedError):  # no new connection while draining
            await call(sock, {"op": "status"})
        reader, writer = kiosk
        late = {"op": "open", "label": "A06", "reason": "during the drain"}
        writer.write(json.dumps(late).encode() + b"\n")
        refused = json.loads(await reader.readline())
        writer.close()
        assert refused["result"]["status"] == "refused", refused
        assert "restarting" in refused["result"]["message"]
        reply = await opening
        assert reply["result"]["status"] == "jammed", reply
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    store = Store(tmp_path / "state" / "lockerd.db")
    try:
        assert store.open_intents() == []
        assert store.compartment("A06").operation is None  # type: ignore[union-attr]
    finally:
        store.close()


def test_the_notifier_is_silent_without_systemd() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.send("READY=1")
    assert n.watchdog_s is None


def test_the_notifier_speaks_to_an_abstract_socket() -> None:
    name = f"lockerd-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(b"\0" + name.encode())
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "4000000"})
        assert n.watchdog_s == 4.0
        assert n.ready("serving")
        msg = server.recv(4096).decode().split("\n")
        assert "READY=1" in msg
        assert "STATUS=serving" in msg
        n.close()
    finally:
        server.close()


def test_a_watchdog_meant_for_another_process_is_ignored() -> None:
    n = Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n.watchdog_s is None


# ---------------------------------------------------------------- the unit file
systemd_analyze = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(systemd_analyze is None, reason="systemd-analyze not here")


def _unit_here(tmp_path: Path) -> Path:
    """The unit as installed, with its executables pointing at this checkout's venv
    (``verify`` checks that they exist)."""
    lockerd = Path(sys.executable).parent / "lockerd"
    assert lockerd.exists(), lockerd
    unit = tmp_path / "lockerd.service"
    unit.write_text(UNIT.read_text().replace("/opt/lockerd/venv/bin/lockerd", str(lockerd)))
    return unit


@needs_systemd
def test_the_unit_verifies(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(systemd_analyze), "verify", str(_unit_here(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "lockerd.service" not in out.stderr, out.stderr  # no warning about our unit


@needs_systemd
def test_the_unit_security_score_is_the_one_the_readme_gives(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(systemd_analyze), "security", "--offline=true", str(_unit_here(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    found = re.search(r"Overall exposure level for lockerd\.service: ([0-9.]+)", out.stdout)
    assert found, out.stdout + out.stderr
    score = float(found.group(1))
    assert score <= 2.0, out.stdout
    readme = (ROOT / "README.md").read_text()
    assert f"exposure level {score:.1f}" in readme, "README states another security score"
