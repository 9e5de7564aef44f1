"""``lockerctl cloud``: plays the operator's cloud for demos and tests, over MQTT.

    lockerctl cloud --mqtt mqtt://127.0.0.1:1883 --hub demo-1a2b3c --state-dir DIR reserve M
    lockerctl cloud reserve M --mqtt URL --hub ID --state-dir DIR   (options in either place)
    lockerctl cloud ... reserve S --accessible --hours 24 (a window of its own)
    lockerctl cloud ... cancel PARCEL
    lockerctl cloud ... update-codes PARCEL --pickup         (a new pickup code)
    lockerctl cloud ... recall PARCEL                        (a recall code for the carrier)
    lockerctl cloud ... bulk --count 100 --size S            (or --file reservations.json)
    lockerctl cloud ... open A05 --reason "support call"     (signed, short-lived)
    lockerctl cloud ... service A05 out
    lockerctl cloud ... sync
    lockerctl cloud ... watch                                (events, replies, status)

The cloud holds each hub's code key (to send code hashes, never codes) and its own
Ed25519 signing key: every command that opens a door or grants a code is signed
(``contract.SIGNED``; a grant lives an hour, an open a minute). ``--state-dir``
takes both from a demo hub's state directory (``keys/code-hmac.key`` and
``keys/cloud-commands.key``: a demo makes the cloud's key only when started with
``lockerd demo --mqtt URL``); ``--code-key`` and ``--signing-key`` name them one by one.

Every command waits for the hub's reply to its id (``--timeout``). Codes are printed
only once the hub's reply says it took them. Exit codes, as lockerctl's: 0 done, 1
refused by the hub, 2 a usage error (a bad argument, a missing or unreadable key), 3
the broker unreachable or no reply in time, 130 interrupted (Ctrl-C). Every error is
one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from lockerd.cloud import contract as c
from lockerd.config import Cloud
from lockerd.errors import LockerdError
from lockerd.hub.codes import CodeHasher, load_key, new_code
from lockerd.hub.domain import Size

# exit codes (lockerctl's: lockerd.cli.ctl)
DONE, REFUSED, USAGE, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 130
SIZES = [size.value for size in Size]
GRANT_LIFE_S = 3600
OPEN_LIFE_S = 60


class CloudCtlError(SystemExit):
    """What ``lockerctl cloud`` says in one line on stderr before it exits ``code``
    (a usage error unless told otherwise), never with a traceback."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = self.exit_code = code


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0: {value}")
        return number

    parse.__name__ = kind.__name__  # (argparse names the type in its message)
    return parse


def build_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Play the operator's cloud against a hub over MQTT (demos and tests): send one "
        "command of the contract (docs/cloud-guide.md), wait for the hub's reply, and "
        "print it. Codes are printed only once the hub took them. Exit codes: 0 done, "
        "1 refused by the hub, 2 usage error, 3 broker unreachable or no reply, 130 Ctrl-C."
    )
    _options(p, top=True)
    sub = p.add_subparsers(dest="cloud_command", required=True, metavar="COMMAND")

    res = _sub(
        sub,
        "reserve",
        help="reserve a parcel (parcel.reserve, or return.reserve with --return); "
        "prints its codes once the hub took it",
    )
    res.add_argument("size", choices=SIZES, metavar="SIZE", help=f"one of {', '.join(SIZES)}")
    res.add_argument("--parcel", help="parcel id (default: a new one, P-...)")
    res.add_argument(
        "--return", dest="is_return", action="store_true", help="a return (the resident deposits)"
    )
    res.add_argument("--accessible", action="store_true", help="needs a compartment within reach")
    res.add_argument(
        "--hours",
        type=_positive(float),
        metavar="H",
        help="pickup window once deposited (default: the hub's [timers] pickup_window_h)",
    )
    _life(res, GRANT_LIFE_S)

    cancel = _sub(sub, "cancel", help="cancel a reservation not deposited yet (parcel.cancel)")
    cancel.add_argument("parcel", help="the parcel id")

    upd = _sub(
        sub,
        "update-codes",
        help="new deposit and/or pickup codes for a parcel (parcel.update_codes); "
        "prints them once the hub took them",
    )
    upd.add_argument("parcel", help="the parcel id")
    upd.add_argument(
        "--deposit", action="store_true", help="a new deposit code (before the deposit only)"
    )
    upd.add_argument("--pickup", action="store_true", help="a new pickup code")
    _life(upd, GRANT_LIFE_S)

    rec = _sub(
        sub,
        "recall",
        help="a recall code for the carrier (parcel.recall): it opens once the parcel has "
        "expired; prints it once the hub took it",
    )
    rec.add_argument("parcel", help="the parcel id (a delivery)")
    _life(rec, GRANT_LIFE_S)

    bulk = _sub(
        sub,
        "bulk",
        help="many reservations at once (codes.bulk, split into commands of "
        f"{c.BULK_MAX:,}): --count N new ones, or --file",
    )
    what = bulk.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--count", type=_positive(int), metavar="N", help="N new reservations, codes printed"
    )
    what.add_argument(
        "--file",
        metavar="FILE",
        help="a JSON file: a list of reservations as the contract has them (code hashes, "
        "not codes), or an object whose reservations field is that list",
    )
    bulk.add_argument(
        "--size",
        choices=SIZES,
        default="S",
        metavar="SIZE",
        help=f"with --count: one of {', '.join(SIZES)} (default: S)",
    )
    bulk.add_argument(
        "--accessible",
        action="store_true",
        help="with --count: each needs a compartment within reach",
    )
    bulk.add_argument(
        "--hours",
        type=_positive(float),
        metavar="H",
        help="with --count: pickup window (default: the hub's)",
    )
    _life(bulk, GRANT_LIFE_S)

    opn = _sub(sub, "open", help="open a compartment now (compartment.open, signed)")
    opn.add_argument("label", help="the compartment, e.g. A05")
    opn.add_argument("--reason", required=True, help="why (the hub's audit keeps it)")
    _life(opn, OPEN_LIFE_S)

    svc = _sub(
        sub, "service", help="take a compartment out of service or back (compartment.set_service)"
    )
    svc.add_argument("label", help="the compartment, e.g. A05")
    svc.add_argument("state", choices=["out", "in"], help="out or in (of service)")

    _sub(sub, "sync", help="ask the hub for its state (sync.request)")
    watch = _sub(
        sub, "watch", help="print what the hub sends (replies, events, status, state) until Ctrl-C"
    )
    watch.add_argument("--count", type=_positive(int), metavar="N", help="stop after N messages")


def _options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every subcommand shares: on ``lockerctl cloud`` with their defaults,
    and on each subcommand without (given after it, they override; not given there,
    the value before it stands), so they may come before or after the subcommand.
    ``--mqtt`` and ``--hub`` are required in either place (:func:`_required`)."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    p.add_argument(
        "--mqtt",
        metavar="URL",
        default=default(None),
        help="the broker: mqtt://HOST[:PORT] (default port 1883); required",
    )
    p.add_argument(
        "--hub",
        metavar="ID",
        default=default(None),
        help="the hub id, e.g. hub-0042 (the demo prints it: hub HUBID); required",
    )
    p.add_argument(
        "--prefix",
        default=default("lockers"),
        help="the topic prefix, cloud.prefix (default: lockers)",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        default=default(None),
        help="a demo hub's state directory: both keys from DIR/keys "
        "(code-hmac.key, cloud-commands.key; the cloud's key only from a demo started "
        "with lockerd demo --mqtt URL)",
    )
    p.add_argument(
        "--code-key",
        metavar="FILE",
        default=default(None),
        help="the hub's code key (32 bytes, mode 0600): hashes codes",
    )
    p.add_argument(
        "--signing-key",
        metavar="FILE",
        default=default(None),
        help="the cloud's Ed25519 private key (PEM, no password): signs grants and opens",
    )
    p.add_argument(
        "--timeout",
        type=_positive(float),
        default=default(15.0),
        metavar="S",
        help="seconds to wait for the broker and for the hub's reply (default: 15)",
    )


def _required(args: argparse.Namespace) -> None:
    """``--mqtt`` and ``--hub``, given before or after the subcommand."""
    missing = [
        opt for opt, value in (("--mqtt URL", args.mqtt), ("--hub ID", args.hub)) if not value
    ]
    if missing:
        raise CloudCtlError(
            f"lockerctl cloud {args.cloud_command}: {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} required (before or after the command; "
            "see lockerctl cloud --help)"
        )


def _sub(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,  # noqa: A002
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` says what it does (its summary in the list, too),
    with the shared options (:func:`_options`)."""
    p = sub.add_parser(name, help=help, description=help)
    _options(p, top=False)
    return p


def _life(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument(
        "--life",
        type=_positive(int),
        default=default,
        metavar="S",
        help=f"seconds the signed command is valid (default: {default})",
    )


# ======================================================================================
# Keys
# ======================================================================================


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
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CloudCtlError(f"cannot read the signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError) as exc:
        raise CloudCtlError(f"{path} is not a PEM private key without a password ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CloudCtlError(f"{path} is not an Ed25519 private key")
    return key


def _signing_key(args: argparse.Namespace) -> Ed25519PrivateKey:
    _, path = _keys(args)
    if path is None:
        raise CloudCtlError(
            f"lockerctl cloud {args.cloud_command}: needs --state-dir or --signing-key"
        )
    if args.state_dir and not args.signing_key and not path.exists():
        raise CloudCtlError(
            f"cannot read the signing key {path}: No such file (a demo makes the cloud's "
            "keys only when started with lockerd demo --mqtt URL; else give --signing-key)"
        )
    return load_signing_key(path)


def _hasher(args: argparse.Namespace) -> CodeHasher:
    path, _ = _keys(args)
    if path is None:
        raise CloudCtlError(
            f"lockerctl cloud {args.cloud_command}: needs --state-dir or --code-key"
        )
    try:
        return CodeHasher(load_key(path))
    except LockerdError as exc:  # missing, readable by others, too short
        raise CloudCtlError(str(exc)) from None
    except OSError as exc:
        raise CloudCtlError(f"cannot read the code key {path}: {exc.strerror}") from None


# ======================================================================================
# Commands
# ======================================================================================


@dataclass
class Outgoing:
    """A command to send, and what to print once the hub's reply took it: ``codes``,
    the code lines of each parcel (a reservation's are printed only for the parcels the
    reply does not list as left out)."""

    body: dict[str, Any]
    codes: dict[str, str] = field(default_factory=dict)

    def said(self, reply: dict[str, Any]) -> list[str]:
        result = reply.get("result") or {}
        left_out = {
            p
            for key in ("exists", "code_conflict", "code_used")
            for p in result.get(key, [])
            if isinstance(p, str)
        }
        return [line for pid, line in self.codes.items() if pid not in left_out]


def _invalid(args: argparse.Namespace, exc: ValidationError) -> CloudCtlError:
    """What the hub would refuse as malformed, said before anything is sent."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    return CloudCtlError(f"lockerctl cloud {args.cloud_command}: {where}: {first['msg']}")


def _command(args: argparse.Namespace, now: int) -> tuple[dict[str, Any], list[str]]:
    """The command to send (as JSON: the fields given, none of the defaults; signed if
    it must be), and the lines to print once the hub took it (a reservation's codes).
    Only the first command of a ``bulk`` bigger than one command."""
    first = _commands(args, now)[0]
    return first.body, list(first.codes.values())


def _commands(args: argparse.Namespace, now: int) -> list[Outgoing]:
    """Every command to send, each as :func:`_command` makes it."""
    try:
        made = _models(args, now)
    except ValidationError as exc:  # what the hub would refuse as malformed
        raise _invalid(args, exc) from None
    out = []
    for cmd, codes in made:
        body = cmd.model_dump(mode="json", exclude_unset=True)
        if cmd.type in c.SIGNED:
            body = c.sign(body, _signing_key(args))
        out.append(Outgoing(body, codes))
    return out


def _cid() -> str:
    return f"cli-{secrets.token_hex(6)}"


def _window(hours: float | None) -> dict[str, Any]:
    """``pickup_window_s`` if a window was given; else none: the hub's own default."""
    return {} if hours is None else {"pickup_window_s": round(hours * 3600)}


def _reservation(
    hasher: CodeHasher,
    now: int,
    pid: str,
    size: str,
    *,
    accessible: bool,
    hours: float | None,
) -> tuple[dict[str, Any], str]:
    deposit, pickup = new_code(8), new_code(8)
    fields: dict[str, Any] = {
        "parcel": pid,
        "size": size,
        "deposit_code_hash": hasher.hash(deposit),
        "pickup_code_hash": hasher.hash(pickup),
        "deposit_from": now - 60,
        "deposit_until": now + 7 * 86_400,
        **_window(hours),
    }
    if accessible:
        fields["accessible"] = True
    return fields, f"parcel {pid} size {size} deposit {deposit} pickup {pickup}"


def _models(args: argparse.Namespace, now: int) -> list[tuple[c.Command, dict[str, str]]]:
    """The contract's models of the subcommand's commands (a signed one with its
    ``expires_at``, ``--life`` after ``issued_at``), each with its code lines."""
    base: dict[str, Any] = {"id": _cid(), "hub": args.hub, "issued_at": now}
    grant = {**base, "expires_at": now + getattr(args, "life", GRANT_LIFE_S)}
    cmd: c.Command
    match args.cloud_command:
        case "reserve":
            return [_reserve(args, now, grant)]
        case "update-codes":
            return [_update_codes(args, grant)]
        case "recall":
            code = new_code(8)
            cmd = c.ParcelRecall(
                type="parcel.recall",
                **grant,
                parcel=args.parcel,
                recall_code_hash=_hasher(args).hash(code),
            )
            return [(cmd, {args.parcel: f"parcel {args.parcel} recall {code}"})]
        case "bulk":
            return _bulk(args, now)
        case "cancel":
            cmd = c.ParcelCancel(type="parcel.cancel", **base, parcel=args.parcel)
        case "service":
            cmd = c.CompartmentSetService(
                type="compartment.set_service",
                **base,
                compartment=args.label,
                in_service=args.state == "in",
            )
        case "sync":
            cmd = c.SyncRequest(type="sync.request", **base)
        case "open":
            cmd = c.CompartmentOpen(
                type="compartment.open", **grant, compartment=args.label, reason=args.reason
            )
        case other:
            raise AssertionError(f"lockerctl cloud {other}: no such command")
    return [(cmd, {})]


def _reserve(
    args: argparse.Namespace, now: int, grant: dict[str, Any]
) -> tuple[c.Command, dict[str, str]]:
    pid = args.parcel or f"P-{secrets.token_hex(4)}"
    fields, line = _reservation(
        _hasher(args), now, pid, args.size, accessible=args.accessible, hours=args.hours
    )
    if args.is_return:
        return c.ReturnReserve(type="return.reserve", **grant, **fields), {pid: line}
    return c.ParcelReserve(type="parcel.reserve", **grant, **fields), {pid: line}


def _update_codes(
    args: argparse.Namespace, grant: dict[str, Any]
) -> tuple[c.Command, dict[str, str]]:
    if not (args.deposit or args.pickup):
        raise CloudCtlError("lockerctl cloud update-codes: say --deposit, --pickup or both")
    hasher = _hasher(args)
    hashes: dict[str, Any] = {}
    said = [f"parcel {args.parcel}"]
    for purpose, wanted in (("deposit", args.deposit), ("pickup", args.pickup)):
        if wanted:
            code = new_code(8)
            hashes[f"{purpose}_code_hash"] = hasher.hash(code)
            said.append(f"{purpose} {code}")
    cmd = c.ParcelUpdateCodes(type="parcel.update_codes", **grant, parcel=args.parcel, **hashes)
    return cmd, {args.parcel: " ".join(said)}


def _bulk(args: argparse.Namespace, now: int) -> list[tuple[c.Command, dict[str, str]]]:
    """codes.bulk commands of at most :data:`contract.BULK_MAX` reservations each."""
    items: list[tuple[dict[str, Any], str | None]] = []
    if args.count is not None:
        hasher = _hasher(args)
        batch = secrets.token_hex(3)
        for n in range(args.count):
            fields, line = _reservation(
                hasher,
                now,
                f"B-{batch}-{n + 1}",
                args.size,
                accessible=args.accessible,
                hours=args.hours,
            )
            items.append((fields, line))
    else:
        items = [(r, None) for r in _read_reservations(Path(args.file))]
    if not items:
        raise CloudCtlError(f"lockerctl cloud bulk: no reservations in {args.file}")
    out: list[tuple[c.Command, dict[str, str]]] = []
    for start in range(0, len(items), c.BULK_MAX):
        part = items[start : start + c.BULK_MAX]
        cmd = c.CodesBulk(
            type="codes.bulk",
            id=_cid(),
            hub=args.hub,
            issued_at=now,
            expires_at=now + args.life,
            reservations=[c.Reservation.model_validate(r) for r, _ in part],
        )
        out.append((cmd, {r["parcel"]: line for r, line in part if line is not None}))
    return out


def _read_reservations(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CloudCtlError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CloudCtlError(f"{path} is not JSON: {exc}") from None
    if isinstance(data, dict) and "reservations" in data:
        data = data["reservations"]
    if not (isinstance(data, list) and all(isinstance(r, dict) for r in data)):
        raise CloudCtlError(
            f"{path}: expected a list of reservations (JSON objects), or an object with "
            "reservations"
        )
    return data


# ======================================================================================
# Over MQTT
# ======================================================================================


def _broker(url: str) -> Cloud:
    try:
        return Cloud(url=url)
    except ValidationError:
        raise CloudCtlError(
            f"--mqtt {url}: not a broker URL; write mqtt://HOST[:PORT], e.g. mqtt://127.0.0.1:1883"
        ) from None


@contextlib.contextmanager
def _waiting_for(args: argparse.Namespace, what: str) -> Iterator[None]:
    try:
        yield
    except TimeoutError:
        raise CloudCtlError(
            f"no reply from hub {args.hub} to {what} within {args.timeout:g} s (is it "
            f"connected to this broker, under prefix {args.prefix}?)",
            UNREACHABLE,
        ) from None


async def run(args: argparse.Namespace, sent: list[str] | None = None) -> int:
    """Send the subcommand's commands, one after another, each once its reply to the
    one before came; ``sent`` gets each command's id as it is published."""
    _required(args)
    broker = _broker(args.mqtt)
    if broker.tls:
        raise CloudCtlError(
            f"--mqtt {args.mqtt}: lockerctl cloud speaks plain MQTT only (demos and tests)"
        )
    base = f"{args.prefix}/{args.hub}"
    # what to send is made (keys read, codes drawn, commands checked) before connecting
    outgoing = [] if args.cloud_command == "watch" else _commands(args, int(time.time()))
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"lockerctl-cloud-{secrets.token_hex(3)}",
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=args.timeout,
    ) as client:
        if args.cloud_command == "watch":
            return await _watch(client, base, args.count)
        await client.subscribe(f"{base}/reply", qos=1)
        worst = DONE
        for out in outgoing:
            await client.publish(f"{base}/cmd", json.dumps(out.body), qos=1)
            if sent is not None:
                sent.append(out.body["id"])
            with _waiting_for(args, f"command {out.body['id']}"):
                async with asyncio.timeout(args.timeout):
                    reply = await _reply(client, out.body["id"])
            worst = max(worst, _report(args, out, reply))
        return worst


async def _reply(client: aiomqtt.Client, cid: str) -> dict[str, Any]:
    """The hub's final reply to command ``cid`` (the first one: a redelivery's
    ``duplicate`` is the same reply; an open's interim ``opening`` is never sent)."""
    async for m in client.messages:
        with contextlib.suppress(ValueError, TypeError):
            reply = json.loads(m.payload if isinstance(m.payload, bytes | bytearray) else b"")
            if (
                isinstance(reply, dict)
                and reply.get("id") == cid
                and reply.get("status") != "opening"
            ):
                return reply
    raise aiomqtt.MqttError("the broker closed the connection")


def _report(args: argparse.Namespace, out: Outgoing, reply: dict[str, Any]) -> int:
    """Print the reply; the codes only if the hub took them."""
    if not reply.get("ok"):
        message = reply.get("message") or ""
        print(
            f"lockerctl cloud {args.cloud_command}: refused by hub {args.hub}: "
            f"{reply.get('status')}" + (f": {message}" if message else ""),
            file=sys.stderr,
        )
        return REFUSED
    for line in out.said(reply):
        print(line)
    print(json.dumps(reply, indent=1), flush=True)
    return DONE


async def _watch(client: aiomqtt.Client, base: str, count: int | None) -> int:
    await client.subscribe(f"{base}/#", qos=1)
    seen = 0
    async for m in client.messages:
        payload = m.payload if isinstance(m.payload, bytes | bytearray) else b""
        print(f"{m.topic} {bytes(payload).decode(errors='replace')}", flush=True)
        seen += 1
        if count and seen >= count:
            break
    return DONE


def main(args: argparse.Namespace) -> int:
    """``lockerctl cloud``: its exit code; whatever goes wrong is one line on stderr."""
    what = f"lockerctl cloud {args.cloud_command}"
    sent: list[str] = []
    try:
        return asyncio.run(run(args, sent))
    except CloudCtlError as exc:
        print(
            exc.message if exc.message.startswith("lockerctl") else f"{what}: {exc.message}",
            file=sys.stderr,
        )
        return exc.exit_code
    except BrokenPipeError:  # (watch | head): the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return DONE
    except (aiomqtt.MqttError, OSError) as exc:  # (a socket error aiomqtt did not wrap)
        print(f"{what}: cannot reach the broker {args.mqtt}: {exc}", file=sys.stderr)
        return UNREACHABLE
    except KeyboardInterrupt:
        unanswered = f": command {sent[-1]} was sent, its reply not awaited" if sent else ""
        print(f"{what}: interrupted{unanswered}", file=sys.stderr)
        return INTERRUPTED
