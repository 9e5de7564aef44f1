"""``lockerd``: the daemon's command line.

lockerd demo [--once]            the hardware layer on the built-in simulator
lockerd check-config FILE        every problem of a hub config, with places and fixes
lockerd keygen PATH              a new code key (0600), never overwriting one
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lockerd.codes import KeyFileError, create_key
from lockerd.config import ConfigInvalid, load
from lockerd.hwdemo import main as demo_main


def _check_config(path: str) -> int:
    try:
        cfg = load(path)
    except ConfigInvalid as exc:
        print(exc.report(), file=sys.stderr)
        return 2
    boards = sum(len(b.boards) for b in cfg.buses)
    print(
        f"{path}: ok: hub {cfg.hub_id}, {len(cfg.buses)} bus(es), {boards} board(s), "
        f"{len(cfg.compartments)} compartments"
    )
    return 0


def _keygen(path: str) -> int:
    try:
        create_key(Path(path))
    except KeyFileError as exc:
        print(f"lockerd keygen: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: new code key written (mode 0600); the cloud needs the same key")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["demo"]:
        return demo_main(args[1:])
    parser = argparse.ArgumentParser(
        prog="lockerd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="the hardware layer on the built-in simulator")
    check = sub.add_parser("check-config", help="check a hub config file")
    check.add_argument("file")
    keygen = sub.add_parser("keygen", help="write a new code key file")
    keygen.add_argument("path")
    ns = parser.parse_args(args)
    if ns.command == "check-config":
        return _check_config(ns.file)
    return _keygen(ns.path)
