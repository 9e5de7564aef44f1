"""lockerctl as a technician runs it: a process speaking to a small hub's sockets (the
hub in this process, tests.support.hubs), and its parser and help read in-process.

What a technician expects of a command line (kubectl, gh, systemctl): options before or
after the command, help that says what each argument takes, distinct exit codes,
errors on stderr, empty lists that say so, local times and words instead of epoch
floats and booleans; the hub's own history, its audit trail, reservations made at
the hub (issue 12)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from lockerd.api.server import call
from lockerd.cli import ctl
from lockerd.config import HubConfig
from lockerd.daemon import wiring
from lockerd.daemon.wiring import open_hub
from lockerd.hub import domain as d
from lockerd.hub.codes import create_key
from lockerd.hub.service import Outcome
from tests.support.buses import FAST_BUS
from tests.support.daemon import LOCKERCTL, lockerctl
from tests.support.hubs import START, SimHub
from tests.support.waiting import until_result

ME = pwd.getpwuid(os.getuid()).pw_name
PARCEL = re.compile(r"^parcel (\S+) size (\S+) deposit (\d+) pickup (\d+)$", re.M)


def local(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def stored_plain(state_dir: Path, code: str) -> bool:
    """Whether the store's files (the database, its write-ahead log) hold ``code``."""
    return any(code.encode() in f.read_bytes() for f in state_dir.glob("lockerd.db*"))


def no_trailing_spaces(text: str) -> bool:
    return all(line == line.rstrip() for line in text.splitlines())


async def stored(hub: SimHub, pid: str, size: d.Size, deposit: str, pickup: str) -> str:
    """A parcel reserved, deposited at the keypad and its door shut: stored. Its label."""
    hub.reserve(pid, size, deposit, pickup)
    opened = await hub.service.enter_code(deposit, "keypad:1")
    assert opened.status == "opened", opened
    assert opened.compartment is not None
    hub.board.close_door(int(opened.compartment[1:]))
    await until_result(lambda: asyncio.sleep(0, hub.parcel(pid)), lambda s: s.value == "stored")
    return opened.compartment


# ======================================================================================
# The parser: options anywhere, help that helps, exit codes
# ======================================================================================


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    """lockerctl's parser and each command's (and sim's), without lockerctl cloud's."""
    top = ctl.build_parser()
    found = [("lockerctl", top)]
    for name, p in _subparsers(top).items():
        if name == "cloud":
            continue
        found.append((name, p))
        found += [(f"{name} {sub}", q) for sub, q in _subparsers(p).items()]
    return found


def test_socket_and_json_go_before_or_after_the_command() -> None:
    parser = ctl.build_parser()
    for argv in (
        ["status", "--json", "--socket", "/x.sock"],
        ["--json", "status", "--socket", "/x.sock"],
        ["--socket", "/x.sock", "--json", "status"],
        ["sim", "door", "A05", "open", "--json", "--socket", "/x.sock"],
        ["events", "--follow", "--json", "--socket=/x.sock"],
    ):
        args = parser.parse_args(argv)
        assert (args.json, args.socket) == (True, "/x.sock"), argv
    args = parser.parse_args(["--socket", "/top.sock", "parcels"])
    assert (args.json, args.socket) == (False, "/top.sock")  # not reset by the command


def test_help_says_what_every_argument_takes_without_markup() -> None:
    for name, parser in _every_parser():
        text = parser.format_help()
        assert "``" not in text, name
        assert "Exit codes:" in text, name
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"lockerctl {name}: {action.dest} says nothing"
            for choice in action.choices or ():
                assert str(choice) in action.help, f"{name} {action.dest}: {choice} unsaid"
    top = ctl.build_parser().format_help()
    assert "LOCKERD_SOCKET" in top
    assert "/run/lockerd/api.sock" in top
    inspect = dict(_every_parser())["inspect"].format_help()
    assert "empty" in inspect
    assert "parcel" in inspect
    states = dict(_every_parser())["parcels"].format_help()
    assert all(s.value in states for s in d.ParcelState)


def test_exit_codes_are_documented_and_distinct() -> None:
    doc = ctl.__doc__ or ""
    assert "``" not in doc
    codes = re.findall(r"^\s+(\d)\s+\S", doc.partition("Exit codes:")[2], re.M)
    assert codes == ["0", "1", "2", "3"]
    assert len({ctl.DONE, ctl.REFUSED, ctl.USAGE, ctl.UNREACHABLE}) == 4
    # the hub's refusals are 1, whatever their type; 2 is argparse's alone
    assert ctl.ERROR_EXIT["bad_request"] == ctl.REFUSED
    assert ctl.ERROR_EXIT["forbidden"] == ctl.REFUSED
    assert ctl.ERROR_EXIT["not_seen"] == ctl.REFUSED
    assert ctl.USAGE not in ctl.ERROR_EXIT.values()
    assert "2  a usage error: a wrong command, option or argument" in doc
    assert "no such compartment" in doc.partition("  2  ")[0]  # said under 1
    assert ctl.ERROR_EXIT["busy"] == ctl.UNREACHABLE
    help_text = ctl.build_parser().format_help()
    for line in doc.partition("Exit codes:")[2].splitlines()[:3]:
        assert " ".join(line.split()) in " ".join(help_text.split())


def test_a_time_is_a_date_time_or_a_time_ago() -> None:
    assert ctl.since("2024-05-01T14:30") == datetime(2024, 5, 1, 14, 30).timestamp()
    assert ctl.since("2024-05-01 14:30") == datetime(2024, 5, 1, 14, 30).timestamp()
    assert ctl.since("2h") == pytest.approx(datetime.now().timestamp() - 7200, abs=5)
    assert ctl.since("30m") == pytest.approx(datetime.now().timestamp() - 1800, abs=5)
    for bad in ("yesterday", "2h ago", "-5m", "14:30:99"):
        with pytest.raises(argparse.ArgumentTypeError):
            ctl.since(bad)
    with pytest.raises(SystemExit) as exited:
        ctl.build_parser().parse_args(["events", "--since", "soon"])
    assert exited.value.code == ctl.USAGE


async def test_usage_refusals_and_no_daemon_each_have_their_code(
    hub: SimHub, tmp_path: Path
) -> None:
    for usage in (
        ("service", "A01", "sideways"),
        ("status", "--state", "lost"),
        ("status", "A01", "--state", "free"),
        ("sim", "door", "A01", "wave"),
    ):
        rc, out, err = await lockerctl(hub.sock, *usage)  # argparse's: 2
        assert (rc, out) == (2, ""), usage
        assert err.startswith("usage: lockerctl"), usage
    # every answer of the hub that refuses the request: 1, not found as much as refused
    for refused in (
        ("status", "Z99"),
        ("open", "Z99", "--reason", "check"),
        ("service", "Z99", "out"),
        ("sim", "door", "Z99", "open"),
        ("cancel", "NOPE"),
        ("ack", "999"),
        ("enter-code", "00000000"),
    ):
        rc, out, err = await lockerctl(hub.sock, *refused)
        assert rc == 1, (refused, out, err)
    rc, out, err = await lockerctl(hub.sock, "status", "A99")  # the daemon's bad_request
    assert (rc, out) == (1, "")
    assert err == "lockerctl: bad_request: no compartment A99\n"
    rc, out, err = await lockerctl(hub.sock, "cancel", "NOPE")  # refused by the hub
    assert rc == 1
    assert out.startswith("refused: ")
    rc, out, err = await lockerctl(hub.keypad, "audit")  # forbidden
    assert (rc, out) == (1, "")
    assert err.startswith("lockerctl: forbidden: audit is not allowed")
    rc, out, err = await lockerctl(tmp_path / "none.sock", "status")
    assert (rc, out) == (3, "")
    assert err.startswith("lockerctl: cannot reach lockerd")


async def test_sim_errors_go_to_stderr_with_a_non_zero_code(hub: SimHub) -> None:
    rc, out, err = await lockerctl(hub.sock, "sim", "door", "Z99", "open")
    assert (rc, out) == (1, "")
    assert err.startswith("lockerctl: bad_request: ")
    assert "Z99" in err
    reply = await call(hub.sock, {"op": "sim_bus", "bus": "nope", "action": "dead"})
    assert reply["ok"] is False
    assert reply["error"]["type"] == "bad_request"
    hub.api.sim_door = None  # a hub that is not simulated
    rc, out, err = await lockerctl(hub.sock, "sim", "door", "A01", "open")
    assert (rc, out) == (1, "")
    assert "this hub is not simulated" in err
    rc, out, err = await lockerctl(hub.sock, "sim", "stall", "0.01")
    assert rc == 1


async def test_sim_door_returns_once_the_hub_saw_it_and_says_when_nothing_changed(
    hub: SimHub,
) -> None:
    hub.reserve("P1", d.Size.M, "11112222", "33334444")
    hub.reserve("P2", d.Size.S, "55556666", "77778888")
    rc, out, _ = await lockerctl(hub.keypad, "enter-code", "11112222")
    assert rc == 0
    label = out.split("[")[1].split("]")[0]
    rc, out, err = await lockerctl(hub.sock, "sim", "door", label, "close")
    assert rc == 0, err
    assert out == f"a person shuts {label}; the hub saw it shut: {label} is occupied (parcel P1)\n"
    assert hub.parcel("P1") is d.ParcelState.STORED  # at once: no moment to wait
    rc, out, err = await lockerctl(hub.sock, "sim", "door", label, "close")
    assert (rc, out, err) == (0, f"{label} is already shut\n", "")
    # the pickup code right after the shut door: opened, not a wrong guess
    rc, out, _ = await lockerctl(hub.keypad, "enter-code", "33334444")
    assert (rc, out.split(":")[0]) == (0, f"opened [{label}]")
    rc, out, _ = await lockerctl(hub.sock, "sim", "door", label, "open")
    assert (rc, out) == (0, f"{label} is already open\n")
    hub.api.sim_seen_within_s = 0.2
    hub.board.faults.dead = True  # nobody can see A01 move now
    rc, out, err = await lockerctl(hub.sock, "sim", "door", "A01", "open")
    assert (rc, out) == (1, "")
    assert err.startswith(
        "lockerctl: not_seen: a person opens A01, but the hub did not see it open within 0.2 s"
    )


# ======================================================================================
# What it prints
# ======================================================================================


async def test_empty_lists_say_so(hub: SimHub) -> None:
    for args, said in [
        (("parcels",), "no parcels"),
        (("parcels", "--state", "stored", "--size", "M"), "no parcels (stored, size M)"),
        (("expired",), "no expired parcels"),
        (("alarms",), "no open alarms"),
        (("quarantine",), "no message set aside"),
        (("empty-expired",), "no expired parcels"),
        (("outbox",), None),  # (the hub's start may have queued something)
    ]:
        rc, out, err = await lockerctl(hub.sock, *args)
        assert rc == 0, (args, err)
        assert err == "", args
        if said is not None:
            assert out == said + "\n", args
    rc, out, _ = await lockerctl(hub.sock, "audit", "--since", "2999-01-01")
    assert (rc, out) == (0, "no audit lines since 2999-01-01 00:00:00\n")
    rc, out, _ = await lockerctl(hub.sock, "events", "--since", "2999-01-01")
    assert (rc, out) == (0, "no events since 2999-01-01 00:00:00\n")
    for args in (("parcels",), ("expired",), ("events",)):
        rc, out, _ = await lockerctl(hub.sock, "--json", *args)
        assert (rc, json.loads(out)) == (0, []), args


async def test_status_reads_as_words_with_a_summary_and_one_compartment_in_detail(
    hub: SimHub,
) -> None:
    label = await stored(hub, "P1", d.Size.M, "11112222", "33334444")
    await hub.service.set_service("A04", False, actor="tech:test")
    await hub.service.record(
        d.Change(events=(d.Event("forced_open", {"compartment": "A01"}),)),
        actor="monitor",
        target="A01",
    )
    hub.board.open_door(1)
    await until_result(
        lambda: hub.service.run_db(hub.store.compartment, "A01"),
        lambda c: c is not None and c.door_open,
    )
    rc, out, err = await lockerctl(hub.sock, "status")
    assert rc == 0, err
    assert no_trailing_spaces(out)
    lines = out.splitlines()
    assert lines[0].split() == ["LABEL", "SIZE", "STATE", "DOOR_OPEN", "PARCEL"]
    rows = {line.split()[0]: line.split() for line in lines[1:5]}
    assert rows["A01"][3] == "yes"  # words, not True/False
    assert rows[label] == [label, "M", "occupied", "no", "P1"]
    assert rows["A04"][2:4] == ["out", "of"]  # out of service, spelled out
    assert "free: S 0/1, M 1/2, XL 0/1; unreachable: 0; out of service: 1; open alarms: 1" in lines
    assert f"forced_open  A01     {local(START)}" in out  # raised at, a local time
    assert "True" not in out
    assert "False" not in out

    rc, out, err = await lockerctl(hub.sock, "status", label)
    assert rc == 0, err
    assert no_trailing_spaces(out)
    assert out.splitlines()[0] == f"compartment {label}"
    assert "  door    shut" in out
    assert f"board kerong-cu48@0, channel {label[1:].lstrip('0')}" in out
    until = local(START + 3600)
    assert f"  parcel  P1 (delivery, M, stored, collect until {until})" in out
    rc, out, _ = await lockerctl(hub.sock, "status", "A01", "--json")
    detail = json.loads(out)
    assert detail["compartment"]["door_open"] is True
    assert [a["type"] for a in detail["alarms"]] == ["forced_open"]


async def test_status_counts_compartments_it_cannot_reach_apart(hub: SimHub) -> None:
    rc, out, err = await lockerctl(hub.sock, "sim", "bus", "A", "dead")
    assert rc == 0, err
    await until_result(
        hub.service.alarms, lambda a: [x["type"] for x in a] == ["board_offline"], within=10
    )
    rc, out, err = await lockerctl(hub.sock, "status")
    assert rc == 0, err
    assert no_trailing_spaces(out)
    lines = out.splitlines()
    assert "free: S 0/1, M 0/2, XL 0/1; unreachable: 4; out of service: 0; open alarms: 1" in lines
    rows = {line.split()[0]: line.split() for line in lines[1:5]}
    assert rows["A01"] == ["A01", "S", "unreachable", "(free)", "?", "-"]  # door unknown
    assert not any(" free " in f" {line} " for line in lines[1:5])
    rc, out, err = await lockerctl(hub.sock, "status", "A01")
    assert rc == 0, err
    assert no_trailing_spaces(out)
    assert "  state   free (as last seen: its board does not answer)" in out
    assert "  door    shut (as last seen: its board does not answer)" in out
    board = next(line for line in out.splitlines() if line.startswith("  board "))
    assert board.startswith("  board   OFFLINE: ")
    assert re.search(r"^  alarm   \d+ board_offline of board kerong-cu48@0, raised ", out, re.M)
    rc, out, err = await lockerctl(hub.sock, "sim", "bus", "A", "alive")
    assert rc == 0, err
    await until_result(hub.service.alarms, lambda a: a == [], within=10, what="board back")
    rc, out, _ = await lockerctl(hub.sock, "status", "A01")
    assert "  board   online\n" in out
    assert "as last seen" not in out


async def test_status_filters_by_state_and_size(hub: SimHub) -> None:
    label = await stored(hub, "P1", d.Size.M, "11112222", "33334444")
    other = "A03" if label == "A02" else "A02"
    await hub.service.set_service("A04", False, actor="tech:test")

    async def listed(*args: str) -> list[str]:
        rc, out, err = await lockerctl(hub.sock, "status", *args)
        assert rc == 0, err
        table = out.split("\n\n")[0].splitlines()
        return [line.split()[0] for line in table[1:]] if table[0].startswith("LABEL") else []

    assert await listed("--state", "free") == ["A01", other]
    assert await listed("--state", "free", "--size", "M") == [other]
    assert await listed("--state", "occupied", "--state", "out_of_service") == [label, "A04"]
    assert await listed("--size", "XL", "--size", "S") == ["A01", "A04"]
    rc, out, _ = await lockerctl(hub.sock, "status", "--state", "attention")
    assert rc == 0
    assert out.startswith("no compartments (attention)\n\nfree: S 1/1, M 1/2, XL 0/1;")
    rc, out, _ = await lockerctl(hub.sock, "--json", "status", "--size", "S")
    assert rc == 0
    assert [c["label"] for c in json.loads(out)["compartments"]] == ["A01"]


async def test_parcels_show_collect_until_as_a_local_time_and_filter(hub: SimHub) -> None:
    label = await stored(hub, "P1", d.Size.M, "11112222", "33334444")
    hub.reserve("P2", d.Size.S, "55556666", "77778888")
    rc, out, err = await lockerctl(hub.sock, "parcels")
    assert rc == 0, err
    assert no_trailing_spaces(out)
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "KIND", "SIZE", "STATE", "COMPARTMENT", "COLLECT_UNTIL"]
    p1 = next(line for line in lines if line.startswith("P1"))
    assert p1.split()[:5] == ["P1", "delivery", "M", "stored", label]
    assert p1.endswith(local(START + 3600))
    p2 = next(line for line in lines if line.startswith("P2"))
    assert p2.split() == ["P2", "delivery", "S", "reserved", "-", "-"]
    rc, out, _ = await lockerctl(hub.sock, "parcels", "--state", "reserved")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["P2"]
    rc, out, _ = await lockerctl(hub.sock, "parcels", "--size", "M", "--size", "XL")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["P1"]
    rc, out, _ = await lockerctl(hub.sock, "--json", "parcels", "--state", "stored", "--size", "S")
    assert json.loads(out) == []
    rc, _, err = await lockerctl(hub.sock, "parcels", "--state", "lost")
    assert rc == 2
    assert "invalid choice" in err


async def test_bus_is_a_table(hub: SimHub) -> None:
    rc, out, err = await lockerctl(hub.sock, "bus")
    assert rc == 0, err
    assert no_trailing_spaces(out)
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["BUS", "PORT", "OPEN", "SILENT"]
    assert lines[1].split()[0] == "A"
    assert lines[1].split()[2:4] == ["yes", "no"]
    boards = lines[lines.index("") + 1 :]
    assert boards[0].split()[:3] == ["BUS", "BOARD", "ONLINE"]
    assert boards[1].split()[:3] == ["A", "kerong-cu48@0", "yes"]
    assert "{" not in out


@dataclass
class Portless:
    """A real hub (no simulator) whose one bus is on an adapter never plugged in."""

    sock: Path  # its technician socket
    port: Path  # the adapter's path, which does not exist


@pytest.fixture
async def portless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Portless]:
    """Two S compartments on a board of a bus whose port never opened; the door monitor
    runs (so the board_offline alarm is raised)."""
    monkeypatch.setattr(wiring, "OPEN_WAIT_S", 0.2)
    run = Path(tempfile.mkdtemp(prefix="lk-"))
    port = tmp_path / "usb-adapter-A"
    cfg = HubConfig.model_validate(
        {
            "hub_id": "test-hub",
            "buses": [
                {
                    "name": "A",
                    "port": str(port),
                    **FAST_BUS,
                    "boards": [{"kind": "kerong-cu48", "address": 0, "channels": 2}],
                }
            ],
            "compartments": [
                {"label": f"A0{ch}", "size": "S", "bus": "A", "board": 0, "channel": ch}
                for ch in (1, 2)
            ],
            "timers": {"poll_interval_s": 0.05},
            "paths": {
                "state_dir": str(tmp_path / "hub"),
                "socket": str(run / "api.sock"),
                "technician_group": None,
                "disk_reserve_mb": 0,
            },
        }
    )
    create_key(cfg.key_path())
    try:
        async with open_hub(cfg) as real:
            monitor = asyncio.create_task(real.monitor.run())
            try:
                await until_result(
                    real.service.alarms, bool, within=10, what="the board_offline alarm"
                )
                yield Portless(Path(cfg.paths.socket), port)
            finally:
                monitor.cancel()
                await asyncio.gather(monitor, return_exceptions=True)
    finally:
        shutil.rmtree(run, ignore_errors=True)


async def test_a_hub_whose_port_never_opened_says_so_once(portless: Portless) -> None:
    """Its compartments are unreachable, not free; status LABEL says why; the bus table
    names the bus once."""
    sock, port = portless.sock, portless.port
    rc, out, err = await lockerctl(sock, "status")
    assert rc == 0, err
    assert "free: S 0/2; unreachable: 2;" in out
    assert out.splitlines()[1].split()[:4] == ["A01", "S", "unreachable", "(free)"]
    rc, out, err = await lockerctl(sock, "status", "A01")
    assert rc == 0, err
    assert f"  board   OFFLINE: port {port} not open: " in out
    assert "board_offline of board kerong-cu48@0" in out
    rc, out, err = await lockerctl(sock, "bus")
    assert rc == 0, err
    assert f"\n  bus A: cannot open {port}: " in out
    assert "bus A: bus A:" not in out


async def test_the_why_of_an_open_on_a_port_never_opened_names_the_port_once(
    portless: Portless,
) -> None:
    rc, out, err = await lockerctl(portless.sock, "open", "A01", "--reason", "check")
    assert rc == 1, err
    why = next(line for line in out.splitlines() if line.startswith("  why: "))
    assert "not open" in why
    assert "No such file or directory" in why  # the OS's words
    assert why.count(str(portless.port)) == 1, why


async def test_a_technician_sees_the_real_reason_and_a_keypad_never_does(
    hub: SimHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    told = Outcome(
        "refused",
        "This compartment cannot be opened now.",
        "A01",
        detail="the door of A01 stands open already",
    )

    async def refused(*args: Any, **kwargs: Any) -> Outcome:
        return told

    monkeypatch.setattr(hub.service, "open_compartment", refused)
    monkeypatch.setattr(hub.service, "enter_code", refused)
    rc, out, _ = await lockerctl(hub.sock, "open", "A01", "--reason", "check")
    assert rc == 1
    assert out == (
        "refused [A01]: This compartment cannot be opened now.\n"
        "  why: the door of A01 stands open already\n"
    )
    technician = await call(hub.sock, {"op": "enter_code", "code": "12345678"})
    assert technician["result"]["detail"] == "the door of A01 stands open already"
    keypad = await call(hub.keypad, {"op": "enter_code", "code": "12345678"})
    assert "detail" not in keypad["result"]
    assert "stands open" not in json.dumps(keypad)
    rc, out, _ = await lockerctl(hub.keypad, "enter-code", "12345678")
    assert out == "refused [A01]: This compartment cannot be opened now.\n"


# ======================================================================================
# The hub's history, its audit trail, alarms
# ======================================================================================


async def test_events_are_a_local_history_that_outlives_delivery(hub: SimHub) -> None:
    await stored(hub, "P1", d.Size.M, "11112222", "33334444")
    await hub.service.set_service("A04", False, actor="tech:test")
    every = await hub.service.run_db(hub.store.history, limit=1000)
    # the cloud had all of them: the outbox is empty
    hub.store.delete_outbox(r.seq for r in hub.store.outbox(limit=10_000))
    rc, out, _ = await lockerctl(hub.sock, "outbox")
    assert (rc, out) == (0, "no events waiting for the cloud\n")

    rc, out, err = await lockerctl(hub.sock, "events", "--tail", "100")
    assert rc == 0, err
    assert err == ""  # nothing left out
    assert no_trailing_spaces(out)
    lines = out.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "TYPE", "BY", "DATA"]
    seqs = [int(line.split()[0]) for line in lines[1:]]
    assert seqs == sorted((r.seq for r in every), reverse=True)  # newest first
    first = lines[1].split()
    assert first[1:5] == [*local(START).split(), "compartment_service", "tech:test"]
    assert "in_service=false" in lines[1]

    rc, out, err = await lockerctl(hub.sock, "events", "--tail", "2")
    assert [int(line.split()[0]) for line in out.splitlines()[1:]] == seqs[:2]
    assert err == "lockerctl: the 2 newest shown, older ones left out; --tail N for more\n"
    rc, out, err = await lockerctl(hub.sock, "--json", "events", "--tail", "3")
    assert [e["seq"] for e in json.loads(out)] == sorted(seqs[:3])  # as they happened
    assert "--tail N for more" in err
    rc, out, _ = await lockerctl(hub.sock, "events", "--type", "deposited", "--json")
    assert [e["type"] for e in json.loads(out)] == ["deposited"]
    rc, out, _ = await lockerctl(hub.sock, "events", "--since", local(START + 1))
    assert out == "no events since " + local(START + 1) + "\n"


async def test_events_leave_out_null_values(hub: SimHub) -> None:
    rc, out, err = await lockerctl(hub.sock, "open", "A01", "--reason", "clean")
    assert rc == 0, err
    rc, out, err = await lockerctl(hub.sock, "events")
    assert rc == 0, err
    opened = next(line for line in out.splitlines() if " door_opened " in line)
    assert opened.endswith("compartment=A01 purpose=service")  # no parcel=null
    assert "null" not in out
    rc, out, _ = await lockerctl(hub.sock, "--json", "events", "--type", "door_opened")
    assert json.loads(out)[0]["data"]["parcel"] is None  # the reply as it is


async def test_events_follow_prints_new_ones_as_ndjson(hub: SimHub) -> None:
    await hub.service.set_service("A04", False, actor="tech:test")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOCKERCTL,
        "events",
        "--follow",
        "--tail",
        "1",
        "--json",
        "--socket",
        str(hub.sock),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert first["type"] == "compartment_service"
        assert first["data"]["in_service"] is False
        for in_service in (True, False):
            await hub.service.set_service("A04", in_service, actor="tech:test")
        seen = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 20)) for _ in (1, 2)]
        assert [e["data"]["in_service"] for e in seen] == [True, False]  # oldest first
        assert [e["seq"] for e in seen] == [first["seq"] + 1, first["seq"] + 2]
    finally:
        proc.kill()
        await proc.wait()


async def test_audit_says_who_did_what_through_which_socket(hub: SimHub) -> None:
    hub.reserve("P1", d.Size.S, "24681357", "13572468")
    rc, _, _ = await lockerctl(hub.keypad, "enter-code", "24681357")
    assert rc == 0
    rc, _, _ = await lockerctl(hub.sock, "service", "A04", "out")
    assert rc == 0
    rc, out, err = await lockerctl(hub.sock, "audit")
    assert rc == 0, err
    assert no_trailing_spaces(out)
    lines = out.splitlines()
    assert lines[0].split() == ["AT", "ACTOR", "ACTION", "TARGET", "DETAIL"]
    assert lines[1].split()[:5] == [*local(START).split(), f"tech:{ME}", "service", "A04"]
    actors = {line.split()[2] for line in lines[1:]}
    assert {f"tech:{ME}", "keypad:1", "cloud"} <= actors
    rc, out, _ = await lockerctl(hub.sock, "audit", "--json", "--tail", "1")
    (line,) = json.loads(out)
    assert (line["actor"], line["action"], line["target"]) == (f"tech:{ME}", "service", "A04")


async def test_ack_all_acknowledges_every_open_alarm(hub: SimHub) -> None:
    for label in ("A01", "A02", "A03"):
        await hub.service.record(
            d.Change(events=(d.Event("forced_open", {"compartment": label}),)),
            actor="monitor",
            target=label,
        )
    assert len(await hub.service.alarms()) == 3
    rc, out, err = await lockerctl(hub.sock, "ack", "--all")
    assert rc == 0, (out, err)
    assert out.startswith("ok")
    assert await hub.service.alarms() == []
    rc, out, _ = await lockerctl(hub.sock, "alarms")
    assert out == "no open alarms\n"
    acks = [a for a in await hub.service.run_db(hub.store.audit) if a["action"] == "ack"]
    assert {a["actor"] for a in acks} == {f"tech:{ME}"}


# ======================================================================================
# Reservations at the hub
# ======================================================================================


async def test_a_reservation_made_at_the_hub_prints_its_codes_once(hub: SimHub) -> None:
    with capture_logs() as logs:
        rc, out, err = await lockerctl(
            hub.sock, "reserve", "M", "--parcel", "LOCAL-1", "--hours", "5"
        )
    assert rc == 0, err
    assert no_trailing_spaces(out)
    assert out.startswith("ok: parcel LOCAL-1 reserved")
    ((pid, size, deposit, pickup),) = PARCEL.findall(out)
    assert (pid, size, len(deposit), len(pickup)) == ("LOCAL-1", "M", 8, 8)
    assert "shown this once" in out
    for code in (deposit, pickup):
        assert code not in json.dumps(logs, default=str)  # never logged
        assert not stored_plain(Path(hub.hub.cfg.paths.state_dir), code)  # hashes only
    parcel = hub.store.parcel("LOCAL-1")
    assert parcel is not None
    assert (parcel.size, parcel.accessible, parcel.collect_window_s) == (d.Size.M, False, 5 * 3600)
    # the codes work at the keypad
    opened = await call(hub.keypad, {"op": "enter_code", "code": deposit})
    assert opened["result"]["status"] == "opened"
    audit = [(a["actor"], a["action"], a["target"]) for a in hub.store.audit(1000)]
    assert (f"tech:{ME}", "reserve", "LOCAL-1") in audit
    # again: the id is taken; nothing new is printed
    rc, out, _ = await lockerctl(hub.sock, "reserve", "S", "--parcel", "LOCAL-1")
    assert rc == 1
    assert PARCEL.findall(out) == []
    # without an id: a new one, and the hub's pickup window
    rc, out, _ = await lockerctl(hub.sock, "--json", "reserve", "S", "--accessible")
    reply = json.loads(out)
    assert reply["parcel"].startswith("L-")
    assert reply["pickup_window_h"] == 72
    assert reply["deposit_code"] != reply["pickup_code"]
    accessible = hub.store.parcel(reply["parcel"])
    assert accessible is not None
    assert accessible.accessible


async def test_cancel_a_reservation_at_the_hub(hub: SimHub) -> None:
    hub.reserve("P1", d.Size.S, "24681357", "13572468")
    rc, out, err = await lockerctl(hub.sock, "cancel", "P1")
    assert (rc, out) == (0, "ok: parcel P1 cancelled\n"), err
    assert hub.parcel("P1") is d.ParcelState.CANCELLED
    rc, out, _ = await lockerctl(hub.sock, "cancel", "P2")
    assert rc == 1
    assert out.startswith("refused: no parcel P2")
    audit = [(a["actor"], a["action"], a["target"]) for a in hub.store.audit(1000)]
    assert (f"tech:{ME}", "cancel", "P1") in audit


async def test_reserve_and_cancel_are_the_technicians_only(hub: SimHub) -> None:
    for request in (
        {"op": "reserve", "size": "M"},
        {"op": "cancel", "parcel": "P1"},
        {"op": "audit"},
        {"op": "events"},
        {"op": "outbox"},
        {"op": "ack_all"},
    ):
        reply = await call(hub.keypad, request)
        assert reply["error"]["type"] == "forbidden", request
    assert hub.store.parcels() == []
    rc, out, err = await lockerctl(hub.keypad, "reserve", "M")
    assert (rc, out) == (1, "")
    assert err.startswith("lockerctl: forbidden: reserve is not allowed")
