"""Cloud link benchmark, against a local Mosquitto started here (tests/support/broker.py).

1. Outbox drain: N events in the real store (SQLite on disk, ``synchronous=FULL``)
   sent by the real :class:`CloudLink` (QoS 1, each row deleted after its PUBACK),
   side by side in the same run with a bare aiomqtt loop publishing the same
   messages at QoS 1 with the same window and no store. Target: at least 1,000
   events/s and at least half the bare rate.
2. ``codes.bulk`` of 100,000 reservations (50 commands of 2,000) sent over MQTT
   to a running demo hub, its door monitor polling the simulated boards all along:
   the time from publishing to the last reply, and the longest stall meanwhile (the
   event loop's worst lateness, the longest poll cycle, and the slowest door change
   handled by the service while a person opens and shuts a door every 100 ms).
   Target: under 10 s, stall under 100 ms.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from bench.common import DoorStall, Figure
from lockerd.cli.cloudctl import load_signing_key
from lockerd.cloud import contract as c
from lockerd.cloud.contract import BULK_MAX
from lockerd.cloud.link import WINDOW, CloudLink
from lockerd.config import Cloud
from lockerd.daemon.wiring import open_hub
from lockerd.demo.ports import SimulatedPorts
from lockerd.demo.scene import demo_config
from lockerd.hub import domain as d
from lockerd.hub.codes import CodeHasher
from lockerd.hub.service import HubService
from lockerd.hub.store import Store
from tests.support.broker import Broker


def _events(n: int) -> list[d.Event]:
    return [
        d.Event("deposited", {"compartment": "A01", "parcel": f"P{i}", "collect_until": 1e9})
        for i in range(n)
    ]


async def drain(broker: Broker, tmp: Path, n: int) -> list[Figure]:
    store = Store(tmp / "drain.db")
    for start in range(0, n, 500):
        store.apply(
            d.Change(events=tuple(_events(min(500, n - start)))),
            now=time.time(),
            actor="bench",
            action="bench",
            target="-",
        )
    rows = store.outbox(limit=n)
    service = HubService(store, CodeHasher(bytes(32)), [])
    cloud = Cloud(url=broker.plain_url, state_coalesce_s=60)
    link = CloudLink(cloud, "bench-hub", service, state_dir=tmp)
    t0 = time.perf_counter()
    task = asyncio.create_task(link.run())
    await asyncio.wait_for(link.connected.wait(), 10)
    while store.outbox(limit=1):  # noqa: ASYNC110 - a bench polling the store
        await asyncio.sleep(0.005)
    linked_s = time.perf_counter() - t0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    service.close()
    store.close()
    payloads = [
        json.dumps(
            {
                "hub": "bench-hub",
                "seq": r.seq,
                "id": r.id,
                "type": r.type,
                "at": r.at,
                "data": r.data,
            }
        )
        for r in rows
    ]
    t0 = time.perf_counter()
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="bare", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        client.pending_calls_threshold = WINDOW + 50
        for start in range(0, n, WINDOW):
            await asyncio.gather(
                *(
                    client.publish("lockers/bench-hub/evt", p, qos=1)
                    for p in payloads[start : start + WINDOW]
                )
            )
    bare_s = time.perf_counter() - t0
    linked, bare = n / linked_s, n / bare_s
    return [
        Figure(
            f"outbox drain, {n:,} events, store + PUBACK + delete",
            linked,
            "events/s",
            ">= 1000",
            linked >= 1000,
        ),
        Figure(f"bare aiomqtt QoS 1, same {n:,} messages, no store", bare, "events/s"),
        Figure("outbox drain / bare", linked / bare, "ratio", ">= 0.5", linked / bare >= 0.5),
    ]


async def bulk(broker: Broker, tmp: Path, n: int) -> list[Figure]:
    cfg, _ = demo_config(str(tmp / "hub"), str(tmp / "api.sock"))
    cfg = cfg.model_copy(update={"cloud": Cloud(url=broker.plain_url, state_coalesce_s=0.5)})
    async with open_hub(cfg, ports=SimulatedPorts()) as hub:
        assert hub.cloud is not None
        tasks = [asyncio.create_task(hub.monitor.run()), asyncio.create_task(hub.cloud.run())]
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        hasher = hub.service.hasher
        now = int(time.time())
        reservations = [
            {
                "parcel": f"B{i}",
                "size": "S",
                "deposit_code_hash": hasher.hash(f"1{i:09d}"),
                "pickup_code_hash": hasher.hash(f"2{i:09d}"),
                "deposit_from": now - 60,
                "deposit_until": now + 86_400,
            }
            for i in range(n)
        ]
        key = load_signing_key(cfg.state_path("keys/cloud-commands.key"))
        bodies = [  # signed, as every grant is
            json.dumps(
                c.sign(
                    {
                        "id": f"bulk-{k}",
                        "type": "codes.bulk",
                        "hub": cfg.hub_id,
                        "issued_at": now,
                        "expires_at": now + 3600,
                        "reservations": reservations[k : k + BULK_MAX],
                    },
                    key,
                )
            )
            for k in range(0, n, BULK_MAX)
        ]
        async with aiomqtt.Client(
            broker.host, broker.port, identifier="cloud", protocol=aiomqtt.ProtocolVersion.V5
        ) as cloud:
            await cloud.subscribe(f"lockers/{cfg.hub_id}/reply", qos=1)
            stall = DoorStall(hub)
            await stall.start()
            t0 = time.perf_counter()
            for body in bodies:  # the cloud's first sync: every chunk at once
                await cloud.publish(f"lockers/{cfg.hub_id}/cmd", body, qos=1)
            reserved = 0
            answered = 0
            async for m in cloud.messages:
                reply: dict[str, Any] = json.loads(bytes(m.payload))  # type: ignore[arg-type,unused-ignore]
                if str(reply.get("id", "")).startswith("bulk-"):
                    reserved += reply["result"]["reserved"]
                    answered += 1
                    if answered == len(bodies):
                        break
            took = time.perf_counter() - t0
            await stall.stop()
        assert reserved == n, reserved
        hub.cloud.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return [
        Figure(f"codes.bulk {n:,}: publish to reply", took, "s", "< 10 s", took < 10),
        *stall.figures(f"codes.bulk {n:,}"),
    ]


async def run(quick: bool) -> list[Figure]:
    tmp = Path(tempfile.mkdtemp(prefix="lockerd-cloudbench-"))
    broker = Broker.create(tmp / "broker")
    broker.start()
    try:
        figures = await drain(broker, tmp, 2_000 if quick else 20_000)
        figures += await bulk(broker, tmp, 10_000 if quick else 100_000)
    finally:
        broker.close()
    return figures


def main(quick: bool = False) -> list[Figure]:
    return asyncio.run(run(quick))


if __name__ == "__main__":
    for f in main(quick="--quick" in sys.argv):
        print(f"{f.name}: {f.value:.3f} {f.unit} {f.target}")
