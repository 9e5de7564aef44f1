"""The demo hub in this process with a cloud link to a real Mosquitto
(:func:`running_hub`, built by the one wiring, open_hub, on simulated boards), and the
cloud on the other side (:func:`cloud_side`: an aiomqtt client that watches the hub,
checks every message the hub sends against the published contract, and signs what
must be signed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lockerd.cli.cloudctl import load_signing_key
from lockerd.cloud import contract as c
from lockerd.config import Cloud
from lockerd.daemon.wiring import Hub, open_hub
from lockerd.demo.ports import SimulatedPorts
from lockerd.demo.scene import demo_config
from tests.support.broker import Broker
from tests.support.contract_check import validate_message

HUB = "demo-hub"  # the demo hub's id: running_hub's


@dataclass
class CloudSide:
    """The cloud: watches lockers/HUB/#, sends commands, signs what must be signed."""

    client: aiomqtt.Client
    key: Ed25519PrivateKey
    seen: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for t, m, _ in self.seen if t.endswith(f"/{kind}")]

    def replies(self, cid: str) -> list[dict[str, Any]]:
        return [r for r in self.of("reply") if r["id"] == cid]

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.of("evt") if type_ is None or e["type"] == type_]

    async def send(self, cmd: dict[str, Any], *, retain: bool = False) -> None:
        await self.client.publish(f"lockers/{HUB}/cmd", json.dumps(cmd), qos=1, retain=retain)

    def sign(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return c.sign(cmd, self.key)

    def grant(self, cmd: dict[str, Any], *, life: int = 3600) -> dict[str, Any]:
        """A grant (reservation, codes, recall, bulk) as the cloud sends it: signed,
        valid for ``life`` seconds."""
        return c.sign({**cmd, "expires_at": cmd["issued_at"] + life}, self.key)


def cloud_key(hub: Hub) -> Ed25519PrivateKey:
    """The cloud's signing key (the demo hub keeps the pair in its state directory)."""
    return load_signing_key(hub.cfg.state_path("keys/cloud-commands.key"))


def reserve_cmd(
    hub: Hub, cid: str, pid: str, deposit: str, pickup: str, *, signed: bool = True
) -> dict[str, Any]:
    """A parcel.reserve, signed unless ``signed`` is false (an attacker's)."""
    now = int(time.time())
    cmd = {
        "id": cid,
        "type": "parcel.reserve",
        "hub": HUB,
        "issued_at": now,
        "parcel": pid,
        "size": "M",
        "deposit_code_hash": hub.service.hasher.hash(deposit),
        "pickup_code_hash": hub.service.hasher.hash(pickup),
        "deposit_from": now - 60,
        "deposit_until": now + 86_400,
    }
    if not signed:
        return cmd
    return c.sign({**cmd, "expires_at": now + 3600}, cloud_key(hub))


@contextlib.asynccontextmanager
async def running_hub(
    tmp_path: Path, broker: Broker, *, cloud: Cloud | None = None
) -> AsyncIterator[Hub]:
    """The demo hub (state in ``tmp_path/hub``) with a cloud link to ``broker`` (or
    ``cloud``): its door monitor and its link running."""
    cfg, _ = demo_config(str(tmp_path / "hub"), str(tmp_path / "api.sock"))
    cloud = cloud or Cloud(
        url=broker.url, state_coalesce_s=0.05, reconnect_min_s=0.05, reconnect_max_s=0.2
    )
    cfg = cfg.model_copy(update={"cloud": cloud})
    async with open_hub(cfg, ports=SimulatedPorts()) as hub:
        assert hub.cloud is not None
        tasks = [asyncio.create_task(hub.monitor.run()), asyncio.create_task(hub.cloud.run())]
        try:
            yield hub
        finally:
            # as serve() stops it: close() first (a cancel alone can be lost inside
            # aiomqtt on Python 3.11 while the link reconnects), never a hang
            hub.cloud.close()
            for t in tasks:
                t.cancel()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


@contextlib.asynccontextmanager
async def cloud_side(
    broker: Broker, hub: Hub, *, port: int | None = None, tls: ssl.SSLContext | None = None
) -> AsyncIterator[CloudSide]:
    """The cloud, on ``broker`` (``port``, ``tls``: another listener)."""
    key = cloud_key(hub)
    async with aiomqtt.Client(
        broker.host,
        port or broker.port,
        identifier="cloud",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=tls,
    ) as client:
        side = CloudSide(client, key)
        await client.subscribe(f"lockers/{HUB}/#", qos=1)

        async def collect() -> None:
            async for m in client.messages:
                topic = str(m.topic)
                body = json.loads(bytes(m.payload))  # type: ignore[arg-type,unused-ignore]
                if not topic.endswith("/cmd"):  # what the hub sends: always to the contract
                    validate_message(topic.rsplit("/", 1)[1], body)
                side.seen.append((topic, body, m.retain))

        task = asyncio.create_task(collect())
        try:
            yield side
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
