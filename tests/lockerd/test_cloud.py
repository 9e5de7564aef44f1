"""The cloud link against a real Mosquitto started by the test: reservations in,
events out, duplicates, signed opens, outages. The hub is the demo hub on the
simulator (real ptys, real SQLite file); the cloud is an aiomqtt client."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel

from lockerd.cloud import contract as c
from lockerd.cloud import link as cloud_module
from lockerd.cloud.link import reservation
from lockerd.config import Cloud, Timers
from lockerd.daemon.wiring import Hub, open_hub
from lockerd.demo.ports import SimulatedPorts, simulators
from lockerd.demo.scene import demo_config
from lockerd.hub import domain as d
from lockerd.hub.codes import new_code
from tests.support.broker import Broker
from tests.support.cloud import (
    HUB,
    CloudSide,
    cloud_key,
    cloud_side,
    reserve_cmd,
    running_hub,
)
from tests.support.contract_check import validate_message
from tests.support.waiting import eventually


def open_cmd(cid: str, label: str, *, life: int = 60, hub: str = HUB) -> dict[str, Any]:
    now = int(time.time())
    return {
        "id": cid,
        "type": "compartment.open",
        "hub": hub,
        "issued_at": now,
        "expires_at": now + life,
        "compartment": label,
        "reason": "support call 42",
    }


# what a refusal for time says (the signature was good: it is never blamed)
TIME_WHY = {
    "expired": r"^expires_at \(1\) is before issued_at \(\d+\): the command was never valid",
    "late": r"^expires_at \(\d+\) passed 30\d s ago by the hub's clock \(\d+\), more than the "
    r"30 s it tolerates \(command_skew_s\): send a fresh command",
    "too_long": r"^expires_at - issued_at is 86400 s; a compartment.open may live at most "
    r"300 s \(the hub's command_max_life_s\)",
    "early": r"^issued_at \(\d+\) is \d+ s ahead of the hub's clock \(\d+\), more than the "
    r"30 s it tolerates \(command_skew_s\): check the clocks",
}


def validate(side: CloudSide) -> None:
    """Every message the cloud saw matches the contract's models."""
    models: dict[str, type[BaseModel]] = {
        "evt": c.EventMessage,
        "reply": c.Reply,
        "status": c.Status,
        "state": c.StateSnapshot,
    }
    for topic, msg, _ in side.seen:
        kind = topic.rsplit("/", 1)[1]
        if kind in models:
            models[kind].model_validate(msg)
            validate_message(kind, msg)  # and the published document (docs/asyncapi.json)


async def test_reserve_deposit_collect_round_trip(tmp_path: Path, broker: Broker) -> None:
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        deposit, pickup = new_code(8), new_code(8)
        await cloud.send(reserve_cmd(hub, "cmd-1", "P-1", deposit, pickup))
        await eventually(lambda: bool(cloud.replies("cmd-1")), what="reply to the reservation")
        assert cloud.replies("cmd-1")[0]["ok"] is True
        out = await hub.service.enter_code(deposit, "keypad")
        assert out.status == "opened"
        assert out.compartment is not None
        simulators(hub)["A"].board(0).close_door(int(out.compartment[1:]))
        await eventually(lambda: bool(cloud.events("deposited")), what="deposited event", within=10)
        out = await hub.service.enter_code(pickup, "keypad")
        assert out.status == "opened"
        simulators(hub)["A"].board(0).close_door(int(out.compartment[1:]))  # type: ignore[index]
        await eventually(lambda: bool(cloud.events("collected")), what="collected event", within=10)
        seqs = [e["seq"] for e in cloud.events()]
        assert seqs == sorted(seqs)
        assert len(seqs) == len(set(seqs))
        status = cloud.of("status")
        assert status[0]["state"] == "online"
        assert status[0]["boot_seq"] >= 1
        await eventually(lambda: bool(cloud.of("state")), what="a state snapshot")
        validate(cloud)
        await eventually(lambda: not hub.store.outbox(), what="outbox drained")
        raw = hub.store.path.read_bytes()
        assert deposit.encode() not in raw
        assert pickup.encode() not in raw


async def test_a_command_delivered_three_times_acts_once(tmp_path: Path, broker: Broker) -> None:
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        cmd = reserve_cmd(hub, "cmd-dup", "P-dup", new_code(8), new_code(8))
        for _ in range(3):
            await cloud.send(cmd)
        await eventually(lambda: len(cloud.replies("cmd-dup")) == 3, what="three replies")
        replies = cloud.replies("cmd-dup")
        assert [r["duplicate"] for r in replies].count(False) == 1
        assert {r["status"] for r in replies} == {"ok"}
        await eventually(lambda: bool(cloud.events("parcel_reserved")), what="the event")
        assert len(cloud.events("parcel_reserved")) == 1
        assert len([p for p in hub.store.parcels() if p.id == "P-dup"]) == 1


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("unsigned", "unsigned"),
        ("expired", "expired"),
        ("tampered", "bad_signature"),
        ("wrong_key", "bad_signature"),
        ("wrong_hub", "wrong_hub"),
        ("retained", "retained"),
        ("too_long", "lifetime_too_long"),
        ("malformed", "malformed"),
        ("early", "not_yet_valid"),
        ("late", "expired"),
    ],
)
async def test_a_bad_open_command_opens_nothing(
    tmp_path: Path, broker: Broker, name: str, reason: str
) -> None:
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        cmd = open_cmd(f"open-{name}", "A05")
        retain = False
        if name == "unsigned":
            pass
        elif name == "expired":
            cmd = cloud.sign({**cmd, "issued_at": cmd["issued_at"] - 600, "expires_at": 1})
        elif name == "tampered":
            cmd = {**cloud.sign(cmd), "compartment": "A06"}
        elif name == "wrong_key":
            other = CloudSide(cloud.client, Ed25519PrivateKey.generate())
            cmd = other.sign(cmd)
        elif name == "wrong_hub":
            cmd = cloud.sign(open_cmd(f"open-{name}", "A05", hub="other-hub"))
        elif name == "retained":
            cmd, retain = cloud.sign(cmd), True
        elif name == "too_long":
            cmd = cloud.sign(open_cmd(f"open-{name}", "A05", life=86_400))
        elif name == "early":
            cmd = cloud.sign(
                {**cmd, "issued_at": cmd["issued_at"] + 600, "expires_at": cmd["issued_at"] + 660}
            )
        elif name == "late":
            cmd = cloud.sign(
                {**cmd, "issued_at": cmd["issued_at"] - 600, "expires_at": cmd["issued_at"] - 300}
            )
        else:
            cmd = {"id": f"open-{name}", "type": "compartment.open", "hub": HUB}
        await cloud.send(cmd, retain=retain)
        await eventually(lambda: bool(cloud.replies(f"open-{name}")), what="the refusal")
        (reply,) = cloud.replies(f"open-{name}")
        assert reply["ok"] is False
        assert reply["status"] == reason
        if name in TIME_WHY:  # a refusal for time says which time, never the signature
            assert re.search(TIME_WHY[name], reply["message"]), reply["message"]
            assert "signature" not in reply["message"]
        await eventually(lambda: bool(cloud.events("command_refused")), what="the event")
        assert cloud.events("command_refused")[0]["data"]["reason"] == reason
        assert simulators(hub)["A"].board(0).unlocks_of(5) == 0
        if retain:  # clear it, or the next test's broker... (each test has its own)
            await cloud.client.publish(f"lockers/{HUB}/cmd", b"", qos=1, retain=True)


async def test_a_signed_open_opens_once_even_when_replayed(tmp_path: Path, broker: Broker) -> None:
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        cmd = cloud.sign(open_cmd("open-ok", "A05"))
        await cloud.send(cmd)
        await eventually(
            lambda: any(r["status"] == "opened" for r in cloud.replies("open-ok")),
            what="opened",
            within=10,
        )
        await cloud.send(cmd)  # a replay
        await eventually(lambda: len(cloud.replies("open-ok")) == 2, what="the stored reply")
        assert cloud.replies("open-ok")[1]["duplicate"] is True
        assert simulators(hub)["A"].board(0).unlocks_of(5) == 1


async def test_an_outage_loses_nothing_and_commands_wait(tmp_path: Path, broker: Broker) -> None:
    """The broker stops mid-stream; deposits happen meanwhile; a command is queued for the
    hub while it is away. After the restart the cloud (a persistent session of its own)
    gets every event once, in seq order, and the command is applied once."""
    seen: list[dict[str, Any]] = []
    subscribed = asyncio.Event()

    def cloud_client() -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        return aiomqtt.Client(
            broker.host,
            broker.port,
            identifier="cloud-persistent",
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
        )

    async def listen() -> None:
        while True:
            try:
                async with cloud_client() as client:
                    await client.subscribe(f"lockers/{HUB}/evt", qos=1)
                    subscribed.set()
                    async for m in client.messages:
                        seen.append(json.loads(bytes(m.payload)))  # type: ignore[arg-type,unused-ignore]  # noqa: PERF401
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)

    async with running_hub(tmp_path, broker) as hub:
        assert hub.cloud is not None
        link = hub.cloud
        await asyncio.wait_for(link.connected.wait(), 10)
        listener = asyncio.create_task(listen())
        try:
            await asyncio.wait_for(subscribed.wait(), 10)
            broker.stop()
            await eventually(lambda: not link.connected.is_set(), what="link down")
            for i in range(3):
                dep, pick = new_code(8), new_code(8)
                await hub.service.reserve(*_parcel(hub, f"OFF-{i}", dep, pick), actor="test")
                out = await hub.service.enter_code(dep, "keypad")
                assert out.status == "opened"
                assert out.compartment is not None
                simulators(hub)["A"].board(0).close_door(int(out.compartment[1:]))
            await eventually(
                lambda: sum(1 for r in hub.store.outbox(limit=1000) if r.type == "deposited") == 3,
                what="three deposits stored offline",
                within=10,
            )
            broker.start()
            async with aiomqtt.Client(
                broker.host, broker.port, identifier="sender", protocol=aiomqtt.ProtocolVersion.V5
            ) as sender:
                cmd = reserve_cmd(hub, "cmd-offline", "P-offline", new_code(8), new_code(8))
                await sender.publish(f"lockers/{HUB}/cmd", json.dumps(cmd), qos=1)
            await asyncio.wait_for(link.connected.wait(), 10)
            await eventually(lambda: not hub.store.outbox(), what="outbox drained", within=10)
            await eventually(
                lambda: hub.store.parcel("P-offline") is not None, what="queued command applied"
            )
            await eventually(
                lambda: len({e["data"]["parcel"] for e in seen if e["type"] == "deposited"}) == 3,
                what="the offline deposits at the cloud",
            )
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
    by_seq: dict[int, dict[str, Any]] = {}
    for e in seen:
        assert by_seq.setdefault(e["seq"], e) == e  # a repeat is the same event
    assert sorted(by_seq) == list(range(min(by_seq), max(by_seq) + 1))  # gapless
    first = [e["seq"] for e in seen if by_seq[e["seq"]] is e]
    assert first == sorted(first)  # each event's first arrival is in seq order
    deposited = [e for e in by_seq.values() if e["type"] == "deposited"]
    assert sorted(e["data"]["parcel"] for e in deposited) == ["OFF-0", "OFF-1", "OFF-2"]


def _parcel(hub: Hub, pid: str, dep: str, pick: str) -> tuple[Any, Any]:
    now = int(time.time())
    r = c.Reservation(
        parcel=pid,
        size="S",
        deposit_code_hash=hub.service.hasher.hash(dep),
        pickup_code_hash=hub.service.hasher.hash(pick),
        deposit_from=now - 60,
        deposit_until=now + 3600,
    )
    return reservation(r)


async def test_tls_with_client_certificates_and_acls(tmp_path: Path, make_broker: Any) -> None:
    """The hub daemon end to end behind the shipped broker settings
    (config/mosquitto-lockerd.conf, config/mosquitto-acl.conf), and what the ACL keeps
    from a hub's identity: another hub's topics, its own `cmd`, what the hub sends."""
    broker = make_broker(tls=True, acl=True)
    hub_cert = broker.make_client_cert(HUB)
    cloud_cert = broker.make_client_cert("cloud")
    cloud = Cloud(
        url=broker.tls_url,
        ca_file=str(broker.ca_cert),
        cert_file=str(hub_cert.certfile),
        key_file=str(hub_cert.keyfile),
        state_coalesce_s=0.05,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
    )
    async with running_hub(tmp_path, broker, cloud=cloud) as hub:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        async with cloud_side(
            broker, hub, port=broker.tls_port, tls=cloud_cert.ssl_context()
        ) as side:
            dep = new_code(8)
            await side.send(reserve_cmd(hub, "tls-1", "P-tls", dep, new_code(8)))
            await eventually(lambda: bool(side.replies("tls-1")), what="reply over TLS")
            assert side.replies("tls-1")[0]["ok"] is True
            # everything the hub publishes passes the ACL: reply, evt, status, state
            await eventually(lambda: bool(side.events("parcel_reserved")), what="the event")
            await eventually(lambda: bool(side.of("state")), what="a snapshot")
            assert side.of("status")[0]["state"] == "online"
            assert (await hub.service.enter_code(dep, "keypad")).status == "opened"
            await eventually(lambda: bool(side.events("door_opened")), what="door telemetry")

    # Whoever holds the hub's key is the hub to the broker: whatever client id it sends,
    # it gets the hub's (use_username_as_clientid), so it would take the daemon's place;
    # here the daemon has stopped, and its retained status and state stay. It still
    # cannot command the hub, read another hub's topics, publish on them, nor read what
    # the hub sends.
    async with (
        cloud_side(broker, hub, port=broker.tls_port, tls=cloud_cert.ssl_context()) as side,
        aiomqtt.Client(
            broker.host,
            broker.tls_port,
            identifier="spy",
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=hub_cert.ssl_context(),
        ) as as_hub,
    ):
        # the cloud reads the hub's retained status and state: they are there to be read
        await eventually(
            lambda: bool(side.of("status")) and bool(side.of("state")),
            what="the hub's retained status and state at the cloud",
        )
        await as_hub.subscribe("lockers/other-hub/#", qos=1)
        await as_hub.subscribe(f"lockers/{HUB}/#", qos=1)
        now = int(time.time())
        forged = reserve_cmd(hub, "forged-1", "P-forged", new_code(8), new_code(8))
        await as_hub.publish(f"lockers/{HUB}/cmd", json.dumps(forged), qos=1)
        await as_hub.publish("lockers/other-hub/evt", b"forged", qos=1)
        await side.client.publish("lockers/other-hub/cmd", b"secret", qos=1)
        await side.send({"id": "sentinel-1", "type": "sync.request", "hub": HUB, "issued_at": now})
        got = await asyncio.wait_for(anext(as_hub.messages), 5)
        # its own commands only: not the other hub's, not its own forged one, not the
        # hub's retained status and state (they would have come first)
        assert str(got.topic) == f"lockers/{HUB}/cmd"
        assert json.loads(bytes(got.payload))["id"] == "sentinel-1"  # type: ignore[arg-type,unused-ignore]
        await eventually(
            lambda: any(m["id"] == "sentinel-1" for m in side.of("cmd")),
            what="the sentinel at the cloud",
        )
        await asyncio.sleep(0.2)  # proving absence, bounded
        assert len(as_hub.messages) == 0
        assert [m["id"] for m in side.of("cmd")] == ["sentinel-1"]  # never the forged one
    log = broker.log_tail(500)
    assert "Denied PUBLISH" in log
    # the last to connect was the spy, under the hub's client id, not the one it sent
    connected = [line for line in log.splitlines() if "New client connected" in line]
    assert f" as {HUB} (" in connected[-1]


async def test_a_hub_with_a_bad_certificate_is_refused(tmp_path: Path, make_broker: Any) -> None:
    broker = make_broker(tls=True, acl=True)
    expired = broker.make_client_cert(HUB, expired=True)
    cloud = Cloud(
        url=broker.tls_url,
        ca_file=str(broker.ca_cert),
        cert_file=str(expired.certfile),
        key_file=str(expired.keyfile),
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
    )
    async with running_hub(tmp_path, broker, cloud=cloud) as hub:
        assert hub.cloud is not None
        await eventually(
            lambda: "certificate verify failed" in broker.log_tail(200),
            what="the broker refusing the certificate",
            within=15,
        )
        assert not hub.cloud.connected.is_set()
        # and the hub serves on without its cloud
        assert (await hub.service.enter_code("00000000", "keypad")).status == "refused"


async def test_username_and_password_instead_of_a_certificate(
    tmp_path: Path, make_broker: Any
) -> None:
    broker = make_broker(passwords={HUB: "s3cret-hub", "cloud": "s3cret-cloud"})
    (tmp_path / "mqtt-password").write_text("s3cret-hub\n")
    cloud = Cloud(
        url=broker.plain_url,
        username=HUB,
        password_file=str(tmp_path / "mqtt-password"),
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
    )
    async with running_hub(tmp_path, broker, cloud=cloud) as hub:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        health = await hub.cloud.health()
        assert health["connected"] is True
    (tmp_path / "mqtt-password").write_text("wrong\n")
    async with running_hub(tmp_path, broker, cloud=cloud) as hub:
        assert hub.cloud is not None
        await eventually(
            lambda: (
                "not authorised" in broker.log_tail(100).lower()
                or "bad user name or password" in broker.log_tail(100).lower()
            ),
            what="the broker refusing the password",
        )
        assert not hub.cloud.connected.is_set()


async def test_every_other_command_over_mqtt(tmp_path: Path, broker: Broker) -> None:
    """update_codes, recall, set_service, sync.request, return.reserve and codes.bulk."""
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        h = hub.service.hasher
        now = int(time.time())
        env = {"hub": HUB, "issued_at": now}
        dep, pick, new_pick, recall = (new_code(8) for _ in range(4))
        await cloud.send(reserve_cmd(hub, "c-res", "P-1", dep, pick))
        await cloud.send(
            cloud.grant(
                {
                    **env,
                    "id": "c-upd",
                    "type": "parcel.update_codes",
                    "parcel": "P-1",
                    "pickup_code_hash": h.hash(new_pick),
                }
            )
        )
        await cloud.send(
            {
                **env,
                "id": "c-svc",
                "type": "compartment.set_service",
                "compartment": "A01",
                "in_service": False,
            }
        )
        await cloud.send(
            cloud.grant(
                {
                    **env,
                    "id": "c-ret",
                    "type": "return.reserve",
                    "parcel": "R-1",
                    "size": "S",
                    "deposit_code_hash": h.hash(new_code(8)),
                    "pickup_code_hash": h.hash(new_code(8)),
                    "deposit_from": now - 60,
                    "deposit_until": now + 3600,
                }
            )
        )
        bulk = [
            {
                "parcel": f"B-{i}",
                "size": "S",
                "deposit_code_hash": h.hash(f"7{i:07d}"),
                "pickup_code_hash": h.hash(f"8{i:07d}"),
                "deposit_from": now - 60,
                "deposit_until": now + 3600,
            }
            for i in range(3)
        ]
        bulk.append({**bulk[0], "parcel": "B-dup-code"})
        await cloud.send(
            cloud.grant({**env, "id": "c-bulk", "type": "codes.bulk", "reservations": bulk})
        )
        await cloud.send({**env, "id": "c-sync", "type": "sync.request"})
        ids = ["c-res", "c-upd", "c-svc", "c-ret", "c-bulk", "c-sync"]
        await eventually(lambda: all(cloud.replies(i) for i in ids), what="every reply")
        assert all(cloud.replies(i)[0]["ok"] for i in ids), [cloud.replies(i) for i in ids]
        result = cloud.replies("c-bulk")[0]["result"]
        assert result["reserved"] == 3
        assert result["code_conflict"] == ["B-dup-code"]
        assert result["code_used"] == []
        # one parcel_reserved per parcel it stored, as parcel.reserve sends (the guide)
        await eventually(
            lambda: len(cloud.events("parcel_reserved")) == 5, what="the reservations' events"
        )
        reserved = {e["data"]["parcel"] for e in cloud.events("parcel_reserved")}
        assert reserved == {"P-1", "R-1", "B-0", "B-1", "B-2"}
        snap = cloud.replies("c-sync")[0]["result"]
        a01 = next(x for x in snap["compartments"] if x["label"] == "A01")
        assert a01["state"] == "out_of_service"
        # the new pickup code replaced the old one
        out = await hub.service.enter_code(dep, "keypad")
        assert out.status == "opened"
        assert out.compartment is not None
        simulators(hub)["A"].board(0).close_door(int(out.compartment[1:]))
        await eventually(lambda: bool(cloud.events("deposited")), what="deposited", within=10)
        assert (await hub.service.enter_code(pick, "keypad")).status == "refused"
        # a recall code for a stored (not yet expired) parcel is accepted; it opens only
        # once the parcel has expired (the domain rules)
        await cloud.send(
            cloud.grant(
                {
                    **env,
                    "id": "c-rec",
                    "type": "parcel.recall",
                    "parcel": "P-1",
                    "recall_code_hash": h.hash(recall),
                }
            )
        )
        await eventually(lambda: bool(cloud.replies("c-rec")), what="recall reply")
        assert cloud.replies("c-rec")[0]["ok"] is True
        assert (await hub.service.enter_code(recall, "keypad:2")).status == "refused"
        assert (await hub.service.enter_code(new_pick, "keypad:3")).status == "opened"


# --------------------------------------------------------------------------------------
# Signed authority: what an attacker on the command topic tried (issue 10)


async def _deposit(hub: Hub, code: str, pid: str, terminal: str = "keypad") -> str:
    out = await hub.service.enter_code(code, terminal)
    assert out.status == "opened", out
    assert out.compartment is not None
    simulators(hub)["A"].board(0).close_door(int(out.compartment[1:]))
    await eventually(
        lambda: getattr(hub.store.parcel(pid), "state", None) is d.ParcelState.STORED,
        what=f"{pid} stored",
        within=10,
    )
    return out.compartment


async def _collect(hub: Hub, code: str, pid: str) -> None:
    out = await hub.service.enter_code(code, "keypad")
    assert out.status == "opened", out
    assert out.compartment is not None
    simulators(hub)["A"].board(0).close_door(int(out.compartment[1:]))
    await eventually(
        lambda: getattr(hub.store.parcel(pid), "state", None) is d.ParcelState.COLLECTED,
        what=f"{pid} collected",
        within=10,
    )


async def _reply(cloud: CloudSide, cid: str) -> dict[str, Any]:
    await eventually(lambda: bool(cloud.replies(cid)), what=f"the reply to {cid}")
    return cloud.replies(cid)[-1]


async def test_a_spent_code_cannot_be_attached_to_another_parcel(
    tmp_path: Path, broker: Broker
) -> None:
    """The hole: a carrier saw its own (spent) deposit code's hash on the command topic
    and attached it, with an unsigned parcel.update_codes, to someone else's stored
    parcel. Unsigned, it is refused; signed (the cloud's own mistake), the tombstone
    refuses it. Either way the door does not open with that code."""
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        h = hub.service.hasher
        dep1, pick1, dep2, pick2 = (new_code(8) for _ in range(4))
        await cloud.send(reserve_cmd(hub, "r-1", "P-1", dep1, pick1))
        await cloud.send(reserve_cmd(hub, "r-2", "P-2", dep2, pick2))
        assert (await _reply(cloud, "r-1"))["ok"] is True
        assert (await _reply(cloud, "r-2"))["ok"] is True
        await _deposit(hub, dep1, "P-1")  # the carrier's deposit code is spent now
        await _collect(hub, pick1, "P-1")  # and the resident's pickup code
        label = await _deposit(hub, dep2, "P-2")
        board = simulators(hub)["A"].board(0)
        unlocks = board.unlocks_of(int(label[1:]))
        now = int(time.time())
        attack = {
            "id": "evil-1",
            "type": "parcel.update_codes",
            "hub": HUB,
            "issued_at": now,
            "parcel": "P-2",
            "pickup_code_hash": h.hash(dep1),
        }
        await cloud.send(attack)
        reply = await _reply(cloud, "evil-1")
        assert (reply["ok"], reply["status"]) == (False, "unsigned")
        await eventually(
            lambda: any(e["data"]["command"] == "evil-1" for e in cloud.events("command_refused")),
            what="the refusal's event",
        )
        assert (await hub.service.enter_code(dep1, "keypad:2")).status != "opened"
        # the same, signed: the cloud itself re-used a spent code (or a replaced one)
        for n, spent in enumerate((dep1, pick1)):
            cid = f"evil-signed-{n}"
            await cloud.send(cloud.grant({**attack, "id": cid, "pickup_code_hash": h.hash(spent)}))
            reply = await _reply(cloud, cid)
            assert (reply["ok"], reply["status"]) == (False, "refused")
            assert "used before" in reply["message"]
            assert (await hub.service.enter_code(spent, f"keypad:{3 + n}")).status != "opened"
        assert board.unlocks_of(int(label[1:])) == unlocks  # the door never opened
        assert hub.store.code(h.hash(pick2)) is not None  # P-2's own code is untouched
        await _collect(hub, pick2, "P-2")


@pytest.mark.parametrize(
    "kind", ["parcel.reserve", "return.reserve", "parcel.recall", "codes.bulk"]
)
async def test_an_unsigned_grant_is_refused_and_stores_nothing(
    tmp_path: Path, broker: Broker, kind: str
) -> None:
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        h = hub.service.hasher
        dep, pick, evil = new_code(8), new_code(8), new_code(8)
        await cloud.send(reserve_cmd(hub, "r-1", "P-1", dep, pick))
        assert (await _reply(cloud, "r-1"))["ok"] is True
        await _deposit(hub, dep, "P-1")
        now = int(time.time())
        one = reserve_cmd(hub, "x", "P-evil", evil, new_code(8), signed=False)
        res = {k: v for k, v in one.items() if k not in ("id", "type", "hub", "issued_at")}
        env = {"id": "evil", "hub": HUB, "issued_at": now}
        cmd = {
            "parcel.reserve": {**env, **res, "type": "parcel.reserve"},
            "return.reserve": {**env, **res, "type": "return.reserve"},
            "parcel.recall": {
                **env,
                "type": "parcel.recall",
                "parcel": "P-1",
                "recall_code_hash": h.hash(evil),
            },
            "codes.bulk": {**env, "type": "codes.bulk", "reservations": [res]},
        }[kind]
        stranger = CloudSide(cloud.client, Ed25519PrivateKey.generate())
        variants: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "unsigned": lambda m: m,
            "tampered": lambda m: cloud.grant(m) | {"issued_at": now + 1},
            "wrong_key": stranger.grant,
            "too_long": lambda m: cloud.grant(m, life=8 * 86_400),
        }
        reasons = {"tampered": "bad_signature", "wrong_key": "bad_signature"}
        for variant, make in variants.items():
            cid = f"evil-{variant}"
            await cloud.send(make({**cmd, "id": cid}))
            reply = await _reply(cloud, cid)
            reason = reasons.get(variant, variant.replace("too_long", "lifetime_too_long"))
            assert (reply["ok"], reply["status"]) == (False, reason), reply
        assert hub.store.parcel("P-evil") is None
        assert hub.store.code(h.hash(evil)) is None
        assert not cloud.events("parcel_codes_changed")
        assert (await hub.service.enter_code(evil, "keypad:2")).status != "opened"


async def test_a_replayed_reservation_does_nothing_again(tmp_path: Path, broker: Broker) -> None:
    """A signed reservation captured on the topic and sent again after its parcel was
    collected: under its id it gets the stored reply; under another id its signature
    breaks; once the inbox forgot it, it has expired; and the cloud's own re-issue of
    its codes meets the tombstones."""
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        assert hub.cloud is not None
        link = hub.cloud
        await asyncio.wait_for(link.connected.wait(), 10)
        dep, pick = new_code(8), new_code(8)
        captured = reserve_cmd(hub, "r-1", "P-1", dep, pick)
        await cloud.send(captured)
        assert (await _reply(cloud, "r-1"))["ok"] is True
        await _deposit(hub, dep, "P-1")
        await _collect(hub, pick, "P-1")
        await cloud.send(captured)  # the replay
        await eventually(lambda: len(cloud.replies("r-1")) == 2, what="the stored reply")
        assert cloud.replies("r-1")[1]["duplicate"] is True
        await cloud.send({**captured, "id": "r-1-again", "parcel": "P-again"})
        assert (await _reply(cloud, "r-1-again"))["status"] == "bad_signature"
        # the inbox row pruned (after the retention) and the lifetime over: expired
        await hub.service.run_db(hub.store._db.execute, "DELETE FROM inbox WHERE command_id='r-1'")
        real = link.clock
        link.clock = lambda: real() + link.cfg.grant_max_life_s + link.cfg.command_skew_s + 60
        try:
            await cloud.send(captured)
            await eventually(lambda: len(cloud.replies("r-1")) == 3, what="the third reply")
            assert cloud.replies("r-1")[2]["status"] == "expired"
        finally:
            link.clock = real
        # the cloud itself re-issues the spent codes for a new parcel: the tombstones
        await cloud.send(
            cloud.grant(
                {
                    **{k: v for k, v in captured.items() if k not in ("sig", "expires_at")},
                    "id": "r-2",
                    "parcel": "P-2",
                }
            )
        )
        reply = await _reply(cloud, "r-2")
        assert (reply["status"], reply["ok"]) == ("refused", False)
        assert "used before" in reply["message"]
        assert hub.store.parcel("P-2") is None
        assert len(cloud.events("parcel_reserved")) == 1
        for n, code in enumerate((dep, pick)):
            assert (await hub.service.enter_code(code, f"keypad:{n + 2}")).status != "opened"


@pytest.mark.parametrize("big", [False, True], ids=["small", "big"])
async def test_a_tampered_signed_bulk_is_refused(tmp_path: Path, broker: Broker, big: bool) -> None:
    """codes.bulk: the small one verified over its JSON object, the big one (over
    cloud.BIG, validated straight from its bytes) over the canonical bytes of its model."""
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        h = hub.service.hasher
        now = int(time.time())
        n = 400 if big else 3
        bulk = [
            {
                "parcel": f"B-{i}",
                "size": "S",
                "deposit_code_hash": h.hash(f"7{i:07d}"),
                "pickup_code_hash": h.hash(f"8{i:07d}"),
                "deposit_from": now - 60,
                "deposit_until": now + 3600,
                **({"recall_code_hash": None, "accessible": False} if i % 2 else {}),
            }
            for i in range(n)
        ]
        env = {"hub": HUB, "issued_at": now, "type": "codes.bulk"}
        good = cloud.grant({**env, "id": "bulk-ok", "reservations": bulk})
        assert (len(json.dumps(good)) > cloud_module.BIG) is big
        evil = h.hash("12345678")
        tampered = cloud.grant({**env, "id": "bulk-evil", "reservations": bulk})
        tampered["reservations"] = [
            *bulk[:-1],
            {**bulk[-1], "parcel": "B-evil", "pickup_code_hash": evil},
        ]
        await cloud.send(tampered)
        reply = await _reply(cloud, "bulk-evil")
        assert (reply["ok"], reply["status"]) == (False, "bad_signature")
        assert hub.store.parcels() == []
        await cloud.send({k: v for k, v in good.items() if k != "sig"} | {"id": "bulk-bare"})
        assert (await _reply(cloud, "bulk-bare"))["status"] == "unsigned"
        await cloud.send(good)
        reply = await _reply(cloud, "bulk-ok")
        assert reply["ok"] is True, reply
        assert reply["result"]["reserved"] == n
        assert hub.store.code(evil) is None


async def test_a_stop_while_the_broker_goes_away_still_stops(
    tmp_path: Path, broker: Broker
) -> None:
    """The daemon's stop (close, then cancel) as the connection breaks: the link ends.
    (A cancel alone can be lost: Python 3.11's wait_for, inside aiomqtt, may swallow it,
    and a failing task group can surface the connection's error instead; the link once
    went on reconnecting and the daemon never exited on SIGTERM.)"""
    cfg, _ = demo_config(str(tmp_path / "hub"), str(tmp_path / "api.sock"))
    cloud = Cloud(url=broker.url, reconnect_min_s=0.05, reconnect_max_s=0.2)
    async with open_hub(cfg.model_copy(update={"cloud": cloud}), ports=SimulatedPorts()) as hub:
        assert hub.cloud is not None
        task = asyncio.create_task(hub.cloud.run())
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        broker.kill()
        hub.cloud.close()  # what serve() does on SIGTERM, before cancelling
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        assert done, "the link did not stop"
        # and a link told to stop never starts again
        again = asyncio.create_task(hub.cloud.run())
        done, _ = await asyncio.wait([again], timeout=5)
        assert done


# --------------------------------------------------------------------------------------
# What the guide promises (docs/cloud-guide.md, issue 12)


def _grant_reservation(
    hub: Hub, cloud: CloudSide, cid: str, pid: str, **extra: Any
) -> dict[str, Any]:
    now = int(time.time())
    return cloud.grant(
        {
            "id": cid,
            "type": "parcel.reserve",
            "hub": HUB,
            "issued_at": now,
            "parcel": pid,
            "size": "S",
            "deposit_code_hash": hub.service.hasher.hash(new_code(8)),
            "pickup_code_hash": hub.service.hasher.hash(new_code(8)),
            "deposit_from": now - 60,
            "deposit_until": now + 3600,
            **extra,
        }
    )


async def test_a_reservation_without_a_window_gets_the_hubs(tmp_path: Path, broker: Broker) -> None:
    """``[timers] pickup_window_h`` (handed to the link as ``default_collect_window_s``)
    is the window of a cloud reservation that gives none; one that gives its own keeps
    it. Before: the contract's own default, 72 h, whatever the hub's config said."""
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        link = hub.cloud
        assert link is not None
        await asyncio.wait_for(link.connected.wait(), 10)
        link.default_collect_window_s = 5 * 3600.0  # as open_hub passes pickup_window_h = 5
        await cloud.send(_grant_reservation(hub, cloud, "w-1", "P-hub-window"))
        await cloud.send(_grant_reservation(hub, cloud, "w-2", "P-own", pickup_window_s=7200))
        one = _grant_reservation(hub, cloud, "x", "B-1")
        body = {k: v for k, v in one.items() if k in c.Reservation.model_fields}
        now = int(time.time())
        await cloud.send(
            cloud.grant(
                {
                    "id": "w-3",
                    "type": "codes.bulk",
                    "hub": HUB,
                    "issued_at": now,
                    "reservations": [body],
                }
            )
        )
        for cid in ("w-1", "w-2", "w-3"):
            assert (await _reply(cloud, cid))["ok"] is True
        windows = {p.id: p.collect_window_s for p in hub.store.parcels()}
        assert windows == {"P-hub-window": 5 * 3600.0, "P-own": 7200.0, "B-1": 5 * 3600.0}
    # the link's own default, when it is told none: the config's default
    r = c.Reservation.model_validate({**body, "parcel": "P-x"})
    assert reservation(r)[0].collect_window_s == Timers().pickup_window_h * 3600
    assert reservation(r, 600.0)[0].collect_window_s == 600.0
    assert (
        cloud_module.CloudLink.__init__.__kwdefaults__["default_collect_window_s"]  # type: ignore[index]
        == 72 * 3600.0
    )


@pytest.mark.parametrize("kind", ["parcel.cancel", "compartment.set_service", "sync.request"])
async def test_an_unsigned_command_past_its_expires_at_is_refused(
    tmp_path: Path, broker: Broker, kind: str
) -> None:
    """The guide said `expires_at` meant nothing on a command that needs no signature:
    now any command that carries one is not carried out after it."""
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        dep = new_code(8)
        await cloud.send(reserve_cmd(hub, "r-1", "P-1", dep, new_code(8)))
        assert (await _reply(cloud, "r-1"))["ok"] is True
        now = int(time.time())
        by_kind: dict[str, dict[str, Any]] = {
            "parcel.cancel": {"parcel": "P-1"},
            "compartment.set_service": {"compartment": "A01", "in_service": False},
            "sync.request": {},
        }
        fields = by_kind[kind]
        env = {"type": kind, "hub": HUB, "issued_at": now - 600, **fields}
        await cloud.send({**env, "id": "late-1", "expires_at": now - 300})
        reply = await _reply(cloud, "late-1")
        assert (reply["ok"], reply["status"]) == (False, "expired"), reply
        assert "passed" in reply["message"]
        assert reply["result"] == {}  # (a sync.request: no snapshot)
        await eventually(
            lambda: any(e["data"]["command"] == "late-1" for e in cloud.events("command_refused")),
            what="the refusal's event",
        )
        parcel = hub.store.parcel("P-1")
        assert parcel is not None
        assert parcel.state is d.ParcelState.RESERVED
        a01 = hub.store.compartment("A01")
        assert a01 is not None
        assert a01.in_service
        assert hub.store.inbox("late-1") is None  # refused at the door: the id is not used up
        # within its time it is carried out, under the same id
        await cloud.send({**env, "id": "late-1", "expires_at": now + 300})
        await eventually(lambda: len(cloud.replies("late-1")) == 2, what="the second reply")
        assert cloud.replies("late-1")[1]["ok"] is True


async def test_clearing_a_retained_command_gets_one_retained_refusal(
    tmp_path: Path, broker: Broker
) -> None:
    """How the guide says to clear a retained command: an empty retained message on
    `cmd`. The broker forgets it; the hub gets the empty message too and answers it with
    one `retained` refusal of id `unknown`."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def replies() -> list[dict[str, Any]]:
        return [m for kind, m in seen if kind == "reply"]

    def refused() -> list[dict[str, Any]]:
        return [m["data"] for kind, m in seen if kind == "evt" and m["type"] == "command_refused"]

    async with (
        running_hub(tmp_path, broker) as hub,
        aiomqtt.Client(
            broker.host, broker.port, identifier="cloud", protocol=aiomqtt.ProtocolVersion.V5
        ) as cloud,
    ):
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        await cloud.subscribe(f"lockers/{HUB}/reply", qos=1)
        await cloud.subscribe(f"lockers/{HUB}/evt", qos=1)

        async def collect() -> None:
            async for m in cloud.messages:
                body = json.loads(bytes(m.payload))  # type: ignore[arg-type,unused-ignore]
                seen.append((str(m.topic).rsplit("/", 1)[1], body))

        task = asyncio.create_task(collect())
        try:
            cmd = c.sign(open_cmd("kept-1", "A05"), cloud_key(hub))
            await cloud.publish(f"lockers/{HUB}/cmd", json.dumps(cmd), qos=1, retain=True)
            await eventually(lambda: bool(replies()), what="the retained command's refusal")
            await cloud.publish(f"lockers/{HUB}/cmd", b"", qos=1, retain=True)  # clear it
            sync = {"id": "after", "type": "sync.request", "hub": HUB, "issued_at": 1}
            await cloud.publish(f"lockers/{HUB}/cmd", json.dumps(sync), qos=1)
            await eventually(lambda: any(r["id"] == "after" for r in replies()), what="after")
            await eventually(lambda: len(refused()) == 2, what="both refusals' events")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert [(r["id"], r["status"]) for r in replies()] == [
            ("kept-1", "retained"),
            ("unknown", "retained"),  # the clearing's, once
            ("after", "ok"),
        ]
        assert [(r["command"], r["reason"]) for r in refused()] == [
            ("kept-1", "retained"),
            (None, "retained"),
        ]
        # and the broker keeps nothing for the next subscriber
        async with aiomqtt.Client(broker.host, broker.port, identifier="late-sub") as sub:
            await sub.subscribe(f"lockers/{HUB}/cmd", qos=1)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):  # proving absence, bounded
                    await anext(sub.messages)
        assert simulators(hub)["A"].board(0).unlocks_of(5) == 0


async def test_a_door_open_for_someone_is_refused_a_door_standing_open_is_already_open(
    tmp_path: Path, broker: Broker
) -> None:
    """`already_open` is for a door that stands open with nothing under way; a second
    open of a door still open from the first is `refused`, and says why."""
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        board = simulators(hub)["A"].board(0)
        await cloud.send(cloud.sign(open_cmd("open-1", "A05")))
        await eventually(
            lambda: any(r["status"] == "opened" for r in cloud.replies("open-1")),
            what="opened",
            within=10,
        )
        await cloud.send(cloud.sign(open_cmd("open-2", "A05")))
        second = await _reply(cloud, "open-2")
        assert (second["ok"], second["status"]) == (False, "refused")
        assert "A05 is busy" in second["message"]  # the technician's reason, not the keypad's
        assert board.unlocks_of(5) == 1
        board.close_door(5)
        await eventually(lambda: bool(cloud.events("service_door_shut")), what="shut", within=10)
        board.open_door(6)  # forced: open, with nothing under way
        await eventually(lambda: bool(cloud.events("forced_open")), what="forced", within=10)
        await cloud.send(cloud.sign(open_cmd("open-3", "A06")))
        await eventually(
            lambda: any(r["status"] != "opening" for r in cloud.replies("open-3")),
            what="the reply",
            within=10,
        )
        third = cloud.replies("open-3")[-1]
        assert (third["ok"], third["status"]) == (True, "already_open")
        assert board.unlocks_of(6) == 0
