"""``lockerctl cloud`` plays the cloud against ``lockerd demo --mqtt`` over a real
Mosquitto: reserve, the code works at the keypad, a signed remote open, a cancel."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lockerd.cli import cloudctl
from lockerd.cli.ctl import build_parser
from lockerd.cloud import contract as c
from lockerd.cloud.link import Verifier
from lockerd.config import Cloud
from lockerd.hub.codes import CodeHasher
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

        # the rest of the contract: new codes, a recall code, many reservations at once
        more = ["reserve", "S", "--parcel", "P-more", "--accessible", "--hours", "2"]
        rc, out = await lockerctl(*as_cloud, *more)
        assert rc == 0, out
        rc, out = await lockerctl(*as_cloud, "update-codes", "P-more", "--deposit", "--pickup")
        assert rc == 0, out
        codes = re.search(r"^parcel P-more deposit (\d{8}) pickup (\d{8})$", out, re.M)
        assert codes is not None, out
        rc, out = await lockerctl(*as_cloud, "recall", "P-more")  # kept for later
        assert rc == 0, out
        assert re.search(r"^parcel P-more recall \d{8}$", out, re.M), out
        rc, out = await lockerctl(*as_cloud, "recall", "P-cancel")  # cancelled: refused
        assert rc == 1, out
        assert not re.search(r"\d{8}", out), out  # and no code printed
        assert "refused by hub" in out
        rc, out = await lockerctl(*as_cloud, "bulk", "--count", "3", "--size", "S")
        assert rc == 0, out
        bulk = [m[0] for m in PARCEL.findall(out)]
        assert len(bulk) == 3, out
        rc, out = await lockerctl(*local, "parcels")
        assert rc == 0, out
        assert {*bulk, "P-more"} <= {p["id"] for p in json.loads(out)}
        rc, out = await lockerctl(*local, "enter-code", codes.group(1))  # the new deposit code
        assert rc == 0, out
        assert json.loads(out)["status"] == "opened"
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
    # no --hours: no pickup_window_s, the hub's own ([timers] pickup_window_h) applies
    ("reserve", "M"): {
        "type": "parcel.reserve",
        "parcel": None,
        "size": "M",
        "deposit_code_hash": None,
        "pickup_code_hash": None,
        "deposit_from": None,
        "deposit_until": None,
        "expires_at": None,
        "sig": None,
    },
    ("reserve", "L", "--accessible", "--hours", "24"): {
        "type": "parcel.reserve",
        "parcel": None,
        "size": "L",
        "deposit_code_hash": None,
        "pickup_code_hash": None,
        "deposit_from": None,
        "deposit_until": None,
        "pickup_window_s": 24 * 3600,
        "accessible": True,
        "expires_at": None,
        "sig": None,
    },
    ("update-codes", "P-1", "--pickup"): {
        "type": "parcel.update_codes",
        "parcel": "P-1",
        "pickup_code_hash": None,
        "expires_at": None,
        "sig": None,
    },
    ("update-codes", "P-1", "--deposit", "--pickup"): {
        "type": "parcel.update_codes",
        "parcel": "P-1",
        "deposit_code_hash": None,
        "pickup_code_hash": None,
        "expires_at": None,
        "sig": None,
    },
    ("recall", "P-1"): {
        "type": "parcel.recall",
        "parcel": "P-1",
        "recall_code_hash": None,
        "expires_at": None,
        "sig": None,
    },
    ("bulk", "--count", "3", "--size", "M", "--accessible"): {
        "type": "codes.bulk",
        "reservations": None,
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
    # every code it would print is the one whose hash it sends
    hasher = CodeHasher(b"k" * 32)
    sent = [cmd, *cmd.get("reservations", [])]
    hashes = {v for r in sent for k, v in r.items() if k.endswith("_code_hash")}
    # (the codes after their words: a parcel id of 8 hex digits may be all digits)
    printed = [
        code for line in say for code in re.findall(r"(?:deposit|pickup|recall) (\d+)", line)
    ]
    assert {hasher.hash(code) for code in printed} == hashes
    if argv[0] == "bulk":
        assert len(say) == len(cmd["reservations"]) == 3
        assert {r["size"] for r in cmd["reservations"]} == {"M"}
        assert all(r["accessible"] is True for r in cmd["reservations"])
        assert all("pickup_window_s" not in r for r in cmd["reservations"])


def test_a_command_the_hub_would_refuse_is_not_sent(tmp_path: Path) -> None:
    _state_dir(tmp_path)
    args = _args(tmp_path, "open", "a5", "--reason", "x")
    with pytest.raises(SystemExit, match="compartment"):
        cloudctl._command(args, 1_700_000_000)


def test_a_bulk_bigger_than_one_command_is_split(tmp_path: Path) -> None:
    _state_dir(tmp_path)
    args = _args(tmp_path, "bulk", "--count", str(c.BULK_MAX + 5))
    sent = cloudctl._commands(args, 1_700_000_000)
    assert [len(o.body["reservations"]) for o in sent] == [c.BULK_MAX, 5]
    assert len({o.body["id"] for o in sent}) == 2
    assert sum(len(o.codes) for o in sent) == c.BULK_MAX + 5


def test_a_bulk_from_a_file_sends_its_reservations_as_they_are(tmp_path: Path) -> None:
    _state_dir(tmp_path)
    hasher = CodeHasher(b"k" * 32)
    reservations = [
        {
            "parcel": f"F-{i}",
            "size": "S",
            "deposit_code_hash": hasher.hash(f"1{i:07d}"),
            "pickup_code_hash": hasher.hash(f"2{i:07d}"),
            "deposit_from": 1_700_000_000,
            "deposit_until": 1_700_086_400,
        }
        for i in range(2)
    ]
    for n, body in enumerate([reservations, {"reservations": reservations}]):
        path = tmp_path / f"bulk-{n}.json"
        path.write_text(json.dumps(body))
        cmd, say = cloudctl._command(_args(tmp_path, "bulk", "--file", str(path)), 1_700_000_000)
        assert cmd["reservations"] == reservations
        assert say == []  # no codes of its own to print
    (tmp_path / "bad.json").write_text(json.dumps([{**reservations[0], "size": "XXL"}]))
    with pytest.raises(SystemExit, match="size"):
        cloudctl._command(_args(tmp_path, "bulk", "--file", str(tmp_path / "bad.json")), 1)


# --------------------------------------------------------------------------------------
# Whatever goes wrong: one line on stderr, a distinct exit code, never a traceback


async def lockerctl_split(*args: str) -> tuple[int, str, str]:
    """``lockerctl ARGS``: its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from lockerd.cli.ctl import main; raise SystemExit(main())",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("case", "argv", "rc", "says"),
    [
        ("no code key", ["reserve", "M"], 2, "code-hmac.key does not exist"),
        (
            "no signing key",
            ["--signing-key", "{tmp}/none.key", "open", "A05", "--reason", "x"],
            2,
            "cannot read the signing key",
        ),
        (
            "not a key",
            ["--signing-key", "{tmp}/junk.key", "open", "A05", "--reason", "x"],
            2,
            "not a PEM private key",
        ),
        ("no scheme", ["--mqtt", "127.0.0.1:1883", "sync"], 2, "write mqtt://HOST[:PORT]"),
        ("no codes asked", ["update-codes", "P-1"], 2, "--deposit, --pickup or both"),
        ("bulk not JSON", ["bulk", "--file", "{tmp}/junk.key"], 2, "is not JSON"),
        ("no broker", ["sync"], 3, "cannot reach the broker"),
    ],
)
async def test_what_goes_wrong_is_one_line_and_an_exit_code(
    tmp_path: Path, case: str, argv: list[str], rc: int, says: str
) -> None:
    (tmp_path / "junk.key").write_text("not a key\n")
    state = tmp_path / "empty-state"
    state.mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    mqtt = [] if "--mqtt" in argv else ["--mqtt", "mqtt://127.0.0.1:9"]
    code, out, err = await lockerctl_split(
        "cloud", *mqtt, "--hub", HUB_ID, "--state-dir", str(state), *argv
    )
    assert code == rc, (case, out, err)
    assert says in one_line(err), case
    assert out == ""


def _sigint_default() -> None:  # (a shell may start a background job with SIGINT ignored)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_ctrl_c_on_watch_is_one_line_and_exit_130(broker: Broker) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier="seed") as seed:
        await seed.publish(f"lockers/{HUB_ID}/status", b'{"state": "online"}', qos=1, retain=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from lockerd.cli.ctl import main; raise SystemExit(main())",
        *("cloud", "--mqtt", broker.url, "--hub", HUB_ID, "watch"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_sigint_default,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)  # subscribed: it watches
    assert line.decode().startswith(f"lockers/{HUB_ID}/status ")
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130
    assert "interrupted" in one_line(err.decode())


# --------------------------------------------------------------------------------------
# Codes are printed only once the hub took them


@contextlib.asynccontextmanager
async def fake_hub(
    broker: Broker, answer: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> AsyncIterator[None]:
    """A hub on ``broker`` that answers each command with ``answer(command)`` (none if
    ``None``), after a reply to another command and, for ours, an ``opening``."""
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="fake-hub", protocol=aiomqtt.ProtocolVersion.V5
    ) as hub:
        await hub.subscribe(f"lockers/{HUB_ID}/cmd", qos=1)

        async def serve() -> None:
            async for m in hub.messages:
                cmd = json.loads(bytes(m.payload))  # type: ignore[arg-type,unused-ignore]
                reply = answer(cmd)
                if reply is None:
                    continue
                base = {"hub": HUB_ID, "type": cmd["type"], "result": {}, "at": 1.0}
                for extra in (
                    {**base, "id": "someone-else", "ok": True, "status": "ok"},
                    {**base, "id": cmd["id"], "ok": True, "status": "opening"},
                    {**base, "id": cmd["id"], "message": "", "duplicate": False, **reply},
                ):
                    await hub.publish(f"lockers/{HUB_ID}/reply", json.dumps(extra), qos=1)

        task = asyncio.create_task(serve())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _answer(cmd: dict[str, Any]) -> dict[str, Any] | None:
    if cmd.get("parcel") == "P-silent":
        return None
    if cmd.get("parcel") == "P-no":
        return {"ok": False, "status": "refused", "message": "no free compartment of size M"}
    if cmd["type"] == "codes.bulk":  # the first one exists already
        first = cmd["reservations"][0]["parcel"]
        result = {
            "reserved": len(cmd["reservations"]) - 1,
            "exists": [first],
            "code_conflict": [],
            "code_used": [],
        }
        return {"ok": True, "status": "ok", "result": result}
    return {"ok": True, "status": "ok"}


async def test_codes_are_printed_only_once_the_hub_took_them(
    tmp_path: Path, broker: Broker
) -> None:
    _state_dir(tmp_path)
    as_cloud = ["cloud", "--mqtt", broker.url, "--hub", HUB_ID, "--state-dir", str(tmp_path)]
    async with fake_hub(broker, _answer):
        rc, out, err = await lockerctl_split(*as_cloud, "reserve", "M", "--parcel", "P-no")
        assert rc == 1, (out, err)
        assert out == ""  # no codes for a reservation the hub refused
        line = one_line(err)
        assert "refused" in line
        assert "no free compartment of size M" in line
        rc, out, err = await lockerctl_split(
            *as_cloud, "--timeout", "1", "reserve", "M", "--parcel", "P-silent"
        )
        assert rc == 3, (out, err)
        assert out == ""
        assert "no reply" in one_line(err)
        rc, out, err = await lockerctl_split(*as_cloud, "reserve", "M", "--parcel", "P-yes")
        assert rc == 0, (out, err)
        match = PARCEL.search(out)
        assert match is not None
        assert match.group(1) == "P-yes"
        reply = json.loads(out[match.end() :])
        assert (reply["status"], reply["ok"]) == ("ok", True)  # its own, never another's
        assert err == ""
        for argv in (["recall", "P-no"], ["update-codes", "P-no", "--pickup"]):
            rc, out, err = await lockerctl_split(*as_cloud, *argv)
            assert (rc, out) == (1, ""), argv
            one_line(err)
        rc, out, _ = await lockerctl_split(*as_cloud, "recall", "P-yes")
        assert rc == 0
        assert re.search(r"^parcel P-yes recall \d{8}$", out, re.M)
        rc, out, _ = await lockerctl_split(*as_cloud, "bulk", "--count", "3")
        assert rc == 0
        parcels = PARCEL.findall(out)
        assert len(parcels) == 2  # not the one the hub had already (with other codes)
        assert all(p.endswith(("-2", "-3")) for p, *_ in parcels)


# --------------------------------------------------------------------------------------
# issue 12: the options in either place; a demo without --mqtt has no cloud key

GLOBAL = [
    ("--mqtt", "mqtt://127.0.0.1:1"),
    ("--hub", "hub-0042"),
    ("--prefix", "fleet"),
    ("--state-dir", "/var/lib/demo"),
    ("--code-key", "/k/code.key"),
    ("--signing-key", "/k/sign.key"),
    ("--timeout", "3"),
]
SHARED = [w for pair in GLOBAL for w in pair]


@pytest.mark.parametrize("sub", [["reserve", "M"], ["open", "A05", "--reason", "x"], ["sync"]])
def test_the_shared_options_work_after_the_subcommand_too(tmp_path: Path, sub: list[str]) -> None:
    """`lockerctl cloud reserve M --mqtt URL --hub ID` was a usage error."""
    before = build_parser().parse_args(["cloud", *SHARED, *sub])
    after = build_parser().parse_args(["cloud", *sub, *SHARED])
    assert vars(after) == vars(before)
    assert (after.mqtt, after.hub, after.prefix, after.state_dir, after.timeout) == (
        "mqtt://127.0.0.1:1",
        "hub-0042",
        "fleet",
        "/var/lib/demo",
        3.0,
    )
    assert (after.code_key, after.signing_key) == ("/k/code.key", "/k/sign.key")
    # one given after overrides the one before; one not given after leaves it
    both = build_parser().parse_args(
        ["cloud", "--hub", "hub-1", "--state-dir", str(tmp_path), *sub, "--hub", "hub-2"]
    )
    assert (both.hub, both.state_dir, both.mqtt, both.prefix) == (
        "hub-2",
        str(tmp_path),
        None,
        "lockers",
    )
    _state_dir(tmp_path)
    if sub[0] != "sync":  # (made the same way, wherever the options came)
        where = ["--mqtt", "mqtt://127.0.0.1:1", "--hub", HUB_ID, "--state-dir", str(tmp_path)]
        args = build_parser().parse_args(["cloud", *sub, *where])
        cmd, _ = cloudctl._command(args, 1_700_000_000)
        assert cmd["hub"] == HUB_ID


def test_mqtt_and_hub_are_required_before_or_after(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["cloud", "sync", "--hub", HUB_ID])
    assert cloudctl.main(args) == 2
    err = capsys.readouterr().err
    assert err == (
        "lockerctl cloud sync: --mqtt URL is required (before or after the command; "
        "see lockerctl cloud --help)\n"
    )
    args = build_parser().parse_args(["cloud", "sync"])
    assert cloudctl.main(args) == 2
    assert "--mqtt URL and --hub ID are required" in capsys.readouterr().err


def test_a_demo_without_mqtt_is_told_to_make_the_clouds_keys(tmp_path: Path) -> None:
    """A demo started without --mqtt has its code key but not the cloud's signing key."""
    _state_dir(tmp_path)
    (tmp_path / "keys" / "cloud-commands.key").unlink()
    with pytest.raises(SystemExit) as refused:
        cloudctl._command(_args(tmp_path, "open", "A05", "--reason", "x"), 1_700_000_000)
    assert isinstance(refused.value, cloudctl.CloudCtlError)
    message = refused.value.message
    assert message.startswith("cannot read the signing key ")
    assert "lockerd demo --mqtt URL" in message
    assert refused.value.code == 2
