"""A daemon killed between receiving a cloud command and acknowledging it: the command
is neither lost nor applied twice (ADR 0009). The kill comes from a named failpoint
(``LOCKERD_FAILPOINT``), which exits the process on the spot, like a power cut."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockerd.cli.cloudctl import load_signing_key
from lockerd.cloud import contract as c
from lockerd.hub.codes import CodeHasher, load_key
from tests.support.broker import Broker
from tests.support.demoproc import HUB_ID, kill_started, start_demo, watch_cloud
from tests.support.waiting import eventually


@pytest.fixture(autouse=True)
def _no_daemon_left_behind() -> Iterator[None]:
    """Whatever a test asserts, every daemon it started is gone afterwards."""
    yield
    kill_started()


def replies(seen: list[dict[str, Any]], cid: str) -> list[dict[str, Any]]:
    return [m for m in seen if m["topic"] == "reply" and m["id"] == cid]


def events(seen: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [m for m in seen if m["topic"] == "evt" and m["type"] == type_]


async def born(seen: list[dict[str, Any]], *, boot: int) -> None:
    await eventually(
        lambda: any(
            m["topic"] == "status" and m["state"] == "online" and m["boot_seq"] == boot
            for m in seen
        ),
        what=f"the hub's birth (boot {boot})",
        within=20,
    )


def reserved(seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events(seen, "parcel_reserved") if e["data"]["parcel"] == "P-crash"]


async def first_run(state: Path, broker: Broker) -> None:
    """Create the hub (its keys, its session at the broker), then stop it cleanly."""
    async with watch_cloud(broker) as (_, seen):
        proc = await start_demo(state, broker)
        await eventually(
            lambda: any(m["topic"] == "status" and m["state"] == "online" for m in seen),
            what="the hub's birth",
            within=10,
        )
    proc.terminate()
    assert await asyncio.wait_for(proc.wait(), 20) == 0


@pytest.mark.parametrize("failpoint", ["cloud.command_received", "cloud.command_committed"])
async def test_a_reservation_survives_a_kill_before_its_ack(
    tmp_path: Path, broker: Broker, failpoint: str
) -> None:
    state = tmp_path / "hub"
    await first_run(state, broker)
    hasher = CodeHasher(load_key(state / "keys" / "code-hmac.key"))
    now = int(time.time())
    body = {
        "id": "res-1",
        "type": "parcel.reserve",
        "hub": HUB_ID,
        "issued_at": now,
        "expires_at": now + 3600,
        "parcel": "P-crash",
        "size": "S",
        "deposit_code_hash": hasher.hash("11223344"),
        "pickup_code_hash": hasher.hash("55667788"),
        "deposit_from": now - 60,
        "deposit_until": now + 3600,
    }
    cmd = c.sign(body, load_signing_key(state / "keys" / "cloud-commands.key"))
    async with watch_cloud(broker) as (client, seen):
        proc = await start_demo(state, broker, failpoint)
        await born(seen, boot=2)  # subscribed again: the command reaches it live
        await client.publish(f"lockers/{HUB_ID}/cmd", json.dumps(cmd), qos=1)
        assert await asyncio.wait_for(proc.wait(), 20) == 99  # killed at the failpoint
        proc = await start_demo(state, broker)  # the broker redelivers: never acknowledged
        try:
            await eventually(lambda: bool(reserved(seen)), what="the effect")
            await eventually(lambda: bool(replies(seen, "res-1")), what="a reply")
            firsts = [r for r in replies(seen, "res-1") if not r["duplicate"]]
            assert len(firsts) == 1
            assert firsts[0]["ok"] is True
        finally:
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert len(reserved(seen)) == 1  # once in effect
        # a kill may come between an event's PUBACK and its deletion: it is sent again,
        # the same event under the same seq; deduplicated by seq, gapless
        by_seq: dict[int, dict[str, Any]] = {}
        for m in seen:
            if m["topic"] == "evt":
                assert by_seq.setdefault(m["seq"], m) == m
        assert sorted(by_seq) == list(range(min(by_seq), max(by_seq) + 1))


async def test_a_signed_open_killed_before_its_pulse_is_never_pulsed(
    tmp_path: Path, broker: Broker
) -> None:
    state = tmp_path / "hub"
    await first_run(state, broker)
    now = int(time.time())
    body: dict[str, Any] = {
        "id": "open-1",
        "type": "compartment.open",
        "hub": HUB_ID,
        "issued_at": now,
        "expires_at": now + 120,
        "compartment": "A05",
        "reason": "support",
    }
    cmd = c.sign(body, load_signing_key(state / "keys" / "cloud-commands.key"))
    async with watch_cloud(broker) as (client, seen):
        proc = await start_demo(state, broker, "cloud.open_committed")
        await born(seen, boot=2)  # subscribed again: the command reaches it live
        await client.publish(f"lockers/{HUB_ID}/cmd", json.dumps(cmd), qos=1)
        assert await asyncio.wait_for(proc.wait(), 20) == 99
        proc = await start_demo(state, broker)
        try:
            await eventually(
                lambda: bool(events(seen, "open_interrupted")), what="the intent reconciled"
            )
            await eventually(lambda: len(replies(seen, "open-1")) >= 1, what="a reply")
            statuses = {r["status"] for r in replies(seen, "open-1")}
            assert statuses == {"interrupted"}
        finally:
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert not [e for e in events(seen, "door_opened") if e["data"]["compartment"] == "A05"]
