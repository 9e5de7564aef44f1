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
