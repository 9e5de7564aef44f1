"""lockerctl's commands are one table: every subcommand the parser offers has a row
(its request and its rendering), and every row a subcommand."""

from __future__ import annotations

import argparse

from lockerd.cli.ctl import COMMANDS, build_parser


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:  # argparse keeps its subparsers here
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("lockerctl has no subcommands")


def test_every_subcommand_has_a_row_and_every_row_a_subcommand() -> None:
    offered = _subcommands(build_parser()) - {"cloud"}  # the cloud player is its own tool
    assert offered == set(COMMANDS)


def test_each_row_builds_the_request_the_api_takes() -> None:
    parser = build_parser()
    cases = {
        ("status",): {"op": "status"},
        ("expired",): {"op": "parcels", "states": ["expired"]},
        ("service", "A05", "out"): {"op": "service", "label": "A05", "in_service": False},
        ("inspect", "A05", "parcel"): {"op": "inspect", "label": "A05", "holds_parcel": True},
        ("sim", "bus", "A", "dead"): {"op": "sim_bus", "bus": "A", "action": "dead"},
        ("ack", "7"): {"op": "ack", "id": 7},
        ("quarantine",): {"op": "quarantine"},
    }
    for argv, want in cases.items():
        args = parser.parse_args(list(argv))
        assert COMMANDS[args.command].request(args) == want, argv


def test_the_new_rows_build_their_requests() -> None:
    parser = build_parser()
    cases = {
        ("status", "A05"): {"op": "status", "label": "A05"},
        ("parcels", "--state", "stored", "--size", "M"): {
            "op": "parcels",
            "states": ["stored"],
            "sizes": ["M"],
        },
        ("events",): {"op": "events", "limit": 21},  # one more than shown: was it cut?
        ("events", "--tail", "5", "--type", "deposited", "--after", "9"): {
            "op": "events",
            "limit": 6,
            "types": ["deposited"],
            "after_seq": 9,
        },
        ("outbox",): {"op": "outbox", "limit": 100},
        ("audit", "--tail", "3"): {"op": "audit", "limit": 4},
        ("ack", "--all"): {"op": "ack_all"},
        ("reserve", "M"): {"op": "reserve", "size": "M", "accessible": False},
        ("reserve", "S", "--parcel", "P1", "--accessible", "--hours", "5"): {
            "op": "reserve",
            "size": "S",
            "parcel": "P1",
            "accessible": True,
            "hours": 5.0,
        },
        ("cancel", "P1"): {"op": "cancel", "parcel": "P1"},
        ("status", "--json"): {"op": "status"},  # a global option after the command
        ("status", "--state", "free", "--state", "attention", "--size", "M"): {
            "op": "status",
            "states": ["free", "attention"],
            "sizes": ["M"],
        },
    }
    for argv, want in cases.items():
        args = parser.parse_args(list(argv))
        assert COMMANDS[args.command].request(args) == want, argv
    since = parser.parse_args(["audit", "--since", "2024-05-01T14:30"])
    assert COMMANDS["audit"].request(since)["since"] == since.since
