"""Hypothesis-made commands thrown at a real ``lockerd run`` over a real Mosquitto:
lone surrogates, control characters, huge and odd numbers, deep nesting, wrong types,
unknown fields, bytes that are not JSON. Whatever comes, the hub answers every
command whose id it can read, keeps taking commands, and its API keeps answering."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockerd.api.server import call
from tests.support.broker import Broker
from tests.support.daemon import api_up, hub_config

HUB = "demo-hub"
TYPES = [
    "parcel.reserve",
    "return.reserve",
    "parcel.cancel",
    "parcel.update_codes",
    "parcel.recall",
    "compartment.open",
    "compartment.set_service",
    "sync.request",
    "codes.bulk",
]
FIELDS = [
    "parcel",
    "size",
    "deposit_code_hash",
    "pickup_code_hash",
    "recall_code_hash",
    "deposit_from",
    "deposit_until",
    "pickup_window_s",
    "accessible",
    "kind",
    "compartment",
    "in_service",
    "reason",
    "reservations",
    "expires_at",
    "sig",
]

any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)
numbers = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, -1, 2**63, 2**64, 1e308, -0.0])
)
leaves = st.none() | st.booleans() | numbers | any_text
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(any_text, inner, max_size=5),
    max_leaves=20,
)
command = st.fixed_dictionaries(
    {
        "type": st.sampled_from(TYPES) | any_text | values,
        "hub": st.just(HUB) | any_text | values,
        "issued_at": st.just(int(time.time())) | numbers | values,
    },
    optional={
        **dict.fromkeys(FIELDS, values),
        "junk": values,
        "reservations": st.lists(st.dictionaries(st.sampled_from(FIELDS), values), max_size=3),
    },
)
junk_ids = st.none() | numbers | any_text | st.just("x" * 65) | st.just("a b")


def bodies(cmd: dict[str, Any], cid: Any) -> bytes:
    return json.dumps({"id": cid, **cmd}, ensure_ascii=True).encode()


@pytest.fixture
def daemon(tmp_path: Path, broker: Broker) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    extra = f'[cloud]\nurl = "{broker.url}"\nreconnect_min_s = 0.05\nreconnect_max_s = 0.2\n'
    config = hub_config(tmp_path, extra=extra)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LOCKERD_FAILPOINT")}
    with (tmp_path / "daemon.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from lockerd.cli.main import main; raise SystemExit(main())",
                *("run", "--config", str(config)),
            ],
            stdout=log,
            stderr=log,
            env=env,
        )
    try:
        asyncio.run(api_up(tmp_path / "api.sock", within=60))
        yield proc, tmp_path
    finally:
        proc.kill()
        proc.wait()


_IDS = itertools.count()


async def throw(broker: Broker, sock: Path, sends: list[tuple[bytes, str | None]]) -> None:
    replies: dict[str, list[dict[str, Any]]] = {}
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="fuzz-cloud", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(f"lockers/{HUB}/reply", qos=1)

        async def collect() -> None:
            async for m in client.messages:
                body = json.loads(bytes(m.payload))  # type: ignore[arg-type,unused-ignore]
                replies.setdefault(body["id"], []).append(body)

        task = asyncio.create_task(collect())
        try:
            for body, _ in sends:
                await client.publish(f"lockers/{HUB}/cmd", body, qos=1)
            probe = f"probe-{next(_IDS)}"
            sync = {"id": probe, "type": "sync.request", "hub": HUB, "issued_at": 1}
            await client.publish(f"lockers/{HUB}/cmd", json.dumps(sync), qos=1)
            wanted = {cid for _, cid in sends if cid is not None} | {probe}
            deadline = time.monotonic() + 30
            while not wanted <= replies.keys():
                assert time.monotonic() < deadline, f"no reply to {sorted(wanted - replies.keys())}"
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert replies[probe][0]["ok"] is True
    for _, cid in sends:  # every readable id answered once, and not with a fault
        if cid is not None:
            assert replies[cid][0]["status"] != "quarantined", replies[cid]
    assert (await call(sock, {"op": "status"}))["ok"]


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    st.lists(
        st.tuples(command, st.booleans(), junk_ids) | st.binary(max_size=200),
        min_size=10,
        max_size=40,
    )
)
def test_whatever_the_cloud_sends_the_hub_answers_and_goes_on(
    daemon: tuple[subprocess.Popen[bytes], Path], broker: Broker, batch: list[Any]
) -> None:
    proc, root = daemon
    sends: list[tuple[bytes, str | None]] = []
    for item in batch:
        if isinstance(item, bytes):
            sends.append((item, None))
            continue
        cmd, trackable, junk = item
        cid = f"fz-{next(_IDS)}" if trackable else junk
        with contextlib.suppress(ValueError):  # (a JSON value Python will not write)
            body = bodies(cmd, cid)
            sends.append((body, cid if trackable else None))
    # and the shapes hypothesis does not reach by itself
    deep = b'{"id": "fz-deep-%d", "type": "sync.request", "x": ' % next(_IDS)
    sends.append((deep + b"[" * 100_000 + b"]" * 100_000 + b"}", None))
    sends.append((b'{"id": "fz-big-%d", "issued_at": 1%s}' % (next(_IDS), b"0" * 5000), None))
    asyncio.run(throw(broker, root / "api.sock", sends))
    assert proc.poll() is None, "lockerd stopped"
    log = (root / "daemon.log").read_text()
    assert "cloud_link_failed" not in log
    assert "command_quarantined" not in log
