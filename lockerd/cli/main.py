"""``lockerd``: the daemon's command line.

lockerd run --config FILE        run a hub (systemd starts this)
lockerd demo                     the demo hub on the built-in simulator, with its keypad
lockerd demo --hardware [--once] the hardware layer alone on the built-in simulator
lockerd check-config FILE        every problem of a hub config (and of this machine for it),
                                 with places and fixes; warnings for risky settings
                                 (exit 0 ok, 1 warnings with --strict, 2 problems)
lockerd keygen PATH              a new code key (0600), never overwriting one
lockerd --version                the installed version
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from lockerd import __version__
from lockerd.config import Cloud, ConfigInvalid, check_file, load
from lockerd.daemon.serve import run_hub
from lockerd.errors import LockerdError
from lockerd.hub.codes import KeyFileError, create_key
from lockerd.logs import configure


class _Parser(argparse.ArgumentParser):
    """A usage error in one line, without the usage block (``--help`` has it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _check_config(path: str, *, strict: bool) -> int:
    """Everything ``lockerd run`` would refuse or crash on, at once (2), and the risky
    settings it would run with (warnings: 0, or 1 with ``strict``)."""
    checked = check_file(path)
    if checked.problems or checked.warnings:
        print(checked.report(), file=sys.stderr)
    cfg = checked.cfg
    if cfg is None:
        return 2
    boards = sum(len(b.boards) for b in cfg.buses)
    warned = len(checked.warnings)
    print(
        f"{path}: ok: hub {cfg.hub_id}, {len(cfg.buses)} bus(es), {boards} board(s), "
        f"{len(cfg.compartments)} compartments" + (f"; {warned} warning(s) above" if warned else "")
    )
    return 1 if strict and warned else 0


def _os_reason(exc: OSError, path: str) -> str:
    """An OS error in a few words: what, and where when that is not ``path`` itself."""
    where = str(exc.filename) if exc.filename is not None else path
    if isinstance(exc, FileExistsError | NotADirectoryError) and where != path:
        return f"{where} is not a directory"
    reason = exc.strerror or str(exc)
    return reason if where == path else f"{reason}: {where}"


def _keygen(path: str) -> int:
    try:
        create_key(Path(path))
    except KeyFileError as exc:
        print(f"lockerd keygen: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # no such directory and none can be made, no permission, ...
        print(f"lockerd keygen: cannot write {path}: {_os_reason(exc, path)}", file=sys.stderr)
        return 1
    print(f"{path}: new code key written (mode 0600); the cloud needs the same key")
    return 0


def _demo(args: list[str]) -> int:
    # the demo (and the simulator under it) only when asked for: `lockerd run` never
    # loads them (tests/test_layout.py)
    if "--hardware" in args:
        from lockerd.demo.hardware import main as demo_main  # noqa: PLC0415

        try:
            return demo_main([a for a in args if a != "--hardware"])
        except LockerdError as exc:
            print(f"lockerd demo: {exc}", file=sys.stderr)
            return 1
    from lockerd.demo.scene import run_demo  # noqa: PLC0415

    parser = _Parser(prog="lockerd demo")
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="keep the hub here (resumed when run again); default: a throw-away hub in "
        "$XDG_RUNTIME_DIR/lockerd-demo (or /tmp/lockerd-demo), removed at Ctrl-C",
    )
    parser.add_argument(
        "--socket", help="the technician's API socket (default: api.sock in the state directory)"
    )
    parser.add_argument(
        "--terminal-socket",
        metavar="PATH",
        help="the keypad's socket, terminal keypad:1 (default: terminal.sock in the state "
        "directory)",
    )
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--mqtt", metavar="URL", help="connect to the cloud's broker: mqtt://HOST:PORT or mqtts://"
    )
    parser.add_argument("--mqtt-ca", help="CA file of the broker (mqtts)")
    parser.add_argument("--mqtt-cert", help="this hub's client certificate (mqtts)")
    parser.add_argument("--mqtt-key", help="this hub's client key (mqtts)")
    parser.add_argument("--mqtt-username")
    parser.add_argument("--mqtt-password-file")
    parser.add_argument("--hub-id", help="default: demo-hub, or a new demo-XXXXXX with --mqtt")
    ns = parser.parse_args(args)
    configure(level=ns.log_level, stream=sys.stderr)
    cloud = None
    if ns.mqtt:
        try:
            cloud = Cloud(
                url=ns.mqtt,
                ca_file=ns.mqtt_ca,
                cert_file=ns.mqtt_cert,
                key_file=ns.mqtt_key,
                username=ns.mqtt_username,
                password_file=ns.mqtt_password_file,
            )
        except ValidationError as exc:
            print(f"lockerd demo: bad --mqtt options: {exc}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(
            run_demo(
                ns.state_dir,
                ns.socket,
                cloud=cloud,
                hub_id=ns.hub_id,
                terminal_socket=ns.terminal_socket,
            )
        )
    except LockerdError as exc:
        print(f"lockerd demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the demo served (it cleaned up)
        return 130


def _run(path: str) -> int:
    configure(level="info")
    try:
        cfg = load(path)
    except ConfigInvalid as exc:
        print(exc.report(), file=sys.stderr)
        return 2
    try:
        ports = None
        if cfg.simulated:  # a hub without hardware (tests, demos) runs on the simulator
            from lockerd.demo.ports import SimulatedPorts  # noqa: PLC0415

            ports = SimulatedPorts()
        return asyncio.run(run_hub(cfg, ports))
    except LockerdError as exc:  # said for a technician: no traceback
        print(f"lockerd: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["demo"]:
        return _demo(args[1:])
    parser = _Parser(
        prog="lockerd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"lockerd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="the demo hub on the built-in simulator")
    run = sub.add_parser("run", help="run a hub")
    run.add_argument("--config", required=True)
    check = sub.add_parser(
        "check-config",
        help="check a hub config file, and this machine for it",
        description="Every problem that would stop `lockerd run` (the config's settings, "
        "its parts against each other, the key file, the state and socket directories, "
        "the groups) and warnings for risky settings, each with its place and a fix. "
        "Exit status: 0 ok, 1 warnings with --strict, 2 problems.",
    )
    check.add_argument("file")
    check.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    keygen = sub.add_parser("keygen", help="write a new code key file")
    keygen.add_argument("path")
    ns = parser.parse_args(args)
    if ns.command == "check-config":
        return _check_config(ns.file, strict=ns.strict)
    if ns.command == "run":
        return _run(ns.config)
    return _keygen(ns.path)
