"""lockerd: the parcel-locker hub daemon.

lockerd run --config FILE        run a hub (systemd starts this)
lockerd demo                     the demo hub on the built-in simulator, with its keypad
lockerd demo --hardware [--once] the hardware layer alone on the built-in simulator
lockerd check-config FILE        every problem of a hub config (and of this machine for it),
                                 with places and fixes; warnings for risky settings
                                 (exit 0 ok, 1 warnings with --strict, 2 problems)
lockerd keygen PATH              a new code key (0600), never overwriting one; in an
                                 existing directory, or a new one (0700) inside one
lockerd --version                the installed version

lockerd COMMAND --help says more about each command.
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
from lockerd.logs import LEVELS, configure


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
    """A new code key at ``path``. Its directory is made (0700) only if the directory
    above it exists: a mistyped path is refused, never made up level by level."""
    key = Path(path)
    made = not key.parent.exists()
    if made and not key.parent.parent.exists():
        print(
            f"lockerd keygen: cannot write {path}: {key.parent.parent} does not exist "
            "(keygen makes at most the key's own directory: check the path)",
            file=sys.stderr,
        )
        return 1
    try:
        create_key(key)
    except KeyFileError as exc:
        print(f"lockerd keygen: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # no such directory and none can be made, no permission, ...
        print(f"lockerd keygen: cannot write {path}: {_os_reason(exc, path)}", file=sys.stderr)
        return 1
    where = f", in the new directory {key.parent} (mode 0700)" if made else ""
    print(f"{path}: new code key written (mode 0600){where}; the cloud needs the same key")
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

    parser = demo_parser()
    ns = parser.parse_args(args)
    if ns.once:
        parser.error("--once goes with --hardware (the hardware layer's scene)")
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


def demo_parser() -> argparse.ArgumentParser:
    """``lockerd demo``'s options (``--hardware`` and ``--once`` are read before it:
    the hardware layer's demo has a parser of its own)."""
    parser = _Parser(
        prog="lockerd demo",
        description="A demo hub on the built-in simulator (68 compartments), with its "
        "keypad: reserve, deposit and collect with lockerctl, no hardware needed. With "
        "--hardware: the hardware layer alone (a bus, boards, doors) plays a scene.",
    )
    parser.add_argument(
        "--hardware",
        action="store_true",
        help="the hardware layer alone on the built-in simulator (no hub, no keypad)",
    )
    parser.add_argument(
        "--once", action="store_true", help="with --hardware: play the scene once, then exit"
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="keep the hub here (resumed when run again); default: a throw-away hub in "
        "$XDG_RUNTIME_DIR/lockerd-demo (or /tmp/lockerd-demo), removed at Ctrl-C",
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="the technician's API socket (default: api.sock in the state directory)",
    )
    parser.add_argument(
        "--terminal-socket",
        metavar="PATH",
        help="the keypad's socket, terminal keypad:1 (default: terminal.sock in the state "
        "directory)",
    )
    _log_level(parser)
    parser.add_argument(
        "--mqtt",
        metavar="URL",
        help="connect to the cloud's broker: mqtt://HOST:PORT or mqtts://; the demo then "
        "also makes the cloud's keys for lockerctl cloud (in STATE_DIR/keys)",
    )
    parser.add_argument("--mqtt-ca", metavar="FILE", help="CA file of the broker (mqtts)")
    parser.add_argument("--mqtt-cert", metavar="FILE", help="this hub's client certificate (mqtts)")
    parser.add_argument("--mqtt-key", metavar="FILE", help="this hub's client key (mqtts)")
    parser.add_argument(
        "--mqtt-username", metavar="NAME", help="this hub's user name on the broker"
    )
    parser.add_argument(
        "--mqtt-password-file",
        metavar="FILE",
        help="a file holding that user's password (with --mqtt-username)",
    )
    parser.add_argument(
        "--hub-id",
        metavar="ID",
        help="the hub's id; default: demo-hub, or a new demo-XXXXXX with --mqtt",
    )
    return parser


def _log_level(parser: argparse.ArgumentParser, default: str = "warning") -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=list(LEVELS),
        help=f"the least severe log lines shown, on stderr: {', '.join(LEVELS)} "
        f"(default: {default})",
    )


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


def parser() -> argparse.ArgumentParser:
    """``lockerd``'s options and commands (``demo``'s own: :func:`demo_parser`)."""
    top = _Parser(
        prog="lockerd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    top.add_argument(
        "--version",
        action="version",
        version=f"lockerd {__version__}",
        help="print the installed version and exit",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "demo",
        help="the demo hub on the built-in simulator (lockerd demo --help for its options)",
    )
    run = sub.add_parser(
        "run",
        help="run a hub",
        description="Run a hub from its config file, in the foreground (systemd starts "
        "this: systemd/lockerd.service). Check the file first with lockerd check-config.",
    )
    run.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="the hub's config file (TOML), e.g. /etc/lockerd/hub.toml "
        "(config/example-hub.toml is a commented example)",
    )
    check = sub.add_parser(
        "check-config",
        help="check a hub config file, and this machine for it",
        description="Every problem that would stop lockerd run (the config's settings, "
        "its parts against each other, the key file, the state and socket directories, "
        "the groups) and warnings for risky settings, each with its place and a fix. "
        "Exit status: 0 ok, 1 warnings with --strict, 2 problems.",
    )
    check.add_argument("file", help="the hub's config file (TOML)")
    check.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    keygen = sub.add_parser(
        "keygen",
        help="write a new code key file",
        description="Write a new random code key (32 bytes, mode 0600). An existing file "
        "is never overwritten: a new key makes every live code useless. The key's "
        "directory is made (0700) if the one above it exists.",
    )
    keygen.add_argument(
        "path", help="where to write it: the config's codes.key_file, e.g. keys/code-hmac.key"
    )
    return top


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["demo"]:
        return _demo(args[1:])
    ns = parser().parse_args(args)
    if ns.command == "check-config":
        return _check_config(ns.file, strict=ns.strict)
    if ns.command == "run":
        return _run(ns.config)
    return _keygen(ns.path)
