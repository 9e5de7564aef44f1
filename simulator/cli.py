"""``lockerd-sim BOARD...``: lock boards on one simulated bus, served on a pty or TCP.

Prints the bus's device path (or ``tcp://HOST:PORT``) as the first line of stdout,
then serves until SIGINT/SIGTERM. With ``--control``, reads commands on stdin,
one per line, to play the people and the faults:

    open ADDR CH | close ADDR CH | parcel ADDR CH on|off
    fault ADDR dead|no-reply|corrupt-checksum|split-reply on|off
    fault ADDR late-reply SECONDS | fault ADDR garbage HEX | fault ADDR jammed|bouncing CH on|off
    clear ADDR | told ADDR | doors ADDR | stats | vanish | reappear | help

Each command gets one answer line (``ok``, ``error ...`` or what was asked), except
``help``, which answers with the list of commands and the boards on the line.
``doors`` answers each channel's door, ``1`` open, ``0`` shut (``0110...``).
``stats`` answers the line's counts, e.g. ``requests=12 replies=10 collisions=0
gap_violations=0 dropped=0``: a master that does not keep the half-duplex
discipline (a request on top of a reply, or too soon after one) shows up there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any, NoReturn

import structlog

from lockerd.logs import configure
from lockerd.simulator.boards import BOARD_TYPES, SimBoard, SimCu16
from lockerd.simulator.line import SimLine, Simulator, parse_board

log = structlog.get_logger(__name__)


HELP = """\
commands, one a line (ADDR: a board's address, CH: a channel from 1):
  open ADDR CH | close ADDR CH        a person opens or shuts a door
  parcel ADDR CH on|off               something is in the compartment, or not
  fault ADDR dead|no-reply|corrupt-checksum|split-reply on|off
  fault ADDR late-reply SECONDS       answers that come this late
  fault ADDR garbage HEX              noise around each answer (no HEX: none)
  fault ADDR jammed|bouncing CH on|off
  clear ADDR                          every fault of the board off
  told ADDR                           what the board was told
  doors ADDR                          each door, 1 open, 0 shut
  stats                               the line's counts (collisions, gap violations)
  vanish | reappear                   the adapter unplugged, and plugged back in
  help                                this list"""

BOARD_COMMANDS = ("open", "close", "parcel", "clear", "told", "doors", "fault")


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, e.g. 127.0.0.1:5020, got {value!r}")
    return host or "127.0.0.1", int(port)


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a line speed such as 9600, got {value!r}")
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"expected seconds (0 or more), got {value!r}")
    return number


def _link(value: str) -> str:
    parent = os.path.dirname(os.path.abspath(value))
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{parent} is not a directory, so no link {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """A usage error in one line, without the usage block (``--help`` has it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="lockerd-sim",
        description="Simulated lock boards sharing one bus, in their real wire protocols.",
    )
    p.add_argument(
        "boards",
        nargs="+",
        metavar="BOARD",
        help=f"KIND:ADDRESS[:CHANNELS], KIND one of {', '.join(BOARD_TYPES)}",
    )
    p.add_argument(
        "--tcp",
        metavar="HOST:PORT",
        type=_host_port,
        help="serve on TCP (a serial gateway) instead of a pty",
    )
    p.add_argument(
        "--baud", type=_positive, help="emulate this line speed (replies wait for their wire time)"
    )
    p.add_argument(
        "--link",
        metavar="PATH",
        type=_link,
        help="also make PATH a symlink to the pty (like /dev/serial/by-id)",
    )
    p.add_argument(
        "--spring-delay", type=_seconds, default=0.05, help="seconds from pulse to door open"
    )
    p.add_argument(
        "--cu16-answers-unlock",
        action="store_true",
        help="kerong-cu16 boards answer an unlock with their status frame (0x35)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="drop requests that collide with a reply on the line instead of answering them",
    )
    p.add_argument(
        "--control",
        action="store_true",
        help="read commands on stdin, one a line, to play the people and the faults "
        "(`help` lists them)",
    )
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return p


def _on_off(word: str) -> bool:
    if word not in ("on", "off"):
        raise ValueError(f"expected on|off, got {word!r}")
    return word == "on"


def _number(args: list[str], index: int, what: str) -> int:
    if index >= len(args):
        raise ValueError(f"{what} missing (help lists the commands)")
    try:
        return int(args[index], 0)
    except ValueError:
        raise ValueError(f"{what} is a number, not {args[index]!r}") from None


def _word(args: list[str], index: int, what: str) -> str:
    if index >= len(args):
        raise ValueError(f"{what} missing (help lists the commands)")
    return args[index]


def _boards(sim: Simulator) -> str:
    return "boards: " + ", ".join(f"{b.kind}@{b.address}" for b in sim.line.boards)


async def apply_command(sim: Simulator, line: str) -> str:
    """Run one control command; the answer (one line, but for ``help``)."""
    words = line.split()
    if not words:
        return ""
    cmd, args = words[0], words[1:]
    if cmd in ("help", "vanish", "reappear", "stats"):
        return await _line_command(sim, cmd)
    if cmd not in BOARD_COMMANDS:
        raise ValueError(f"unknown command {cmd!r}: help lists the commands")
    address = _number(args, 0, "ADDR")
    try:
        board: SimBoard = sim.board(address)
    except KeyError:
        raise ValueError(f"no board at address {address}; {_boards(sim)}") from None
    if cmd in ("open", "close"):
        (board.open_door if cmd == "open" else board.close_door)(_number(args, 1, "CH"))
    elif cmd == "parcel":
        board.put_parcel(_number(args, 1, "CH"), _on_off(_word(args, 2, "on|off")))
    elif cmd == "clear":
        board.faults.clear()
    elif cmd in ("doors", "told"):
        return _report(board, cmd)
    else:
        _apply_fault(board, _word(args, 1, "the fault"), args[2:])
    return "ok"


async def _line_command(sim: Simulator, cmd: str) -> str:
    """A command for the whole line, not one board."""
    if cmd == "help":
        return f"{HELP}\n{_boards(sim)}"
    if cmd == "vanish":
        sim.vanish()
        return "ok"
    if cmd == "reappear":
        return f"ok {await sim.reappear()}"
    return sim.stats.summary()


def _report(board: SimBoard, what: str) -> str:
    if what == "doors":
        return "".join("1" if is_open else "0" for is_open in board.doors_open)
    return " ".join(f"{t.command}:{t.channel}" for t in board.told) or "nothing"


def _apply_fault(board: SimBoard, name: str, rest: list[str]) -> None:
    f = board.faults
    if name in ("dead", "no-reply", "corrupt-checksum", "split-reply"):
        setattr(f, name.replace("-", "_"), _on_off(_word(rest, 0, "on|off")))
    elif name == "late-reply":
        try:
            f.late_reply_s = float(_word(rest, 0, "SECONDS"))
        except ValueError as exc:
            raise ValueError(f"late-reply SECONDS: {exc}") from None
    elif name == "garbage":
        f.garbage = bytes.fromhex(rest[0]) if rest else b""
    elif name in ("jammed", "bouncing"):
        channel = _number(rest, 0, "CH")
        if not 1 <= channel <= board.channels:
            raise ValueError(f"{board.kind}@{board.address}: no channel {channel}")
        chans: set[int] = getattr(f, name)
        (chans.add if _on_off(_word(rest, 1, "on|off")) else chans.discard)(channel)
    else:
        raise ValueError(
            f"unknown fault {name!r}: dead, no-reply, corrupt-checksum, split-reply, "
            "late-reply, garbage, jammed or bouncing"
        )


async def _control(sim: Simulator) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        try:
            answer = await apply_command(sim, line.decode(errors="replace"))
        except (ValueError, OSError) as exc:
            answer = f"error {exc}"
        if answer:
            print(answer, flush=True)


def build_boards(args: argparse.Namespace) -> list[SimBoard]:
    boards = []
    for spec in args.boards:
        kw: dict[str, Any] = {"spring_delay_s": args.spring_delay}
        if args.cu16_answers_unlock and spec.startswith(SimCu16.kind + ":"):
            kw["answers_unlock"] = True
        boards.append(parse_board(spec, **kw))
    return boards


async def serve(args: argparse.Namespace) -> None:
    boards = build_boards(args)
    sim = Simulator(
        boards,
        baudrate=args.baud or 19200,
        emulate_line_speed=args.baud is not None,
        strict=args.strict,
        tcp=args.tcp,
        link=args.link,
    )
    url = await sim.start()
    print(url, flush=True)
    log.info("sim_serving", url=url, boards=[repr(b) for b in boards])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    control = asyncio.create_task(_control(sim)) if args.control else None
    await stop.wait()
    if control is not None:
        control.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await control
    await sim.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(level=args.log_level, stream=sys.stderr)
    try:
        SimLine(build_boards(args))  # two boards of one protocol at one address
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(serve(args))
    except OSError as exc:  # the port taken, the link's directory missing, ...
        print(f"lockerd-sim: cannot serve: {_os_reason(exc)}", file=sys.stderr)
        return 1
    return 0


def _os_reason(exc: OSError) -> str:
    where = exc.filename2 if exc.filename2 is not None else exc.filename
    reason = exc.strerror or str(exc)
    return f"{reason}: {where}" if where is not None else reason


if __name__ == "__main__":
    sys.exit(main())
