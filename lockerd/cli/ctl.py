"""``lockerctl``: the technician's tool. Speaks only to the daemon's local API socket;
it never opens a serial port.

    lockerctl status | parcels [--state S] | events [--after SEQ] [--follow]
    lockerctl enter-code CODE                       exactly what the keypad does
    lockerctl open LABEL --reason TEXT              audited
    lockerctl service LABEL out|in
    lockerctl inspect LABEL empty|parcel            settle a compartment needing attention
    lockerctl bus                                   per-board health and counters
    lockerctl alarms | ack ID                       open alarms; acknowledge one
    lockerctl expired | empty-expired               expired parcels; open their doors to empty
    lockerctl quarantine                            messages the hub set aside
    lockerctl sim door|bus|stall ...                on a simulated hub: play the person there
    lockerctl cloud ...                             play the operator's cloud (lockerd.cli.cloudctl)
    lockerctl --version

Human tables by default, ``--json`` for scripts. ``--socket PATH`` (or LOCKERD_SOCKET) is
the technician socket; the daemon knows who you are from your login (the audit names
you as tech:LOGIN), and your group membership decides whether you may use it. A
terminal's socket takes only what its keypad may do: ``lockerctl --socket
/run/lockerd/keypad-1.sock enter-code CODE`` is that keypad.

Exit codes: 0 done; 1 refused (a wrong code, a jammed door, wait) or forbidden (not for
this socket or this user); 2 a bad request; 3 lockerd unreachable or busy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lockerd import __version__
from lockerd.api.server import call
from lockerd.cli import cloudctl
from lockerd.errors import LockerdError
from lockerd.hub.vocab import NOT_OK_OUTCOMES

DEFAULT_SOCKET = os.environ.get("LOCKERD_SOCKET", "/run/lockerd/api.sock")
# error types with their own exit code (any other error: 2, a bad request)
ERROR_EXIT = {"forbidden": 1, "busy": 3}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lockerctl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--socket",
        default=DEFAULT_SOCKET,
        help="the technician socket (default $LOCKERD_SOCKET or /run/lockerd/api.sock); "
        "a terminal's socket for enter-code as that keypad",
    )
    p.add_argument("--json", action="store_true", help="print the raw JSON reply")
    p.add_argument("--version", action="version", version=f"lockerctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status")
    parcels = sub.add_parser("parcels")
    parcels.add_argument("--state", action="append", help="only parcels in this state")
    events = sub.add_parser("events")
    events.add_argument("--after", type=int, default=0)
    events.add_argument("--follow", action="store_true")
    code = sub.add_parser("enter-code", help="what a keypad does (on either socket)")
    code.add_argument("code")
    op = sub.add_parser("open")
    op.add_argument("label")
    op.add_argument("--reason", required=True)
    svc = sub.add_parser("service")
    svc.add_argument("label")
    svc.add_argument("mode", choices=["out", "in"])
    ins = sub.add_parser("inspect")
    ins.add_argument("label")
    ins.add_argument("content", choices=["empty", "parcel"])
    sub.add_parser("bus")
    sub.add_parser("alarms")
    sub.add_parser(
        "quarantine",
        help="messages the hub could not handle and set aside (the message_quarantined alarm)",
    )
    sub.add_parser("expired", help="parcels past their pickup window")
    sub.add_parser("empty-expired", help="open each expired parcel's door to take it out")
    ack = sub.add_parser("ack")
    ack.add_argument("id", type=int)
    cloud = sub.add_parser("cloud", help="play the operator's cloud over MQTT (demos, tests)")
    cloudctl.build_parser(cloud)
    sim = sub.add_parser("sim", help="on a simulated hub: play the person at the door")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True)
    door = sim_sub.add_parser("door")
    door.add_argument("label")
    door.add_argument(
        "action",
        choices=["open", "close", "put", "take", "jam", "unjam"],
        help="a person opens or shuts the door, puts something in or takes it out "
        "(boards with occupancy sensors); jam/unjam the lock (a pulse will not open it)",
    )
    bus = sim_sub.add_parser("bus")
    bus.add_argument("name")
    bus.add_argument(
        "action",
        choices=["dead", "alive"],
        help="every board on the bus loses its power (or gets it back)",
    )
    stall = sim_sub.add_parser("stall", help="block the daemon's event loop (watchdog demo)")
    stall.add_argument("seconds", type=float)
    return p


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = [max(len(col), *(len(str(r.get(col, ""))) for r in rows)) for col in columns]
    lines = ["  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=True))]
    lines += [
        "  ".join(
            str(r.get(col, "") if r.get(col) is not None else "-").ljust(w)
            for col, w in zip(columns, widths, strict=True)
        )
        for r in rows
    ]
    return "\n".join(lines)


def _waits(outcome: Any) -> bool:
    return isinstance(outcome, dict) and outcome.get("status") == "wait"


def _status(result: dict[str, Any]) -> str:
    text = table(result["compartments"], ["label", "size", "state", "door_open", "parcel"])
    if result.get("boards"):
        text += "\n\nboards:\n" + table(
            result["boards"], ["bus", "board", "online", "requests", "timeouts", "last_error"]
        )
    if result["alarms"]:
        text += "\n\nopen alarms:\n" + table(result["alarms"], ["id", "type", "target"])
    if result.get("cloud"):
        cl = result["cloud"]
        state = "connected" if cl["connected"] else "NOT connected"
        text += f"\n\ncloud: {state} to {cl['broker']}; {cl['outbox_events']} events waiting" + (
            f" (oldest {cl['oldest_event_age_s']} s)" if cl["oldest_event_age_s"] else ""
        )
    if result.get("watchdog"):
        wd = result["watchdog"]
        text += "\n\nwatchdog: " + (
            "healthy" if wd["healthy"] else "UNHEALTHY: " + "; ".join(wd["problems"])
        )
    return text + f"\n\nlockerd {result.get('version', '?')}"


def _outcome(result: Any) -> str:
    msg = result.get("message", "")
    where = f" [{result['compartment']}]" if result.get("compartment") else ""
    return f"{result.get('status', 'ok')}{where}: {msg}"


def _sim(args: argparse.Namespace) -> dict[str, Any]:
    if args.sim_command == "bus":
        return {"op": "sim_bus", "bus": args.name, "action": args.action}
    if args.sim_command == "stall":
        return {"op": "sim_stall", "seconds": args.seconds}
    return {"op": "sim_door", "label": args.label, "action": args.action}


@dataclass(frozen=True)
class Command:
    """A lockerctl command: the API request it sends, and how its result reads."""

    request: Callable[[argparse.Namespace], dict[str, Any]]
    render: Callable[[Any], str] = _outcome


def _parcels(result: Any) -> str:
    return table(result, ["id", "kind", "size", "state", "compartment"])


# one line per command: a new command is a parser entry above and a row here
COMMANDS: dict[str, Command] = {
    "status": Command(lambda a: {"op": "status"}, _status),
    "parcels": Command(lambda a: {"op": "parcels", "states": a.state}, _parcels),
    "expired": Command(lambda a: {"op": "parcels", "states": ["expired"]}, _parcels),
    "events": Command(
        lambda a: {"op": "events", "after_seq": a.after},
        lambda r: "\n".join(f"{e['seq']:>6}  {e['type']:<22} {json.dumps(e['data'])}" for e in r),
    ),
    "enter-code": Command(lambda a: {"op": "enter_code", "code": a.code}),
    "open": Command(lambda a: {"op": "open", "label": a.label, "reason": a.reason}),
    "service": Command(lambda a: {"op": "service", "label": a.label, "in_service": a.mode == "in"}),
    "inspect": Command(
        lambda a: {"op": "inspect", "label": a.label, "holds_parcel": a.content == "parcel"}
    ),
    "bus": Command(lambda a: {"op": "bus"}, lambda r: json.dumps(r, indent=2)),
    "alarms": Command(
        lambda a: {"op": "alarms"},
        lambda r: table(r, ["id", "type", "target", "raised"]) if r else "no open alarms",
    ),
    "quarantine": Command(
        lambda a: {"op": "quarantine"},
        lambda r: (
            table(r, ["n", "at", "source", "ref", "bytes", "error"])
            if r
            else "no message set aside"
        ),
    ),
    "empty-expired": Command(
        lambda a: {"op": "empty_expired"},
        lambda r: "\n".join(_outcome(o) for o in r) or "no expired parcels",
    ),
    "ack": Command(lambda a: {"op": "ack", "id": a.id}),
    "sim": Command(_sim, lambda r: str(r.get("message", ""))),
}


def request_for(args: argparse.Namespace) -> dict[str, Any]:
    return COMMANDS[args.command].request(args)


def render(command: str, result: Any) -> str:
    return COMMANDS[command].render(result)


async def run(args: argparse.Namespace) -> int:
    req = request_for(args)
    while True:
        try:
            reply = await call(args.socket, req)
        except (OSError, TimeoutError) as exc:
            print(f"lockerctl: cannot reach lockerd at {args.socket}: {exc}", file=sys.stderr)
            return 3
        if not reply.get("ok"):
            err = reply.get("error", {})
            print(f"lockerctl: {err.get('type')}: {err.get('message')}", file=sys.stderr)
            return ERROR_EXIT.get(err.get("type"), 2)
        result = reply["result"]
        if args.json:
            print(json.dumps(result, indent=2))
        elif result or args.command != "events":
            print(render(args.command, result))
        if not (args.command == "events" and args.follow):
            match result:
                case {"status": str(status)}:  # an outcome
                    not_ok = status in NOT_OK_OUTCOMES
                case [_, *_]:  # empty-expired over the technician's rate limit
                    not_ok = all(_waits(o) for o in result)
                case _:
                    not_ok = False
            return 1 if not_ok else 0
        if result:
            req["after_seq"] = result[-1]["seq"]
        await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "cloud":
            return cloudctl.main(args)
        return asyncio.run(run(args))
    except LockerdError as exc:  # e.g. a key file lockerctl cloud cannot read
        print(f"lockerctl: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
