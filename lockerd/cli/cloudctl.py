"""``lockerctl cloud``: plays the operator's cloud for demos and tests, over MQTT.

    lockerctl cloud --mqtt mqtt://127.0.0.1:1883 --hub demo-1a2b3c --state-dir DIR reserve M
    lockerctl cloud ... cancel PARCEL
    lockerctl cloud ... open A05 --reason "support call"      (signed, short-lived)
    lockerctl cloud ... watch                                 (events, replies, status)

The cloud holds each hub's code key (to send code hashes, never codes) and its own
Ed25519 signing key: every command that opens a door or grants a code is signed
(``contract.SIGNED``; a reservation lives an hour, an open a minute). ``--state-dir``
takes both from a demo hub's state directory (``keys/code-hmac.key`` and
``keys/cloud-commands.key``); ``--code-key`` and ``--signing-key`` name them one by one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from lockerd.cloud import contract as c
from lockerd.config import Cloud
from lockerd.hub.codes import CodeHasher, load_key, new_code
from lockerd.hub.domain import Size


def build_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mqtt", required=True, help="the broker: mqtt://HOST:PORT")
    p.add_argument("--hub", required=True, help="the hub id (the demo prints `hub HUBID`)")
    p.add_argument("--prefix", default="lockers")
    p.add_argument("--state-dir", help="a demo hub's state directory: both keys from it")
    p.add_argument("--code-key", help="the hub's code key (HMAC)")
    p.add_argument("--signing-key", help="the cloud's Ed25519 private key (PEM)")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the reply")
    sub = p.add_subparsers(dest="cloud_command", required=True)
    res = sub.add_parser("reserve", help="reserve a parcel; prints its codes")
    res.add_argument("size", choices=[size.value for size in Size])
    res.add_argument("--parcel", help="parcel id (default: a new one)")
    res.add_argument("--return", dest="is_return", action="store_true", help="a return")
    res.add_argument("--hours", type=int, default=72, help="pickup window")
    res.add_argument("--life", type=int, default=3600, help="seconds the command is valid")
    cancel = sub.add_parser("cancel", help="cancel a reservation")
    cancel.add_argument("parcel")
    opn = sub.add_parser("open", help="a signed remote open")
    opn.add_argument("label")
    opn.add_argument("--reason", required=True)
    opn.add_argument("--life", type=int, default=60, help="seconds the command is valid")
    svc = sub.add_parser("service", help="take a compartment out of service or back")
    svc.add_argument("label")
    svc.add_argument("state", choices=["out", "in"])
    sub.add_parser("sync", help="ask the hub for its state")
    watch = sub.add_parser("watch", help="print what the hub sends, until Ctrl-C")
    watch.add_argument("--count", type=int, default=0, help="stop after this many messages")


def _keys(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    code = Path(args.code_key) if args.code_key else None
    sign = Path(args.signing_key) if args.signing_key else None
    if args.state_dir:
        keys = Path(args.state_dir) / "keys"
        code = code or keys / "code-hmac.key"
        sign = sign or keys / "cloud-commands.key"
    return code, sign


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The cloud's Ed25519 private key (PEM, no password), for :func:`contract.sign`."""
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SystemExit(f"{path} is not an Ed25519 private key")
    return key


def _signing_key(args: argparse.Namespace) -> Ed25519PrivateKey:
    _, path = _keys(args)
    if path is None:
        raise SystemExit(
            f"lockerctl cloud {args.cloud_command}: needs --state-dir or --signing-key"
        )
    return load_signing_key(path)


def _command(args: argparse.Namespace, now: int) -> tuple[dict[str, Any], list[str]]:
    """The command to send (as JSON: the fields given, none of the defaults; signed if
    it must be), and lines to print (the codes of a reservation)."""
    try:
        cmd, say = _model(args, now)
    except ValidationError as exc:  # what the hub would refuse as malformed
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SystemExit(f"lockerctl cloud {args.cloud_command}: {where}: {first['msg']}") from None
    body = cmd.model_dump(mode="json", exclude_unset=True)
    if cmd.type in c.SIGNED:
        body = c.sign(body, _signing_key(args))
    return body, say


def _model(args: argparse.Namespace, now: int) -> tuple[c.Command, list[str]]:
    """The contract's model of the subcommand's command (a signed one with its
    ``expires_at``, ``--life`` after ``issued_at``)."""
    cid = f"cli-{secrets.token_hex(6)}"
    base: dict[str, Any] = {"id": cid, "hub": args.hub, "issued_at": now}
    match args.cloud_command:
        case "reserve":
            code_key, _ = _keys(args)
            if code_key is None:
                raise SystemExit("lockerctl cloud reserve: needs --state-dir or --code-key")
            hasher = CodeHasher(load_key(code_key))
            pid = args.parcel or f"P-{secrets.token_hex(4)}"
            deposit, pickup = new_code(8), new_code(8)
            say = [f"parcel {pid} size {args.size} deposit {deposit} pickup {pickup}"]
            reservation: dict[str, Any] = {
                **base,
                "expires_at": now + args.life,
                "parcel": pid,
                "size": args.size,
                "deposit_code_hash": hasher.hash(deposit),
                "pickup_code_hash": hasher.hash(pickup),
                "deposit_from": now - 60,
                "deposit_until": now + 7 * 86_400,
                "pickup_window_s": args.hours * 3600,
            }
            if args.is_return:
                return c.ReturnReserve(type="return.reserve", **reservation), say
            return c.ParcelReserve(type="parcel.reserve", **reservation), say
        case "cancel":
            return c.ParcelCancel(type="parcel.cancel", **base, parcel=args.parcel), []
        case "service":
            return c.CompartmentSetService(
                type="compartment.set_service",
                **base,
                compartment=args.label,
                in_service=args.state == "in",
            ), []
        case "sync":
            return c.SyncRequest(type="sync.request", **base), []
        case "open":
            return c.CompartmentOpen(
                type="compartment.open",
                **base,
                expires_at=now + args.life,
                compartment=args.label,
                reason=args.reason,
            ), []
        case other:
            raise AssertionError(f"lockerctl cloud {other}: no such command")


async def run(args: argparse.Namespace) -> int:
    broker = Cloud(url=args.mqtt)
    base = f"{args.prefix}/{args.hub}"
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"lockerctl-cloud-{secrets.token_hex(3)}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        if args.cloud_command == "watch":
            await client.subscribe(f"{base}/#", qos=1)
            seen = 0
            async for m in client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else b""
                print(f"{m.topic} {payload.decode(errors='replace')}", flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    return 0
            return 0
        cmd, say = _command(args, int(time.time()))
        await client.subscribe(f"{base}/reply", qos=1)
        await client.publish(f"{base}/cmd", json.dumps(cmd), qos=1)
        try:
            async with asyncio.timeout(args.timeout):
                async for m in client.messages:
                    reply = json.loads(m.payload if isinstance(m.payload, bytes) else b"{}")
                    if reply.get("id") != cmd["id"] or reply.get("status") == "opening":
                        continue
                    for line in say:
                        print(line)
                    print(json.dumps(reply, indent=1))
                    return 0 if reply.get("ok") else 1
        except TimeoutError:
            print(f"no reply from hub {args.hub} within {args.timeout:.0f} s", file=sys.stderr)
            return 3
    return 3


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run(args))
    except aiomqtt.MqttError as exc:
        print(f"lockerctl cloud: cannot reach {args.mqtt}: {exc}", file=sys.stderr)
        return 3
