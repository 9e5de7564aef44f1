"""``lockerctl cloud`` plays the cloud against ``lockerd demo --mqtt`` over a real
Mosquitto: reserve, the code works at the keypad, a signed remote open, a cancel."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lockerd.cli import cloudctl
from lockerd.cli.ctl import build_parser
from lockerd.cloud import contract as c
from lockerd.cloud.link import Verifier
from lockerd.config import Cloud
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


# what each subcommand sends: the fields it gives, never the contract's defaults
SENT: dict[tuple[str, ...], dict[str, Any]] = {
    ("reserve", "M"): {
        "type": "parcel.reserve",
        "parcel": None,
        "size": "M",
        "deposit_code_hash": None,
        "pickup_code_hash": None,
        "deposit_from": None,
        "deposit_until": None,
        "pickup_window_s": 72 * 3600,
        "expires_at": None,
        "sig": None,
    },
    ("reserve", "S", "--return", "--parcel", "R-1", "--hours", "2"): {
        "type": "return.reserve",
        "parcel": "R-1",
        "size": "S",
        "deposit_code_hash": None,
        "pickup_code_hash": None,
        "deposit_from": None,
        "deposit_until": None,
        "pickup_window_s": 7200,
        "expires_at": None,
        "sig": None,
    },
    ("cancel", "P-1"): {"type": "parcel.cancel", "parcel": "P-1"},
    ("service", "A05", "out"): {
        "type": "compartment.set_service",
        "compartment": "A05",
        "in_service": False,
    },
    ("sync",): {"type": "sync.request"},
    ("open", "A05", "--reason", "support call"): {
        "type": "compartment.open",
        "compartment": "A05",
        "reason": "support call",
        "expires_at": None,
        "sig": None,
    },
}


def _state_dir(tmp_path: Path) -> Ed25519PrivateKey:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "code-hmac.key").write_bytes(b"k" * 32)
    (keys / "code-hmac.key").chmod(0o600)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (keys / "cloud-commands.key").write_bytes(pem)
    return key


def _args(state: Path, *argv: str) -> argparse.Namespace:
    return build_parser().parse_args(
        ["cloud", "--mqtt", "mqtt://127.0.0.1:1", "--hub", HUB_ID, "--state-dir", str(state), *argv]
    )


@pytest.mark.parametrize("argv", list(SENT), ids=" ".join)
def test_each_subcommand_sends_its_contract_command(tmp_path: Path, argv: tuple[str, ...]) -> None:
    key = _state_dir(tmp_path)
    args = _args(tmp_path, *argv)
    now = 1_700_000_000
    cmd, say = cloudctl._command(args, now)
    expected = SENT[argv]
    assert set(cmd) == {"id", "hub", "issued_at", *expected}
    assert {k: cmd[k] for k, v in expected.items() if v is not None} == {
        k: v for k, v in expected.items() if v is not None
    }
    assert (cmd["hub"], cmd["issued_at"]) == (HUB_ID, now)
    assert json.loads(json.dumps(cmd)) == cmd  # plain JSON, as published
    model = c.COMMAND.validate_python(cmd)  # what the hub reads
    assert (model.type in c.SIGNED) == ("sig" in cmd)
    if "sig" in cmd:
        cloud = Cloud(url="mqtt://127.0.0.1:1")
        verifier = Verifier(
            HUB_ID,
            key.public_key(),
            cloud.command_skew_s,
            cloud.command_max_life_s,
            cloud.grant_max_life_s,
        )
        assert verifier.refusal(cmd, model, now) is None
    if argv[0] == "reserve":
        match = PARCEL.search("\n".join(say))
        assert match is not None
        assert match.group(1) == cmd["parcel"]


def test_a_command_the_hub_would_refuse_is_not_sent(tmp_path: Path) -> None:
    _state_dir(tmp_path)
    args = _args(tmp_path, "open", "a5", "--reason", "x")
    with pytest.raises(SystemExit, match="compartment"):
        cloudctl._command(args, 1_700_000_000)
