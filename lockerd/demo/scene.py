"""``lockerd demo``: the demo hub (``demo-hub.toml``, shipped with the package) on the
built-in simulator, with sample parcels on a fresh hub and the lines a newcomer needs
to play it: the keypad's socket, the technician's socket and what to type.

A demo without ``--state-dir`` keeps its hub in one stable place,
``$XDG_RUNTIME_DIR/lockerd-demo`` (``/tmp/lockerd-demo`` without a runtime directory),
so the README's commands reach it by name; Ctrl-C throws that directory away, and
what a killed demo left there is cleared by the next one. A second demo on the same
directory is refused with what to do instead. With ``--state-dir DIR`` the hub is
kept, and running the demo again on DIR resumes it: it lists its parcels then.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from lockerd.config import Cloud, HubConfig, parse
from lockerd.daemon.serve import serve
from lockerd.daemon.wiring import Hub, open_hub
from lockerd.demo.ports import SimulatedPorts
from lockerd.errors import LockerdError
from lockerd.hub import domain as d
from lockerd.hub.codes import new_code
from lockerd.logs import bind
from lockerd.ops.instance import AlreadyRunning, StateLock
from lockerd.ops.sdnotify import Notifier

DEMO_TERMINAL = "keypad:1"  # the demo's keypad, on its terminal socket
DEMO_DIR = "lockerd-demo"  # the throw-away demo's directory, in the runtime directory
THROWAWAY_MARK = ".lockerd-demo-throwaway"  # in it: what may be cleared without asking

Say = Callable[[str], None]


class DemoBusy(LockerdError):
    """The demo's state directory is another demo's, or not a demo's to clear."""


def demo_hub_toml() -> str:
    """The demo hub's config, as shipped in the package."""
    return resources.files("lockerd.demo").joinpath("demo-hub.toml").read_text(encoding="utf-8")


def default_state_dir() -> Path:
    """Where a demo without ``--state-dir`` keeps its hub: ``$XDG_RUNTIME_DIR/lockerd-demo``,
    or ``/tmp/lockerd-demo`` (the README names it as ``${XDG_RUNTIME_DIR:-/tmp}/lockerd-demo``)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK | os.X_OK):
        return Path(runtime) / DEMO_DIR
    return Path("/tmp") / DEMO_DIR  # noqa: S108 - checked below: ours, not a link


def _holder(state: Path) -> int | None:
    """The pid of the daemon that holds ``state`` (0 if unknown); None if none does."""
    if not state.is_dir():
        return None
    lock = StateLock(state)
    try:
        lock.acquire()
    except AlreadyRunning:
        with contextlib.suppress(OSError, ValueError):
            return int((state / "lockerd.pid").read_text().strip() or 0)
        return 0
    except PermissionError:
        raise DemoBusy(
            f"{state} is not this user's: start the demo with --state-dir DIR "
            "(a directory of your own)"
        ) from None
    lock.release()
    return None


def claim_state_dir(state: Path, *, throwaway: bool) -> str | None:
    """Make ``state`` this demo's: refused (:class:`DemoBusy`, saying what to do) while
    another demo runs on it; a throw-away directory that a killed demo left behind is
    cleared. Returns a line to print about it, or None."""
    pid = _holder(state)
    if pid is not None:
        who = f"pid {pid}" if pid else "another process"
        where = (
            f"its keypad is {state / 'terminal.sock'}, its technician socket {state / 'api.sock'}"
            if throwaway
            else "it printed its sockets"
        )
        running = "another lockerd demo is" if throwaway else "lockerd is already"
        raise DemoBusy(
            f"{running} running on {state} ({who}). Play that one ({where}), "
            "stop it with Ctrl-C in its terminal, or start this one beside it with its "
            "own directory: lockerd demo --state-dir DIR"
        )
    if not throwaway:
        return None
    note = None
    if state.is_symlink() or (state.exists() and state.stat().st_uid != os.geteuid()):
        raise DemoBusy(f"{state} is not this user's: start the demo with --state-dir DIR")
    if state.exists():
        if not (state / THROWAWAY_MARK).exists():
            raise DemoBusy(
                f"{state} holds a hub that is not a throw-away demo's: resume it with "
                f"`lockerd demo --state-dir {state}`, or remove it"
            )
        shutil.rmtree(state)
        note = f"(cleared what a demo that was killed left in {state})"
    state.mkdir(mode=0o700, parents=True)
    (state / THROWAWAY_MARK).write_text(
        "a throw-away lockerd demo's state: removed when it stops, or by the next one\n"
    )
    return note


def reserve_sample(
    hub: Hub, pid: str, size: d.Size, *, kind: d.Kind = d.Kind.DELIVERY, actor: str = "demo"
) -> tuple[str, str]:
    """A reservation with two new codes (deposit, pickup), stored as hashes only; the
    codes are returned once, for the demo to print (or a benchmark to enter)."""
    now = hub.service.clock()
    hasher = hub.service.hasher
    deposit, pickup = new_code(hub.cfg.codes.length), new_code(hub.cfg.codes.length)
    parcel = d.Parcel(
        pid,
        kind,
        size,
        deposit_from=now - 60,
        deposit_until=now + 7 * 86_400,
        collect_window_s=hub.cfg.timers.pickup_window_h * 3600,
    )
    hub.store.add_parcel(
        parcel,
        {d.Purpose.DEPOSIT: hasher.hash(deposit), d.Purpose.COLLECT: hasher.hash(pickup)},
        now=now,
        actor=actor,
        events=[
            d.Event("parcel_reserved", {"parcel": pid, "size": size.value, "kind": kind.value})
        ],
    )
    return deposit, pickup


def sample_reservations(hub: Hub, say: Say) -> None:
    """A fresh demo hub gets three deliveries and a return to play with."""
    for n, size in enumerate((d.Size.S, d.Size.M, d.Size.L), start=1):
        deposit, pickup = reserve_sample(hub, f"DEMO-{n:03d}", size)
        say(f"parcel DEMO-{n:03d} size {size.value} deposit {deposit} pickup {pickup}")
    drop, collect = reserve_sample(hub, "DEMO-004", d.Size.S, kind=d.Kind.RETURN)
    say(f"parcel DEMO-004 size S deposit {drop} pickup {collect}")
    say("  (DEMO-004 is a return: a resident drops it off with its deposit code,")
    say("   a carrier collects it with its pickup code)")


def _when(at: float | None) -> str:
    return "" if at is None else time.strftime(" until %Y-%m-%d %H:%M", time.localtime(at))


def parcel_line(p: d.Parcel) -> str:
    """Where a parcel is and what it waits for, in a few words."""
    where = p.compartment or "?"
    said = {
        d.ParcelState.RESERVED: "reserved: waiting for its deposit code",
        d.ParcelState.DEPOSITING: f"depositing in {where}: its door is open",
        d.ParcelState.STORED: f"stored in {where}: waiting for its pickup code"
        + _when(p.collect_until),
        d.ParcelState.COLLECTING: f"being collected from {where}: its door is open",
        d.ParcelState.EXPIRED: f"expired in {where}: only a recall opens it",
        d.ParcelState.RECALLING: f"being recalled from {where}: its door is open",
    }.get(p.state, f"{p.state.value} (ended)")
    return f"parcel {p.id} size {p.size.value} {said}"


def resumed(hub: Hub, say: Say, ctl: str, *, shown: int = 12) -> None:
    """A hub that has parcels already: what they are doing, and how to reserve more
    (their codes were printed when they were reserved; the hub keeps only hashes)."""
    parcels = hub.store.parcels()
    live = [p for p in parcels if p.state not in d.FINAL]
    ended = len(parcels) - len(live)
    say(
        f"resumed a demo hub with {len(parcels)} parcel(s), {len(live)} under way; their "
        "codes were printed when they were reserved (the hub keeps only hashes)"
    )
    for p in live[:shown]:
        say(parcel_line(p))
    if len(live) > shown:
        say(f"... and {len(live) - shown} more under way: {ctl} parcels")
    if ended:
        say(f"{ended} parcel(s) ended (collected, recalled or cancelled)")
    say(f"new parcels: {ctl} reserve SIZE   (S, M, L or XL; prints its codes once)")


def lockerctl() -> str:
    """How to run lockerctl from here: the one installed beside this Python (the venv's),
    relative to the current directory when it is under it."""
    beside = Path(sys.executable).parent / "lockerctl"
    if not beside.exists():
        return "lockerctl"
    with contextlib.suppress(ValueError, OSError):
        return str(beside.relative_to(Path.cwd()))
    return str(beside)


def demo_config(
    state_dir: str | None,
    socket: str | None,
    *,
    cloud: Cloud | None = None,
    hub_id: str | None = None,
    terminal_socket: str | None = None,
) -> tuple[HubConfig, bool]:
    """The demo hub's config with its state in ``state_dir`` (default:
    :func:`default_state_dir`, thrown away: the second value is True), its technician
    socket and its keypad's terminal socket (``keypad:1``) there (``api.sock``,
    ``terminal.sock``) unless given. No technician group: root and the user who started
    the demo may use lockerctl. No disk reserve (demo-hub.toml)."""
    cfg = parse(demo_hub_toml(), "demo-hub.toml (lockerd.demo)")
    throwaway = state_dir is None
    state = state_dir or str(default_state_dir())
    paths = cfg.paths.model_copy(
        update={
            "state_dir": state,
            "socket": socket or os.path.join(state, "api.sock"),
            "technician_group": None,
        }
    )
    keypad = {
        "name": DEMO_TERMINAL,
        "socket": terminal_socket or os.path.join(state, "terminal.sock"),
        "group": None,
    }
    terminals = [t.model_dump() for t in cfg.terminals if t.name != DEMO_TERMINAL]
    if hub_id is None and cloud is not None:
        # on a shared broker, each demo its own hub (kept with the state directory)
        id_file = Path(state) / "hub-id"
        if not id_file.exists():
            Path(state).mkdir(parents=True, exist_ok=True)
            id_file.write_text(f"demo-{secrets.token_hex(3)}\n")
        hub_id = id_file.read_text().strip()
    update: dict[str, Any] = {"paths": paths, "cloud": cloud, "terminals": [keypad, *terminals]}
    if hub_id is not None:
        update["hub_id"] = hub_id
    return HubConfig.model_validate({**cfg.model_dump(), **update}), throwaway


def hints(ctl: str, sock: str, keypad: str) -> list[str]:
    """What to type in another terminal, one line at a time (each note above its lines)."""
    tech, pad = f"{ctl} --socket {sock}", f"{ctl} --socket {keypad}"
    steps = [
        ("at the keypad, a carrier enters a deposit code: a door opens", [
            f"{pad} enter-code DEPOSIT-CODE",
        ]),
        ("the carrier shuts that door (LABEL: the one that opened): deposited", [
            f"{tech} sim door LABEL close",
        ]),
        ("the resident enters the pickup code, takes the parcel, shuts the door: collected", [
            f"{pad} enter-code PICKUP-CODE",
            f"{tech} sim door LABEL close",
        ]),
        ("the hub: every door and alarm, every parcel, its history", [
            f"{tech} status",
            f"{tech} parcels",
            f"{tech} events",
        ]),
        ("a new parcel (S, M, L or XL): its codes are printed once", [f"{tech} reserve M"]),
        ("a technician's audited open; D01-D08 have occupancy sensors (put, take)", [
            f"{tech} open A05 --reason check",
            f"{tech} sim door D01 put",
        ]),
        ("forbidden: a keypad may only enter codes", [f"{pad} open A05 --reason x"]),
    ]  # fmt: skip
    lines = []
    for note, commands in steps:
        lines.append(f"  # {note}")
        lines.extend(f"  {command}" for command in commands)
    return lines


async def run_demo(
    state_dir: str | None,
    socket: str | None,
    *,
    cloud: Cloud | None = None,
    hub_id: str | None = None,
    terminal_socket: str | None = None,
) -> int:
    throwaway = state_dir is None
    state = Path(state_dir) if state_dir is not None else default_state_dir()
    note = claim_state_dir(state, throwaway=throwaway)
    try:
        return await _play(
            str(state),
            socket,
            throwaway=throwaway,
            note=note,
            cloud=cloud,
            hub_id=hub_id,
            terminal_socket=terminal_socket,
        )
    finally:
        if throwaway:  # the hub is closed: nothing of it is left
            shutil.rmtree(state, ignore_errors=True)


async def _play(
    state: str,
    socket: str | None,
    *,
    throwaway: bool,
    note: str | None,
    cloud: Cloud | None,
    hub_id: str | None,
    terminal_socket: str | None,
) -> int:
    cfg, _ = demo_config(state, socket, cloud=cloud, hub_id=hub_id, terminal_socket=terminal_socket)
    bind(hub=cfg.hub_id)  # on every line from here, ours and the libraries'

    def say(line: str) -> None:
        print(line, flush=True)

    async with open_hub(cfg, ports=SimulatedPorts()) as hub:
        sock = cfg.paths.socket
        keypad = next(t.socket for t in cfg.terminals if t.name == DEMO_TERMINAL)
        ctl = lockerctl()
        say(
            f"lockerd demo: hub {cfg.hub_id} on the built-in simulator, "
            f"{len(cfg.compartments)} compartments on {len(cfg.buses)} buses"
        )
        if note:
            say(note)
        kept = (
            "thrown away at Ctrl-C; --state-dir DIR keeps a hub"
            if throwaway
            else f"kept: `lockerd demo --state-dir {state}` resumes it"
        )
        say(f"state in {state} ({kept})")
        say(f"keypad socket      {keypad}  (terminal {DEMO_TERMINAL}: codes only)")
        say(f"technician socket  {sock}")
        if cfg.cloud is not None:
            prefix = f"{cfg.cloud.prefix}/{cfg.hub_id}"
            say(f"cloud link to {cfg.cloud.url}: watch {prefix}/# with any MQTT client")
        if hub.store.parcels():
            resumed(hub, say, f"{ctl} --socket {sock}")
        else:
            sample_reservations(hub, say)
        say("")
        say("try, in another terminal, one line at a time:")
        for line in hints(ctl, sock, keypad):
            say(line)
        return await serve(hub, ready=lambda: say("serving until Ctrl-C"), notifier=Notifier())
