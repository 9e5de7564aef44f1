"""A hub that never stays down: a message it cannot handle is answered or set aside,
never able to stop it; a part that ends on its own makes lockerd exit non-zero (so
systemd restarts it); one daemon per state directory. Against a real ``lockerd run``
process and a real Mosquitto where the hole was seen."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from structlog.testing import capture_logs

from lockerd.api.server import call
from lockerd.cloud.link import _Mqtt
from lockerd.config import Cloud
from lockerd.daemon.serve import serve
from lockerd.daemon.wiring import Hub, open_hub
from lockerd.demo.ports import SimulatedPorts
from lockerd.demo.scene import demo_config
from lockerd.hub import domain as d
from lockerd.hub.codes import new_code
from lockerd.ops.instance import AlreadyRunning, StateLock
from tests.support.broker import Broker
from tests.support.cloud import HUB, CloudSide, cloud_side, reserve_cmd, running_hub
from tests.support.daemon import ROOT, api_up, hub_config, lockerd, run_daemon
from tests.support.waiting import eventually

POISON = b'{"id": "poison-1", "type": "\\ud800", "hub": "demo-hub", "issued_at": 1}'


def cloud_toml(broker: Broker) -> str:
    return (
        f'[cloud]\nurl = "{broker.url}"\nreconnect_min_s = 0.05\nreconnect_max_s = 0.2\n'
        "state_coalesce_s = 0.05\n"
    )


@contextlib.asynccontextmanager
async def watcher(broker: Broker) -> AsyncIterator[tuple[aiomqtt.Client, list[Any]]]:
    """The cloud's side of a daemon in another process: everything the hub sends."""
    seen: list[tuple[str, dict[str, Any]]] = []
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="cloud", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(f"lockers/{HUB}/#", qos=1)

        async def collect() -> None:
            async for m in client.messages:
                topic = str(m.topic)
                if not topic.endswith("/cmd"):
                    seen.append((topic.rsplit("/", 1)[1], json.loads(bytes(m.payload))))  # type: ignore[arg-type,unused-ignore]

        task = asyncio.create_task(collect())
        try:
            yield client, seen
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def replies(seen: list[Any], cid: str) -> list[dict[str, Any]]:
    return [m for kind, m in seen if kind == "reply" and m["id"] == cid]


async def sync(client: aiomqtt.Client, seen: list[Any], cid: str) -> None:
    """A ``sync.request`` and its reply: the hub still takes and answers commands."""
    cmd = {"id": cid, "type": "sync.request", "hub": HUB, "issued_at": 1}
    await client.publish(f"lockers/{HUB}/cmd", json.dumps(cmd), qos=1)
    await eventually(lambda: bool(replies(seen, cid)), within=15, what=f"the reply to {cid}")
    assert replies(seen, cid)[0]["ok"] is True


# ======================================================================================
# The poison surrogate, against the real daemon
# ======================================================================================


async def test_a_lone_surrogate_in_a_command_is_refused_and_the_hub_goes_on(
    tmp_path: Path, broker: Broker
) -> None:
    """Seen at the hole: the refusal's event could not be serialised, the link died,
    ``lockerd run`` exited 0 and every later start died on the same outbox row."""
    config = hub_config(tmp_path, extra=cloud_toml(broker))
    sock = tmp_path / "api.sock"
    async with watcher(broker) as (client, seen):
        async with run_daemon(tmp_path, config) as proc:
            await api_up(sock, proc)
            await eventually(
                lambda: any(k == "status" for k, _ in seen), within=15, what="the hub's birth"
            )
            await client.publish(f"lockers/{HUB}/cmd", POISON, qos=1)
            await eventually(lambda: bool(replies(seen, "poison-1")), within=15, what="reply")
            reply = replies(seen, "poison-1")[0]
            assert reply["ok"] is False
            assert reply["status"] == "malformed"
            assert reply["type"] == "unknown"  # never the surrogate echoed back
            await eventually(
                lambda: any(
                    k == "evt" and m["type"] == "command_refused" and m["data"]["command"] == cid
                    for k, m in seen
                    for cid in ("poison-1",)
                ),
                within=15,
                what="the refusal's event",
            )
            await sync(client, seen, "after-poison")
            assert (await call(sock, {"op": "status"}))["ok"]
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        # and it starts again on the same state, and serves
        async with run_daemon(tmp_path, config) as proc:
            await api_up(sock, proc)
            await sync(client, seen, "after-restart")
    log = (tmp_path / "daemon.log").read_text()
    assert "cloud_link_failed" not in log
    assert "task_ended" not in log


async def test_an_unsendable_row_a_former_version_stored_is_cleaned_and_sent(
    tmp_path: Path, broker: Broker
) -> None:
    async with running_hub(tmp_path, broker) as hub:
        # as the former version stored it: a lone surrogate, escaped, in the data
        with hub.store.transaction() as db:
            db.execute(
                "INSERT INTO outbox(seq, id, type, at, data) VALUES(1, 'old-1', "
                "'command_refused', 1.0, ?)",
                ('{"command": null, "reason": "malformed", "type": "\\ud800"}',),
            )
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('next_seq', '2')")
        async with cloud_side(broker, hub) as cloud:
            await hub.service.record(
                d.Change(events=(d.Event("board_online", {"board": "A:0"}),)),
                actor="test",
                target="A:0",
            )
            await eventually(
                lambda: [e["seq"] for e in cloud.events()][:2] == [1, 2],
                within=10,
                what="the old row and the next event, in order",
            )
            assert cloud.events()[0]["data"]["type"] == "\ufffd"


# ======================================================================================
# Quarantine: a fault while handling one message
# ======================================================================================


async def test_a_command_the_hub_fails_on_is_set_aside_with_an_alarm(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        real = hub.cloud._apply

        async def faulty(cmd: Any, mqtt: Any, message: Any) -> None:
            if cmd.id == "boom-1":
                raise RuntimeError("a bug while applying it")
            await real(cmd, mqtt, message)

        monkeypatch.setattr(hub.cloud, "_apply", faulty)
        with capture_logs() as logs:
            await cloud.send({"id": "boom-1", "type": "sync.request", "hub": HUB, "issued_at": 1})
            await eventually(lambda: bool(cloud.replies("boom-1")), within=10, what="a reply")
        assert cloud.replies("boom-1")[0]["status"] == "quarantined"
        assert any(x["event"] == "command_quarantined" for x in logs)
        rows = hub.store.quarantined()
        assert [(r["source"], r["ref"]) for r in rows] == [("cloud", "boom-1")]
        assert "RuntimeError" in rows[0]["error"]
        # what a technician sees of it (lockerctl quarantine)
        seen = await call(tmp_path / "api.sock", {"op": "quarantine"})
        assert [r["ref"] for r in seen["result"]] == ["boom-1"]
        alarms = await hub.service.alarms()
        assert [a["type"] for a in alarms] == ["message_quarantined"]
        await eventually(
            lambda: bool(cloud.events("message_quarantined")), within=10, what="the alarm event"
        )
        # the link goes on: the next command is handled, a redelivery is not retried
        await cloud.send({"id": "next-1", "type": "sync.request", "hub": HUB, "issued_at": 1})
        await eventually(lambda: bool(cloud.replies("next-1")), within=10, what="next reply")
        await cloud.send({"id": "boom-1", "type": "sync.request", "hub": HUB, "issued_at": 1})
        await eventually(lambda: len(cloud.replies("boom-1")) == 2, within=10, what="dup")
        assert cloud.replies("boom-1")[1]["duplicate"] is True
        assert len(hub.store.quarantined()) == 1


async def test_a_command_over_the_packet_limit_never_reaches_the_hub(
    tmp_path: Path, broker: Broker
) -> None:
    """MQTT 5 Maximum Packet Size in CONNECT: the broker drops what is larger."""
    cfg = Cloud(url=broker.url, reconnect_min_s=0.05, reconnect_max_s=0.2, max_packet_kb=64)
    async with running_hub(tmp_path, broker, cloud=cfg) as hub, cloud_side(broker, hub) as cloud:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        huge = {"id": "huge-1", "type": "sync.request", "hub": HUB, "issued_at": 1}
        body = json.dumps({**huge, "pad": "x" * (5 * 2**20)}).encode()  # 5 MiB
        await cloud.client.publish(f"lockers/{HUB}/cmd", body, qos=1)
        await cloud.send({"id": "small-1", "type": "sync.request", "hub": HUB, "issued_at": 1})
        await eventually(lambda: bool(cloud.replies("small-1")), within=10, what="small reply")
        assert not cloud.replies("huge-1")


async def test_a_command_over_the_limit_that_arrives_anyway_is_refused_unparsed(
    tmp_path: Path, broker: Broker
) -> None:
    """A broker that ignores Maximum Packet Size (MQTT 3.1.1 has none)."""
    cfg = Cloud(url=broker.url, reconnect_min_s=0.05, reconnect_max_s=0.2, max_packet_kb=64)
    async with running_hub(tmp_path, broker, cloud=cfg) as hub, cloud_side(broker, hub) as cloud:
        link = hub.cloud
        assert link is not None
        await asyncio.wait_for(link.connected.wait(), 10)
        body = json.dumps({"id": "huge-2", "pad": "x" * 100_000}).encode()
        message = aiomqtt.Message(f"lockers/{HUB}/cmd", body, 1, False, 1, None)
        client = aiomqtt.Client(broker.host, broker.port)
        mqtt = _Mqtt(client)
        await link.handle(client, mqtt, message)
        rows = hub.store.replies()
        assert [r["status"] for _, r in rows if r["status"] == "too_large"] == ["too_large"]
        await eventually(
            lambda: any(
                e["data"]["reason"] == "too_large" for e in cloud.events("command_refused")
            ),
            within=10,
            what="the refusal's event",
        )


async def test_what_a_command_carries_is_never_stored_or_echoed_unbounded(
    tmp_path: Path, broker: Broker
) -> None:
    """Seen at the hole: a 100 kB ``hub`` was echoed into replies the inbox kept
    forever (500 commands added 50 MB)."""
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        before = hub.store.path.stat().st_size
        big = "h" * 100_000
        for i in range(50):
            await cloud.send(
                {"id": f"big-{i}", "type": "sync.request", "hub": big, "issued_at": 1, big: big}
            )
        await eventually(lambda: bool(cloud.replies("big-49")), within=20, what="the replies")
        for i in range(50):
            (reply,) = cloud.replies(f"big-{i}")
            assert reply["status"] == "malformed"
            assert len(json.dumps(reply)) < 2_000
        assert hub.store.inbox("big-0") is None  # a refusal never takes the id
        for row in hub.store.audit(100):
            assert len(json.dumps(row)) < 2_000
        # (WAL pages come and go: a bound, not an exact figure)
        assert hub.store.path.stat().st_size - before < 1_000_000


async def test_a_refusal_before_authentication_does_not_use_up_the_id(
    tmp_path: Path, broker: Broker
) -> None:
    """A grant refused (unsigned here; as well: not yet valid on a hub whose clock was
    late, or sent before the cloud's key was installed) is taken when it comes right."""
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        cmd = reserve_cmd(hub, "grant-1", "P-1", new_code(8), new_code(8), signed=False)
        await cloud.send(cmd)
        await eventually(lambda: bool(cloud.replies("grant-1")), within=10, what="refusal")
        assert cloud.replies("grant-1")[0]["status"] == "unsigned"
        await cloud.send(cloud.sign({**cmd, "expires_at": cmd["issued_at"] + 3600}))
        await eventually(lambda: len(cloud.replies("grant-1")) == 2, within=10, what="reply")
        second = cloud.replies("grant-1")[1]
        assert (second["ok"], second["duplicate"]) == (True, False)
        assert hub.store.parcel("P-1") is not None


async def test_service_flips_the_link_is_sending_are_never_rewritten(
    tmp_path: Path, broker: Broker
) -> None:
    """Seen in review: the link read rows without marking them, a flip rewrote a row on
    its way, its PUBACK deleted it, and the cloud's last word was the wrong state."""
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        assert hub.cloud is not None
        await asyncio.wait_for(hub.cloud.connected.wait(), 10)
        labels = ["A05", "A06", "A07", "A08"]
        for label in labels:  # (each round races the link; one alone may miss the race)
            for i in range(301):
                await hub.service.set_service(label, i % 2 == 1, actor="tech:ana")
        await eventually(lambda: not hub.store.outbox(), within=15, what="the outbox drained")
        for label in labels:
            comp = hub.store.compartment(label)
            assert comp is not None
            said = [
                e for e in cloud.events("compartment_service") if e["data"]["compartment"] == label
            ]
            assert said[-1]["data"]["in_service"] == comp.in_service is False, label
        seqs = [e["seq"] for e in cloud.events()]
        assert sorted(set(seqs)) == list(range(seqs[0], seqs[0] + len(set(seqs))))  # gapless


async def test_a_publish_the_broker_refuses_is_kept_and_said(
    tmp_path: Path, make_broker: Any
) -> None:
    """A hub logged in as another identity: the ACL refuses every publish (PUBACK "Not
    authorized"). Its events stay in the outbox; the link says why and backs off."""
    broker = make_broker(tls=True, acl=True)
    wrong = broker.make_client_cert("hub-other")
    cloud = Cloud(
        url=broker.tls_url,
        ca_file=str(broker.ca_cert),
        cert_file=str(wrong.certfile),
        key_file=str(wrong.keyfile),
        reconnect_min_s=0.05,
        reconnect_max_s=0.5,
    )
    with capture_logs() as logs:
        async with running_hub(tmp_path, broker, cloud=cloud) as hub:
            link = hub.cloud
            assert link is not None
            await hub.service.record(
                d.Change(events=(d.Event("forced_open", {"compartment": "A05"}),)),
                actor="monitor",
                target="A05",
            )
            # the line is logged once the session has unwound, a moment after the reason
            # is known (and not at all if the hub is closing by then): wait for the line
            await eventually(
                lambda: any(x["event"] == "cloud_publish_refused" for x in logs),
                within=15,
                what="the refusal logged",
            )
            assert [r.type for r in hub.store.outbox()] == ["forced_open"]  # kept
            assert (await link.health())["publish_refused"] == "Not authorized"


async def test_a_command_the_store_cannot_take_comes_again(tmp_path: Path, broker: Broker) -> None:
    """The store is locked by another writer past its busy timeout: the command is not
    acknowledged, the link reconnects, the broker redelivers it, and it is answered."""
    async with running_hub(tmp_path, broker) as hub, cloud_side(broker, hub) as cloud:
        link = hub.cloud
        assert link is not None
        await asyncio.wait_for(link.connected.wait(), 10)
        other = sqlite3.connect(hub.store.path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # holds the write lock
            with capture_logs() as logs:
                await cloud.send(
                    {"id": "late-1", "type": "sync.request", "hub": HUB, "issued_at": 1}
                )
                await eventually(
                    lambda: any(x["event"] == "command_not_stored" for x in logs),
                    within=20,
                    what="the store refusing it",
                )
        finally:
            other.execute("ROLLBACK")
            other.close()
        await eventually(lambda: bool(cloud.replies("late-1")), within=20, what="the reply")
        assert cloud.replies("late-1")[0]["ok"] is True


# ======================================================================================
# A part that ends on its own: exit non-zero
# ======================================================================================


async def test_a_task_that_ends_on_its_own_makes_serve_return_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, _ = demo_config(str(tmp_path / "hub"), str(tmp_path / "api.sock"))
    async with open_hub(cfg, ports=SimulatedPorts()) as hub:

        async def broken() -> None:
            raise RuntimeError("the monitor's own bug")

        monkeypatch.setattr(hub.monitor, "run", broken)
        with capture_logs() as logs:
            status = await asyncio.wait_for(serve(hub), 30)
    assert status == 1
    ended = [x for x in logs if x["event"] == "task_ended"]
    assert ended
    assert ended[0]["task"] == "monitor"


async def test_a_stop_that_was_asked_for_returns_zero(tmp_path: Path) -> None:
    cfg, _ = demo_config(str(tmp_path / "hub"), str(tmp_path / "api.sock"))
    async with open_hub(cfg, ports=SimulatedPorts()) as hub:
        served = asyncio.create_task(serve(hub))
        await eventually(lambda: hub.watchdog is not None, what="serving")
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(served, 30) == 0


def test_the_unit_restarts_a_clean_exit_that_was_not_asked_for() -> None:
    unit = (ROOT / "systemd" / "lockerd.service").read_text()
    assert "\nRestart=always\n" in unit


# ======================================================================================
# One daemon per state directory
# ======================================================================================


async def refused(*args: str) -> tuple[int | None, str]:
    """``lockerd ARGS`` that is expected to exit at once: its status and stderr."""
    proc = await lockerd(*args, out=asyncio.subprocess.PIPE, err=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, err.decode()


async def test_a_second_daemon_on_the_same_state_exits_non_zero_and_the_first_serves(
    tmp_path: Path,
) -> None:
    config = hub_config(tmp_path)
    sock = tmp_path / "api.sock"
    async with run_daemon(tmp_path, config) as first:
        await api_up(sock, first)
        rc, err = await refused("run", "--config", str(config))
        assert rc == 1
        assert f"lockerd is already running (pid {first.pid})" in err
        # the first one still has its socket and answers
        assert (await call(sock, {"op": "status"}))["ok"]
        # a demo on the same state directory too
        rc, err = await refused(
            "demo", "--state-dir", str(tmp_path / "state"), "--socket", str(tmp_path / "o.sock")
        )
        assert rc == 1
        assert "lockerd is already running" in err
        assert (await call(sock, {"op": "status"}))["ok"]


async def test_a_daemon_on_another_state_does_not_take_a_live_socket(tmp_path: Path) -> None:
    config = hub_config(tmp_path)
    sock = tmp_path / "api.sock"
    async with run_daemon(tmp_path, config) as first:
        await api_up(sock, first)
        other = tmp_path / "other"
        other.mkdir()
        text = config.read_text().replace(str(tmp_path / "state"), str(other / "state"))
        (other / "hub.toml").write_text(text)
        rc, err = await refused("run", "--config", str(other / "hub.toml"))
        assert rc == 1
        assert "answers on the socket" in err
        assert (await call(sock, {"op": "status"}))["ok"]


def test_the_state_lock_is_exclusive_and_dies_with_its_holder(tmp_path: Path) -> None:
    with (
        StateLock(tmp_path),
        pytest.raises(AlreadyRunning, match=rf"already running \(pid {os.getpid()}\)"),
    ):
        StateLock(tmp_path).acquire()
    with StateLock(tmp_path):  # released: taken again
        pass


async def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    import socket as socketlib  # noqa: PLC0415

    cfg, _ = demo_config(str(tmp_path / "hub"), str(tmp_path / "api.sock"))
    stale = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    stale.bind(str(tmp_path / "api.sock"))  # bound, never listening: nobody answers
    stale.close()
    async with open_hub(cfg, ports=SimulatedPorts()):
        assert (await call(tmp_path / "api.sock", {"op": "status"}))["ok"]


__all__ = ["CloudSide", "Hub"]


def test_deleting_the_pid_file_does_not_let_a_second_daemon_in(tmp_path: Path) -> None:
    with StateLock(tmp_path) as held:
        held.path.unlink()  # a clean-up script, say
        with pytest.raises(AlreadyRunning, match="already running"):
            StateLock(tmp_path).acquire()
