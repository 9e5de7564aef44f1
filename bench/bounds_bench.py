"""Bounded input: the hub under commands at the size limit (issue 10's figures).

A local Mosquitto (tests/support/broker.py) and the demo hub with its cloud link; the cloud
publishes, at once, 10 signed ``codes.bulk`` of 2,000 reservations (the biggest valid
command, about 650 kB), 10 malformed commands just under the 1 MiB packet limit (an
array of 200,000 numbers: the worst case for the JSON parser's memory) and 3 of
5 MiB (over the limit: the broker never delivers them, MQTT 5 Maximum Packet Size).

1. Stall, in-process: the event loop's worst lateness, the longest poll cycle and the
   slowest door change handled while a person opens and shuts a door every 100 ms,
   from the first publish to the last reply. Target: < 100 ms.
2. Memory, a real ``lockerd run`` process: its peak RSS (``VmHWM``) after the same
   load, next to its peak before it. Target: < 120 MB.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.common import DoorStall, Figure
from lockerd.cloud import contract as c
from lockerd.config import Cloud
from lockerd.daemon.wiring import open_hub
from lockerd.demo.ports import SimulatedPorts
from lockerd.demo.scene import demo_config
from lockerd.hub.codes import CodeHasher, load_key
from tests.support.broker import Broker
from tests.support.daemon import api_up, hub_config, spawn

HUB = "demo-hub"


def load(state: Path) -> tuple[CodeHasher, Ed25519PrivateKey]:
    key = serialization.load_pem_private_key(
        (state / "keys" / "cloud-commands.key").read_bytes(), None
    )
    assert isinstance(key, Ed25519PrivateKey)
    return CodeHasher(load_key(state / "keys" / "code-hmac.key")), key


def commands(hasher: CodeHasher, key: Ed25519PrivateKey, tag: str) -> tuple[list[bytes], set[str]]:
    """The load: bodies to publish, and the ids whose replies end it."""
    now = int(time.time())
    bodies: list[bytes] = []
    wanted: set[str] = set()
    for k in range(10):
        cid = f"{tag}-bulk-{k}"
        cmd = {
            "id": cid,
            "type": "codes.bulk",
            "hub": HUB,
            "issued_at": now,
            "expires_at": now + 3600,
            "reservations": [
                {
                    "parcel": f"{tag}{k}-{i}",
                    "size": "S",
                    "deposit_code_hash": hasher.hash(f"1{k:02d}{i:06d}"),
                    "pickup_code_hash": hasher.hash(f"2{k:02d}{i:06d}"),
                    "deposit_from": now - 60,
                    "deposit_until": now + 86_400,
                }
                for i in range(c.BULK_MAX)
            ],
        }
        bodies.append(json.dumps(c.sign(cmd, key)).encode())
        wanted.add(cid)
    for k in range(10):
        cid = f"{tag}-junk-{k}"
        pad = ",".join(["1234"] * 200_000)
        body = f'{{"id": "{cid}", "type": "sync.request", "hub": "{HUB}", "pad": [{pad}]}}'
        bodies.append(body.encode()[: 1024 * 1024 - 512])  # (cut: not even JSON any more)
        wanted.add(cid)
    for k in range(3):
        over = {"id": f"{tag}-over-{k}", "type": "sync.request", "hub": HUB, "issued_at": 1}
        bodies.append(json.dumps({**over, "pad": "x" * (5 * 2**20)}).encode())
    return bodies, wanted


async def publish(broker: Broker, bodies: list[bytes], wanted: set[str]) -> float:
    """Publish every body at once; seconds until every wanted id has its reply."""
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="cloud", protocol=aiomqtt.ProtocolVersion.V5
    ) as cloud:
        await cloud.subscribe(f"lockers/{HUB}/reply", qos=1)
        t0 = time.perf_counter()
        for body in bodies:
            await cloud.publish(f"lockers/{HUB}/cmd", body, qos=1)
        seen: set[str] = set()
        async with asyncio.timeout(120):
            async for m in cloud.messages:
                reply: dict[str, Any] = json.loads(bytes(m.payload))  # type: ignore[arg-type,unused-ignore]
                seen.add(reply["id"])
                if wanted <= seen:
                    break
        return time.perf_counter() - t0


async def stall(broker: Broker, tmp: Path) -> list[Figure]:
    cfg, _ = demo_config(str(tmp / "hub"), str(tmp / "api.sock"))
    cfg = cfg.model_copy(update={"cloud": Cloud(url=broker.plain_url, state_coalesce_s=0.5)})
    async with open_hub(cfg, ports=SimulatedPorts()) as hub:
        assert hub.cloud is not None
        tasks = [asyncio.create_task(hub.monitor.run()), asyncio.create_task(hub.cloud.run())]
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        bodies, wanted = commands(*load(Path(cfg.paths.state_dir)), "s")
        stall = DoorStall(hub)
        await stall.start()
        took = await publish(broker, bodies, wanted)
        await stall.stop()
        hub.cloud.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return [
        Figure("max-size commands (10 bulk + 10 x 1 MiB + 3 x 5 MiB): to last reply", took, "s"),
        *stall.figures("max-size commands"),
    ]


def hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def memory(broker: Broker, tmp: Path) -> list[Figure]:
    root = tmp / "daemon"
    root.mkdir()
    extra = f'[cloud]\nurl = "{broker.plain_url}"\n'
    config = hub_config(root, extra=extra)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET",)}
    with (root / "daemon.log").open("ab") as log:
        proc = await spawn(config, log, log, env=env)
    try:
        await api_up(root / "api.sock", proc, within=60)
        # the birth is out: the link is connected and subscribed
        async with aiomqtt.Client(broker.host, broker.port, identifier="w") as w:
            await w.subscribe(f"lockers/{HUB}/status", qos=1)
            async with asyncio.timeout(30):
                async for _ in w.messages:
                    break
        before = hwm_mb(proc.pid)
        bodies, wanted = commands(*load(root / "state"), "m")
        await publish(broker, bodies, wanted)
        after = hwm_mb(proc.pid)
    finally:
        proc.terminate()
        await proc.wait()
    return [
        Figure("lockerd run: peak RSS before the max-size commands", before, "MB"),
        Figure(
            "lockerd run: peak RSS after the max-size commands",
            after,
            "MB",
            "< 120 MB",
            after < 120,
        ),
    ]


async def run() -> list[Figure]:
    tmp = Path(tempfile.mkdtemp(prefix="lockerd-boundsbench-"))
    broker = Broker.create(tmp / "broker")
    broker.start()
    try:
        return await stall(broker, tmp) + await memory(broker, tmp)
    finally:
        broker.close()


def main(quick: bool = False) -> list[Figure]:
    del quick  # one size: the limit
    return asyncio.run(run())


if __name__ == "__main__":
    for f in main():
        print(f"{f.name}: {f.value:.3f} {f.unit} {f.target}")
