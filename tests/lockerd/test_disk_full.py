"""A full disk: the store's state directory is a small tmpfs of its own, filled up by
another file while the hub runs. The reserve is freed, the pickup goes on, an alarm
is raised, nothing stored is lost; once the disk has room the reserve comes back.

Mounting a tmpfs needs root (CAP_SYS_ADMIN); elsewhere the test is skipped.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockerd.api.server import call
from lockerd.hub import domain as d
from lockerd.hub.codes import CodeHasher, create_key, load_key
from lockerd.hub.store import Store
from tests.support.daemon import api_up, hub_config, run_daemon
from tests.support.waiting import until_result


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    state.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(state)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def seed(state: Path) -> dict[str, tuple[str, str]]:
    """Two reservations, as the cloud syncs them: parcel -> (deposit, pickup) codes."""
    key = state / "keys" / "code-hmac.key"
    create_key(key)
    hasher = CodeHasher(load_key(key))
    store = Store(state / "lockerd.db")
    now = time.time()
    codes = {"DF-1": ("11112222", "33334444"), "DF-2": ("55556666", "77778888")}
    try:
        for pid, (deposit, pickup) in codes.items():
            parcel = d.Parcel(
                pid, d.Kind.DELIVERY, d.Size.S, deposit_from=now - 60, deposit_until=now + 3600
            )
            store.add_parcel(
                parcel,
                {d.Purpose.DEPOSIT: hasher.hash(deposit), d.Purpose.COLLECT: hasher.hash(pickup)},
                now=now,
                actor="cloud",
            )
    finally:
        store.close()
    return codes


def fill(path: Path) -> int:
    """Write zeros to ``path`` until the disk is full; the bytes written."""
    chunk, written = b"\0" * 65536, 0
    with path.open("wb") as f:
        while True:
            try:
                f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return written
            written += len(chunk)


async def test_a_full_disk_keeps_pickups_going(tmp_path: Path, small_disk: Path) -> None:
    state = small_disk
    codes = seed(state)
    sock = tmp_path / "api.sock"
    log = tmp_path / "daemon.log"
    config = hub_config(tmp_path, paths={"disk_reserve_mb": 1})

    async def api(op: str, **kw: Any) -> Any:
        reply = await call(sock, {"op": op, **kw})
        assert reply["ok"], reply
        return reply["result"]

    async def keypad(code: str) -> Any:
        """A code at keypad:1 (its terminal socket)."""
        reply = await call(tmp_path / "terminal.sock", {"op": "enter_code", "code": code})
        assert reply["ok"], reply
        return reply["result"]

    async def parcel_state(pid: str) -> str:
        return str(next(p["state"] for p in await api("parcels") if p["id"] == pid))

    async with run_daemon(tmp_path, config) as proc:
        await api_up(sock, proc)
        assert (state / "disk-reserve").stat().st_size == 2**20
        opened = await keypad(codes["DF-1"][0])
        assert opened["status"] == "opened", opened
        label = opened["compartment"]
        await api("sim_door", label=label, action="close")
        await until_result(lambda: parcel_state("DF-1"), lambda s: s == "stored", what="stored")

        filler = state / "filler"
        await asyncio.to_thread(fill, filler)
        # the resident comes: the hub's next write meets the full disk, frees its
        # reserve, and the pickup goes on
        pickup = await keypad(codes["DF-1"][1])
        assert pickup["status"] == "opened", pickup
        assert not (state / "disk-reserve").exists()
        alarms = await until_result(
            lambda: api("alarms"), lambda a: any(x["type"] == "disk_full" for x in a)
        )
        assert alarms
        await api("sim_door", label=pickup["compartment"], action="close")
        await until_result(
            lambda: parcel_state("DF-1"), lambda s: s == "collected", what="collected"
        )
        assert await parcel_state("DF-2") == "reserved"  # nothing stored is lost
        text = log.read_text()
        assert '"disk_full"' in text
        assert "free space on the device" in text

        filler.unlink()  # room again: the reserve comes back by itself
        await until_result(
            lambda: asyncio.to_thread(log.read_text),
            lambda t: "disk_space_back" in t,
            what="disk_space_back",
        )
        assert (state / "disk-reserve").stat().st_size == 2**20
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    db = sqlite3.connect(f"file:{state / 'lockerd.db'}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM intents WHERE outcome IS NULL").fetchone()[0] == 0
    finally:
        db.close()
