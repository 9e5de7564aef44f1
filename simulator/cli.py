"""``lockerd-sim BOARD...``: lock boards on one simulated bus, served on a pty or TCP.

Prints the bus's device path (or ``tcp://HOST:PORT``) as the first line of stdout,
then serves until SIGINT/SIGTERM. With ``--control``, reads commands on stdin,
one per line, to play the people and the faults:

    open ADDR CH | close ADDR CH | parcel ADDR CH on|off
    fault ADDR dead|no-reply|corrupt-checksum|split-reply on|off
    fault ADDR late-reply SECONDS | fault ADDR garbage HEX | fault ADDR jammed|bouncing CH on|off
    clear ADDR | told ADDR | doors ADDR | stats | vanish | reappear

``doors`` answers each channel's door, ``1`` open, ``0`` shut (``0110...``).
``stats`` answers the line's counts, e.g. ``requests=12 replies=10 collisions=0
gap_violations=0 dropped=0``: a master that does not keep the half-duplex
discipline (a request on top of a reply, or too soon after one) shows up there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

import structlog

from lockerd.logs import configure
from lockerd.simulator.boards import BOARD_TYPES, SimBoard, SimCu16
from lockerd.simulator.line import Simulator, parse_board

log = structlog.get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
        "--tcp", metavar="HOST:PORT", help="serve on TCP (a serial gateway) instead of a pty"
    )
    p.add_argument(
        "--baud", type=int, help="emulate this line speed (replies wait for their wire time)"
    )
    p.add_argument(
        "--link",
        metavar="PATH",
        help="also make PATH a symlink to the pty (like /dev/serial/by-id)",
    )
    p.add_argument(
        "--spring-delay", type=float, default=0.05, help="seconds from pulse to door open"
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
    p.add_argument("--control", action="store_true", help="read scripting commands on stdin")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return p


def _on_off(word: str) -> bool:
    if word not in ("on", "off"):
        raise ValueError(f"expected on|off, got {word!r}")
    return word == "on"


async def apply_command(sim: Simulator, line: str) -> str:
    """Run one control command; the answer line."""
    words = line.split()
    if not words:
        return ""
    cmd, args = words[0], words[1:]
    if cmd == "vanish":
        sim.vanish()
        return "ok"
    if cmd == "reappear":
        return f"ok {await sim.reappear()}"
    if cmd == "stats":
        return sim.stats.summary()
    board: SimBoard = sim.board(int(args[0], 0))
    if cmd in ("open", "close"):
        (board.open_door if cmd == "open" else board.close_door)(int(args[1]))
    elif cmd == "parcel":
        board.put_parcel(int(args[1]), _on_off(args[2]))
    elif cmd == "clear":
        board.faults.clear()
    elif cmd in ("doors", "told"):
        return _report(board, cmd)
    elif cmd == "fault":
        _apply_fault(board, args[1], args[2:])
    else:
        raise ValueError(f"unknown command {cmd!r}")
    return "ok"


def _report(board: SimBoard, what: str) -> str:
    if what == "doors":
        return "".join("1" if is_open else "0" for is_open in board.doors_open)
    return " ".join(f"{t.command}:{t.channel}" for t in board.told) or "nothing"


def _apply_fault(board: SimBoard, name: str, rest: list[str]) -> None:
    f = board.faults
    if name in ("dead", "no-reply", "corrupt-checksum", "split-reply"):
        setattr(f, name.replace("-", "_"), _on_off(rest[0]))
    elif name == "late-reply":
        f.late_reply_s = float(rest[0])
    elif name == "garbage":
        f.garbage = bytes.fromhex(rest[0]) if rest else b""
    elif name in ("jammed", "bouncing"):
        chans: set[int] = getattr(f, name)
        (chans.add if _on_off(rest[1]) else chans.discard)(int(rest[0]))
    else:
        raise ValueError(f"unknown fault {name!r}")


async def _control(sim: Simulator) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        try:
            answer = await apply_command(sim, line.decode())
        except (ValueError, KeyError, IndexError) as exc:
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
    tcp = None
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        tcp = (host or "127.0.0.1", int(port))
    sim = Simulator(
        boards,
        baudrate=args.baud or 19200,
        emulate_line_speed=args.baud is not None,
        strict=args.strict,
        tcp=tcp,
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
        for spec in args.boards:
            parse_board(spec)
    except ValueError as exc:
        parser.error(str(exc))
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
