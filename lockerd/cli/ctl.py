"""lockerctl: the technician's tool. Speaks only to the daemon's local API socket; it
never opens a serial port.

    lockerctl status [--state S]... [--size S]...   the hub at a glance: compartments, summary
    lockerctl status LABEL                          one compartment in detail, with its board
    lockerctl parcels [--state S]... [--size S]...  parcels: compartment, collect-until
    lockerctl expired | empty-expired               expired parcels; open their doors to empty
    lockerctl events [--tail N] [--since TIME] [--type T]... [--follow]
                                                    the hub's history, newest first
    lockerctl outbox                                events still waiting for the cloud
    lockerctl audit [--tail N] [--since TIME]       who did what, when, through which socket
    lockerctl enter-code CODE                       exactly what the keypad does
    lockerctl open LABEL --reason TEXT              audited
    lockerctl service LABEL out|in
    lockerctl inspect LABEL empty|parcel            settle a compartment needing attention
    lockerctl reserve SIZE [--parcel ID] [--accessible] [--hours H]
                                                    a parcel reserved here; prints its codes once
    lockerctl cancel PARCEL                         cancel a parcel not yet deposited
    lockerctl bus                                   per-bus and per-board health and counters
    lockerctl alarms | ack ID | ack --all           open alarms; acknowledge one or all
    lockerctl quarantine                            messages the hub set aside
    lockerctl sim door|bus|stall ...                on a simulated hub: play the person there
    lockerctl cloud ...                             play the operator's cloud (lockerd.cli.cloudctl)
    lockerctl --version

Human tables by default (local times, words for yes/no), --json for scripts (the
API's reply as it is; lists in the order things happened, oldest first; with
events --follow one JSON object per line). --socket and --json go before or after
the command. --socket PATH (default: $LOCKERD_SOCKET, else /run/lockerd/api.sock) is
the technician socket; the daemon knows who you are from your login (the audit names
you as tech:LOGIN), and your group membership decides whether you may use it. A
terminal's socket takes only what its keypad may do: lockerctl --socket
/run/lockerd/keypad-1.sock enter-code CODE is that keypad.

Exit codes:
  0  done (also when there was nothing to do: a door already shut)
  1  refused by the hub: a wrong code, a jammed door, wait, no such compartment,
     parcel or alarm, a value lockerd will not take, a simulated door the hub did
     not see move, or forbidden (not on this socket, not for this user)
  2  a usage error: a wrong command, option or argument (lockerctl says which)
  3  lockerd unreachable, busy, or failing (see its log)
Errors go to stderr; the output (stdout) is only the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sys
import textwrap
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lockerd import __version__
from lockerd.api.server import call
from lockerd.cli import cloudctl
from lockerd.errors import LockerdError
from lockerd.hub.domain import CompartmentState, ParcelState, Size
from lockerd.hub.vocab import EVENT_TYPES, NOT_OK_OUTCOMES

SOCKET = "/run/lockerd/api.sock"
DEFAULT_SOCKET = os.environ.get("LOCKERD_SOCKET", SOCKET)

# exit codes (the module's docstring says what each means)
DONE, REFUSED, USAGE, UNREACHABLE = 0, 1, 2, 3
# an error reply's type -> the exit code: the hub refused the request (bad_request,
# forbidden, not_seen, and any other type), or it could not answer it (busy, internal).
# USAGE is argparse's alone: a command line it cannot parse.
ERROR_EXIT = {
    "forbidden": REFUSED,
    "bad_request": REFUSED,
    "not_seen": REFUSED,
    "busy": UNREACHABLE,
    "internal": UNREACHABLE,
}
TAIL = 20  # events and audit lines shown by default
TIME_KEYS = ("_until", "_from", "_at", "raised", "acked")  # keys of times in events' data
FOLLOW_EVERY_S = 0.5
FOLLOW_PAGE = 1000
_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
EPILOG = "Exit codes:" + (__doc__ or "").partition("Exit codes:")[2]


class CtlError(Exception):
    """What lockerctl says on stderr, and the exit code it ends with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ======================================================================================
# Arguments
# ======================================================================================


def since(text: str) -> float:
    """``--since``: an ISO date-time (local unless it names its zone) or a time ago
    (90s, 30m, 2h, 3d, 1w), as a Unix time."""
    if m := _AGO.fullmatch(text.strip()):
        return time.time() - float(m[1]) * _SECONDS[m[2]]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (give a date-time such as 2024-05-01T14:30 or "
            "'2024-05-01 14:30', or a time ago such as 90s, 30m, 2h, 3d, 1w)"
        ) from None


def positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"not a whole number of 1 or more: {text!r}")
    return n


def _options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """--socket and --json: on the top parser with their defaults, on each command's
    parser without (given there, they override; not given, the top's value stands)."""
    p.add_argument(
        "--socket",
        metavar="PATH",
        default=DEFAULT_SOCKET if top else argparse.SUPPRESS,
        help=f"lockerd's socket: the technician socket, or a terminal's socket to act as "
        f"that keypad (default: $LOCKERD_SOCKET if set, else {SOCKET}; now {DEFAULT_SOCKET})",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print the API's reply as JSON, for scripts (events --follow: one object a line)",
    )


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=summary,
        description=textwrap.fill(summary, 80),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _options(p, top=False)
    return p


def _words(values: Iterable[str]) -> str:
    return ", ".join(values)


STATES = [s.value for s in ParcelState]
COMPARTMENT_STATES = [s.value for s in CompartmentState]
SIZES = [s.value for s in Size]


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - one entry per command
    p = argparse.ArgumentParser(
        prog="lockerctl",
        description=(__doc__ or "").partition("Exit codes:")[0].rstrip(),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _options(p, top=True)
    p.add_argument("--version", action="version", version=f"lockerctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = _command(
        sub,
        "status",
        "compartments, a summary (free per size, unreachable, out of service, alarms), "
        "boards, alarms, the cloud link",
    )
    status.add_argument(
        "label",
        nargs="?",
        help="one compartment (e.g. A05) in detail: its parcel, its board (online or "
        "not, and why), its alarms and its board's",
    )
    status.add_argument(
        "--state",
        action="append",
        choices=COMPARTMENT_STATES,
        metavar="STATE",
        help="only compartments in this state (repeat for more; the summary counts all): "
        f"{_words(COMPARTMENT_STATES)}",
    )
    status.add_argument(
        "--size",
        action="append",
        choices=SIZES,
        metavar="SIZE",
        help=f"only compartments of this size (repeat for more): {_words(SIZES)}",
    )
    parcels = _command(sub, "parcels", "parcels at the hub, with compartment and collect-until")
    parcels.add_argument(
        "--state",
        action="append",
        choices=STATES,
        metavar="STATE",
        help=f"only parcels in this state (repeat for more): {_words(STATES)}",
    )
    parcels.add_argument(
        "--size",
        action="append",
        choices=SIZES,
        metavar="SIZE",
        help=f"only parcels of this size (repeat for more): {_words(SIZES)}",
    )
    _command(sub, "expired", "parcels past their pickup window (only a recall opens them)")
    _command(sub, "empty-expired", "open each expired parcel's door to take it out")

    events = _command(
        sub,
        "events",
        "the hub's history of events, kept after the cloud had them: newest first "
        "(what still waits for the cloud: lockerctl outbox)",
    )
    events.add_argument(
        "--tail",
        type=positive,
        default=TAIL,
        metavar="N",
        help=f"the N newest events (default {TAIL}); a note on stderr says when more exist",
    )
    events.add_argument(
        "--since",
        type=since,
        metavar="TIME",
        help="only events from TIME on: a date-time (2024-05-01T14:30, local time) or a "
        "time ago (90s, 30m, 2h, 3d, 1w)",
    )
    events.add_argument(
        "--type",
        action="append",
        choices=EVENT_TYPES,
        metavar="TYPE",
        help=f"only events of this type (repeat for more): {_words(EVENT_TYPES)}",
    )
    events.add_argument(
        "--after",
        type=int,
        metavar="SEQ",
        help="only events after this sequence number, oldest first (to read on from a "
        "previous list)",
    )
    events.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="after the newest ones, print each new event as it comes, oldest first, "
        "until Ctrl-C (with --json: one JSON object a line)",
    )
    outbox = _command(
        sub, "outbox", "the events still waiting for the cloud, oldest first (the next sent)"
    )
    outbox.add_argument(
        "--limit", type=positive, default=100, metavar="N", help="at most N events (default 100)"
    )
    audit = _command(
        sub,
        "audit",
        "the audit trail, newest first: who (tech:LOGIN, a terminal such as keypad:1, "
        "cloud, lockerd) did what, to what, when",
    )
    audit.add_argument(
        "--tail", type=positive, default=TAIL, metavar="N", help=f"the N newest (default {TAIL})"
    )
    audit.add_argument(
        "--since",
        type=since,
        metavar="TIME",
        help="only from TIME on: a date-time (2024-05-01T14:30) or a time ago (2h, 30m)",
    )

    code = _command(sub, "enter-code", "enter a code as at the keypad (on either socket)")
    code.add_argument("code", help="the code's digits")
    op = _command(sub, "open", "open a compartment's door (audited with the reason)")
    op.add_argument("label", help="the compartment, e.g. A05")
    op.add_argument("--reason", required=True, help="why (required; goes to the audit trail)")
    svc = _command(sub, "service", "take a compartment out of service, or put it back")
    svc.add_argument("label", help="the compartment, e.g. A05")
    svc.add_argument(
        "mode",
        choices=["out", "in"],
        help="out: out of service (never allocated); in: back in service",
    )
    ins = _command(sub, "inspect", "settle a compartment needing attention, once looked into")
    ins.add_argument("label", help="the compartment, e.g. A05")
    ins.add_argument(
        "content",
        choices=["empty", "parcel"],
        help="what you found: empty (it is free again) or parcel (it holds its parcel)",
    )
    res = _command(
        sub,
        "reserve",
        "reserve a parcel here (a hub without a cloud, or offline): prints its deposit "
        "and pickup codes, this once",
    )
    res.add_argument("size", choices=SIZES, help=f"the compartment size: {_words(SIZES)}")
    res.add_argument("--parcel", metavar="ID", help="the parcel's id (default: a new L-... id)")
    res.add_argument("--accessible", action="store_true", help="needs a compartment within reach")
    res.add_argument(
        "--hours",
        type=float,
        metavar="H",
        help="how long a stored parcel waits for its resident (default: the hub's "
        "[timers] pickup_window_h)",
    )
    cancel = _command(sub, "cancel", "cancel a reservation not yet deposited")
    cancel.add_argument("parcel", help="the parcel's id")

    _command(sub, "bus", "per-bus and per-board health and counters")
    _command(sub, "alarms", "open alarms (not yet acknowledged)")
    ack = _command(sub, "ack", "acknowledge an open alarm, or all of them")
    which = ack.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", type=int, help="the alarm's id (lockerctl alarms)")
    which.add_argument("--all", action="store_true", help="every open alarm")
    _command(
        sub,
        "quarantine",
        "messages the hub could not handle and set aside (the message_quarantined alarm)",
    )

    cloud = sub.add_parser("cloud", help="play the operator's cloud over MQTT (demos, tests)")
    cloudctl.build_parser(cloud)

    sim = _command(sub, "sim", "on a simulated hub: play the person at the door")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, metavar="WHAT")
    door = _command(sim_sub, "door", "a person at a compartment's door")
    door.add_argument("label", help="the compartment, e.g. A05")
    door.add_argument(
        "action",
        choices=["open", "close", "put", "take", "jam", "unjam"],
        help="open or close: a person opens or shuts the door; put or take: something "
        "goes in or comes out (boards with occupancy sensors); jam or unjam: the lock "
        "(a pulse will not open a jammed one)",
    )
    bus = _command(sim_sub, "bus", "a bus losing its power, or getting it back")
    bus.add_argument("name", help="the bus's name in the config, e.g. A")
    bus.add_argument(
        "action",
        choices=["dead", "alive"],
        help="dead: every board on the bus loses its power; alive: gets it back",
    )
    stall = _command(sim_sub, "stall", "block the daemon's event loop (the watchdog's demo)")
    stall.add_argument("seconds", type=float, help="how long, in seconds (at most 120)")
    return p


# ======================================================================================
# Human output
# ======================================================================================


def local(t: float | None) -> str:
    """A Unix time as a local date-time."""
    if t is None:
        return "-"
    if not math.isfinite(t):
        return "never"
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def yes(flag: Any) -> str:
    return "-" if flag is None else "yes" if flag else "no"


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return yes(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def word(key: str, value: Any) -> str:
    """A value of an event's data as one word: a time (``collect_until``, ``raised_at``)
    as a local date-time, a list of words comma-separated, text as it is."""
    if key.endswith(TIME_KEYS) and isinstance(value, (int, float)) and value > 0:
        return local(value).replace(" ", "T")
    if isinstance(value, list) and all(isinstance(v, str) and v and " " not in v for v in value):
        return ",".join(value) or "-"
    if isinstance(value, str) and value and " " not in value:
        return value
    return json.dumps(value)


def pairs(data: dict[str, Any]) -> str:
    """An event's data (an audit line's detail) as key=value words; a null value (no
    parcel, no compartment) is left out."""
    return " ".join(f"{k}={word(k, v)}" for k, v in data.items() if v is not None)


def table(rows: list[list[str]], header: list[str]) -> str:
    """Columns under their header, two spaces apart, no trailing space."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line([h.upper() for h in header]), *(line(r) for r in rows)])


def columns(rows: list[dict[str, Any]], names: list[str], **shown: Callable[[Any], str]) -> str:
    """``rows`` (dicts) as a table of ``names``; ``shown``: how a column's value reads."""
    return table(
        [[shown.get(n, cell)(r.get(n)) for n in names] for r in rows],
        names,
    )


def summary(result: dict[str, Any]) -> str:
    """Free compartments per size (of all of that size; one on a board lockerd cannot
    reach is not free), unreachable ones, out of service, open alarms: the reply's
    summary of every compartment (the list may be filtered)."""
    sm = result.get("summary") or {}
    free = [f"{size} {n}/{sm['of_size'][size]}" for size, n in sm.get("free", {}).items()]
    return (
        f"free: {', '.join(free) or 'none'}; unreachable: {sm.get('unreachable', 0)}; "
        f"out of service: {sm.get('out_of_service', 0)}; "
        f"open alarms: {sm.get('open_alarms', len(result.get('alarms') or []))}"
    )


def _state(c: dict[str, Any]) -> str:
    """A compartment's state in words; on a board lockerd cannot reach, marked so (the
    state is the last one seen)."""
    state = str(c["state"]).replace("_", " ")
    return state if c.get("reachable") is not False else f"unreachable ({state})"


def _door(c: dict[str, Any]) -> str:
    """Whether the door is open; ``?`` where its board does not answer."""
    return yes(c["door_open"]) if c.get("reachable") is not False else "?"


def _alarms(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no open alarms"
    return columns(rows, ["id", "type", "target", "raised"], raised=local)


def _cloud(cl: dict[str, Any]) -> str:
    state = "connected" if cl["connected"] else "NOT connected"
    age = cl.get("oldest_event_age_s")
    return f"cloud: {state} to {cl['broker']}; {cl['outbox_events']} events waiting" + (
        f" (oldest {age:g} s)" if age else ""
    )


def _status(result: dict[str, Any], args: argparse.Namespace) -> str:
    if "compartment" in result:
        return _compartment(result)
    comps = result["compartments"]
    rows = [{**c, "state": _state(c), "door_open": _door(c)} for c in comps]
    table = columns(rows, ["label", "size", "state", "door_open", "parcel"])
    if not comps:
        what = [*(args.state or []), *(f"size {s}" for s in args.size or [])]
        table = "no compartments" + (f" ({', '.join(what)})" if what else "")
    parts = [table, summary(result)]
    if result.get("boards"):
        parts.append(
            "boards:\n"
            + columns(result["boards"], ["bus", "board", "online", "requests", "timeouts"])
            + "".join(
                f"\n  {b['bus']} {b['board']}: {b['last_error']}"
                for b in result["boards"]
                if b.get("last_error")
            )
        )
    if result["alarms"]:
        parts.append("open alarms:\n" + _alarms(result["alarms"]))
    if result.get("cloud"):
        parts.append(_cloud(result["cloud"]))
    if result.get("watchdog"):
        wd = result["watchdog"]
        parts.append(
            "watchdog: "
            + ("healthy" if wd["healthy"] else "UNHEALTHY: " + "; ".join(wd["problems"]))
        )
    parts.append(f"lockerd {result.get('version', '?')}")
    return "\n\n".join(parts)


def _compartment(result: dict[str, Any]) -> str:
    c, p = result["compartment"], result.get("parcel")
    reachable = c.get("reachable") is not False
    seen = "" if reachable else " (as last seen: its board does not answer)"
    lines = [
        f"compartment {c['label']}",
        f"  size    {c['size']}",
        f"  state   {c['state'].replace('_', ' ')}{seen}",
        f"  door    {'open' if c['door_open'] else 'shut'}{seen}",
    ]
    if c.get("board"):
        lines.append(f"  where   bus {c['bus']}, board {c['board']}, channel {c['channel']}")
    board = result.get("board")
    if board is not None:
        state = "online" if board["online"] else "OFFLINE"
        why = board.get("last_error")
        lines.append(f"  board   {state}" + (f": {why}" if why else ""))
    if p is None:
        lines.append(f"  parcel  {c['parcel'] or 'none'}")
    else:
        until = f", collect until {local(p['collect_until'])}" if p["collect_until"] else ""
        lines.append(f"  parcel  {p['id']} ({p['kind']}, {p['size']}, {p['state']}{until})")
    alarms = result.get("alarms") or []
    if not alarms:
        lines.append("  alarms  none open")
    lines += [
        f"  alarm   {a['id']} {a['type']}"
        + (f" of board {a['target']}" if a["target"] != c["label"] else "")
        + f", raised {local(a['raised'])}"
        for a in alarms
    ]
    return "\n".join(lines)


def _parcels(result: list[dict[str, Any]], args: argparse.Namespace) -> str:
    if not result:
        what = [*(args.state or []), *(f"size {s}" for s in args.size or [])]
        return "no parcels" + (f" ({', '.join(what)})" if what else "")
    return columns(
        result,
        ["id", "kind", "size", "state", "compartment", "collect_until"],
        collect_until=local,
    )


def _expired(result: list[dict[str, Any]], args: argparse.Namespace) -> str:
    if not result:
        return "no expired parcels"
    return columns(
        result, ["id", "kind", "size", "compartment", "collect_until"], collect_until=local
    )


def event_line(e: dict[str, Any]) -> str:
    by = e.get("actor") or "-"
    return (
        f"{e['seq']:>6}  {local(e['at'])}  {e['type']:<22}  {by:<12}  {pairs(e['data'])}".rstrip()
    )


EVENT_HEADER = f"{'SEQ':>6}  {'TIME':<19}  {'TYPE':<22}  {'BY':<12}  DATA"


def _events(result: list[dict[str, Any]], args: argparse.Namespace) -> str:
    if not result:
        return "no events" + (f" since {local(args.since)}" if args.since else "")
    return "\n".join([EVENT_HEADER, *(event_line(e) for e in reversed(result))])


def _outbox(result: list[dict[str, Any]], args: argparse.Namespace) -> str:
    if not result:
        return "no events waiting for the cloud"
    lines = [f"{'SEQ':>6}  {'TIME':<19}  {'TYPE':<22}  DATA"]
    lines += [
        f"{e['seq']:>6}  {local(e['at'])}  {e['type']:<22}  {pairs(e['data'])}".rstrip()
        for e in result
    ]
    return "\n".join(lines)


def _audit(result: list[dict[str, Any]], args: argparse.Namespace) -> str:
    if not result:
        return "no audit lines" + (f" since {local(args.since)}" if args.since else "")
    return columns(
        list(reversed(result)),
        ["at", "actor", "action", "target", "detail"],
        at=local,
        detail=lambda d: pairs(d) if d else "-",
    )


def _without_bus(error: str, bus: str) -> str:
    """A bus's error without the ``bus NAME:`` it starts with (the line names the bus)."""
    return error.removeprefix(f"bus {bus}: ")


def _bus(result: list[dict[str, Any]], args: argparse.Namespace) -> str:
    buses = columns(
        result,
        ["bus", "port", "open", "silent", "opens", "port_losses", "rx_bytes", "tx_bytes"],
    )
    buses += "".join(
        f"\n  bus {b['bus']}: {_without_bus(str(b['port_error']), b['bus'])}"
        for b in result
        if b.get("port_error")
    )
    boards = [{"bus": b["bus"], **board} for b in result for board in b["boards"]]
    return (
        buses
        + "\n\n"
        + columns(
            boards,
            [
                "bus",
                "board",
                "online",
                "requests",
                "replies",
                "timeouts",
                "bad_frames",
                "refused_offline",
                "last_latency_ms",
                "max_latency_ms",
                "last_error",
            ],
        )
    )


def _quarantine(result: list[dict[str, Any]], args: argparse.Namespace) -> str:
    if not result:
        return "no message set aside"
    return columns(result, ["n", "at", "source", "ref", "bytes", "error"], at=local)


def _outcome(result: dict[str, Any], args: argparse.Namespace | None = None) -> str:
    where = f" [{result['compartment']}]" if result.get("compartment") else ""
    text = f"{result.get('status', 'ok')}{where}: {result.get('message', '')}".rstrip()
    detail = result.get("detail")
    if detail and detail != result.get("message"):
        text += f"\n  why: {detail}"
    return text


def _outcomes(result: list[dict[str, Any]], args: argparse.Namespace) -> str:
    return "\n".join(_outcome(o) for o in result) or "no expired parcels"


def _reserved(result: dict[str, Any], args: argparse.Namespace) -> str:
    text = _outcome(result)
    if result.get("deposit_code"):
        text += (
            f"\nparcel {result['parcel']} size {result['size']} deposit "
            f"{result['deposit_code']} pickup {result['pickup_code']}"
            f"\n  deposit by {local(result['deposit_until'])}; once stored it waits "
            f"{result['pickup_window_h']:g} h"
            "\n  the codes are shown this once: the hub keeps only their hashes"
        )
    return text


def _sim_said(result: dict[str, Any], args: argparse.Namespace) -> str:
    return str(result.get("message", ""))


# ======================================================================================
# The commands
# ======================================================================================


def _sim(args: argparse.Namespace) -> dict[str, Any]:
    if args.sim_command == "bus":
        return {"op": "sim_bus", "bus": args.name, "action": args.action}
    if args.sim_command == "stall":
        return {"op": "sim_stall", "seconds": args.seconds}
    return {"op": "sim_door", "label": args.label, "action": args.action}


def _status_request(args: argparse.Namespace) -> dict[str, Any]:
    req: dict[str, Any] = {"op": "status"}
    if args.label:
        req["label"] = args.label
    if args.state:
        req["states"] = args.state
    if args.size:
        req["sizes"] = args.size
    return req


def _events_request(args: argparse.Namespace) -> dict[str, Any]:
    req: dict[str, Any] = {"op": "events", "limit": args.tail + 1}  # one more: is it cut?
    if args.since is not None:
        req["since"] = args.since
    if args.type:
        req["types"] = args.type
    if args.after is not None:
        req["after_seq"] = args.after
    return req


def _reserve(args: argparse.Namespace) -> dict[str, Any]:
    req: dict[str, Any] = {"op": "reserve", "size": args.size, "accessible": args.accessible}
    if args.parcel is not None:
        req["parcel"] = args.parcel
    if args.hours is not None:
        req["hours"] = args.hours
    return req


def _since(req: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    return req if args.since is None else {**req, "since": args.since}


Render = Callable[[Any, argparse.Namespace], str]


@dataclass(frozen=True)
class Command:
    """A lockerctl command: the API request it sends, and how its result reads.
    ``tail``: the request asks for one more than ``--tail``, to tell whether the list
    was cut (the extra one is not shown)."""

    request: Callable[[argparse.Namespace], dict[str, Any]]
    render: Render = _outcome
    tail: bool = False


# one line per command: a new command is a parser entry above and a row here
COMMANDS: dict[str, Command] = {
    "status": Command(_status_request, _status),
    "parcels": Command(lambda a: {"op": "parcels", "states": a.state, "sizes": a.size}, _parcels),
    "expired": Command(lambda a: {"op": "parcels", "states": ["expired"]}, _expired),
    "events": Command(_events_request, _events, tail=True),
    "outbox": Command(lambda a: {"op": "outbox", "limit": a.limit}, _outbox),
    "audit": Command(lambda a: _since({"op": "audit", "limit": a.tail + 1}, a), _audit, tail=True),
    "enter-code": Command(lambda a: {"op": "enter_code", "code": a.code}),
    "open": Command(lambda a: {"op": "open", "label": a.label, "reason": a.reason}),
    "service": Command(lambda a: {"op": "service", "label": a.label, "in_service": a.mode == "in"}),
    "inspect": Command(
        lambda a: {"op": "inspect", "label": a.label, "holds_parcel": a.content == "parcel"}
    ),
    "reserve": Command(_reserve, _reserved),
    "cancel": Command(lambda a: {"op": "cancel", "parcel": a.parcel}),
    "bus": Command(lambda a: {"op": "bus"}, _bus),
    "alarms": Command(lambda a: {"op": "alarms"}, lambda r, a: _alarms(r)),
    "ack": Command(lambda a: {"op": "ack_all"} if a.all else {"op": "ack", "id": a.id}),
    "quarantine": Command(lambda a: {"op": "quarantine"}, _quarantine),
    "empty-expired": Command(lambda a: {"op": "empty_expired"}, _outcomes),
    "sim": Command(_sim, _sim_said),
}


def request_for(args: argparse.Namespace) -> dict[str, Any]:
    return COMMANDS[args.command].request(args)


def render(command: str, result: Any, args: argparse.Namespace) -> str:
    return COMMANDS[command].render(result, args)


# ======================================================================================
# Running one
# ======================================================================================


async def ask(sock: str, request: dict[str, Any]) -> Any:
    """The result of one request; a :class:`CtlError` for an error reply or no reply."""
    try:
        reply = await call(sock, request)
    except TimeoutError:
        raise CtlError(UNREACHABLE, f"cannot reach lockerd at {sock}: no reply in time") from None
    except (OSError, ValueError) as exc:
        raise CtlError(UNREACHABLE, f"cannot reach lockerd at {sock}: {exc}") from None
    if not reply.get("ok"):
        err = reply.get("error") or {}
        kind = str(err.get("type"))
        raise CtlError(ERROR_EXIT.get(kind, REFUSED), f"{kind}: {err.get('message')}")
    return reply["result"]


def cut(result: list[Any], args: argparse.Namespace) -> tuple[list[Any], str | None]:
    """A list asked for with one more than ``--tail``: the list to show, and the note for
    stderr when more exist."""
    if len(result) <= args.tail:
        return result, None
    after = getattr(args, "after", None)
    if after is not None:  # the first ones after SEQ: newer ones left out
        shown = result[: args.tail]
        return shown, (
            f"the first {args.tail} after {after} shown, more follow: "
            f"--after {shown[-1]['seq']} for the next ones"
        )
    what = f" since {local(args.since)}" if args.since is not None else ""
    return result[1:], (
        f"the {args.tail} newest{what} shown, older ones left out; --tail N for more"
    )


def exit_code(result: Any) -> int:
    match result:
        case {"status": str(status), "message": str()}:  # an outcome
            return REFUSED if status in NOT_OK_OUTCOMES else DONE
        case [{"status": "wait", "message": str()}, *_]:  # empty-expired rate-limited
            return REFUSED if all(o.get("status") == "wait" for o in result) else DONE
        case _:
            return DONE


def say(text: str) -> None:
    print(text, flush=True)


async def follow(args: argparse.Namespace) -> int:
    """events --follow: the newest (--tail), then each new event as it comes, oldest
    first; with --json one object a line."""
    show: Callable[[dict[str, Any]], str] = json.dumps if args.json else event_line
    req = _events_request(args)
    if args.after is None:
        head = await ask(args.socket, {"op": "events", "limit": 1})
        last = head[-1]["seq"] if head else 0
        first = await ask(args.socket, {**req, "limit": args.tail})
    else:
        last = args.after
        first = []
    if not args.json:
        say(EVENT_HEADER)
    while True:
        for e in first:
            say(show(e))
            last = max(last, e["seq"])
        await asyncio.sleep(FOLLOW_EVERY_S)
        first = await ask(args.socket, {**req, "after_seq": last, "limit": FOLLOW_PAGE})


async def run(args: argparse.Namespace) -> int:
    if args.command == "events" and args.follow:
        return await follow(args)
    command = COMMANDS[args.command]
    result = await ask(args.socket, command.request(args))
    note = None
    if command.tail:
        result, note = cut(result, args)
    if args.json:
        say(json.dumps(result, indent=2))
    else:
        say(command.render(result, args))
    if note:
        print(f"lockerctl: {note}", file=sys.stderr)
    return exit_code(result)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "status" and args.label and (args.state or args.size):
        parser.error("status LABEL shows one compartment: --state and --size filter the list")
    try:
        if args.command == "cloud":
            return cloudctl.main(args)
        return asyncio.run(run(args))
    except CtlError as exc:
        print(f"lockerctl: {exc.message}", file=sys.stderr)
        return exc.code
    except LockerdError as exc:  # e.g. a key file lockerctl cloud cannot read
        print(f"lockerctl: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return DONE
    except BrokenPipeError:  # the reader went away (lockerctl events -f | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return DONE
