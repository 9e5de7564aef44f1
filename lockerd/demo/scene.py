"""``lockerd demo``: the demo hub (``demo-hub.toml``, shipped with the package) on the
built-in simulator, with sample parcels on a fresh hub and the lines a newcomer needs
to play it: the keypad's socket, the technician's socket and what to type.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from lockerd.config import Cloud, HubConfig, parse
from lockerd.daemon.serve import serve
from lockerd.daemon.wiring import Hub, open_hub
from lockerd.demo.ports import SimulatedPorts
from lockerd.hub import domain as d
from lockerd.hub.codes import new_code
from lockerd.logs import bind
from lockerd.ops.sdnotify import Notifier

DEMO_TERMINAL = "keypad:1"  # the demo's keypad, on its terminal socket


def demo_hub_toml() -> str:
    """The demo hub's config, as shipped in the package."""
    return resources.files("lockerd.demo").joinpath("demo-hub.toml").read_text(encoding="utf-8")


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


def sample_reservations(hub: Hub, say: Any) -> None:
    """A fresh demo hub gets three deliveries and a return to play with."""
    if hub.store.parcels():
        say("resumed an existing demo hub: its codes were printed when it was created")
        return
    for n, size in enumerate((d.Size.S, d.Size.M, d.Size.L), start=1):
        deposit, pickup = reserve_sample(hub, f"DEMO-{n:03d}", size)
        say(f"parcel DEMO-{n:03d} size {size.value} deposit {deposit} pickup {pickup}")
    drop, collect = reserve_sample(hub, "DEMO-004", d.Size.S, kind=d.Kind.RETURN)
    say(f"parcel DEMO-004 size S deposit {drop} pickup {collect}")
    say("  (DEMO-004 is a return: a resident drops it off with its deposit code,")
    say("   a carrier collects it with its pickup code)")


def demo_config(
    state_dir: str | None,
    socket: str | None,
    *,
    cloud: Cloud | None = None,
    hub_id: str | None = None,
    terminal_socket: str | None = None,
) -> tuple[HubConfig, bool]:
    """The demo hub's config with its state, its technician socket and its keypad's
    terminal socket (``keypad:1``; default ``terminal.sock``) in ``state_dir``. No
    technician group: root and the user who started the demo may use lockerctl."""
    cfg = parse(demo_hub_toml(), "demo-hub.toml (lockerd.demo)")
    throwaway = state_dir is None
    state = state_dir or tempfile.mkdtemp(prefix="lockerd-demo-")
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


async def run_demo(
    state_dir: str | None,
    socket: str | None,
    *,
    cloud: Cloud | None = None,
    hub_id: str | None = None,
    terminal_socket: str | None = None,
) -> int:
    cfg, throwaway = demo_config(
        state_dir, socket, cloud=cloud, hub_id=hub_id, terminal_socket=terminal_socket
    )
    bind(hub=cfg.hub_id)  # on every line from here, ours and the libraries'

    def say(line: str) -> None:
        print(line, flush=True)

    async with open_hub(cfg, ports=SimulatedPorts()) as hub:
        sock = cfg.paths.socket
        kind = "a throw-away directory" if throwaway else "kept: run again with it to resume"
        say(
            f"lockerd demo: hub {cfg.hub_id} on the built-in simulator, "
            f"{len(cfg.compartments)} compartments on {len(cfg.buses)} buses"
        )
        say(f"state in {cfg.paths.state_dir} ({kind}); API socket {sock}")
        keypad = next(t.socket for t in cfg.terminals if t.name == DEMO_TERMINAL)
        say(f"terminal-socket {keypad}")
        say(f"hub {cfg.hub_id}")
        if cfg.cloud is not None:
            prefix = f"{cfg.cloud.prefix}/{cfg.hub_id}"
            say(f"cloud link to {cfg.cloud.url}: watch {prefix}/# with any MQTT client")
        sample_reservations(hub, say)
        ctl = f"lockerctl --socket {sock}"
        pad = f"lockerctl --socket {keypad}"
        say("")
        say("try, in another terminal (.venv/bin/ in front if the venv is not active);")
        say(f"the keypad ({DEMO_TERMINAL}) is {keypad}, the technician's socket {sock}:")
        hints = [
            (f"{pad} enter-code DEPOSIT-CODE", "at the keypad: the carrier's door opens"),
            (f"{ctl} sim door LABEL close", "the carrier shuts it: deposited"),
            (f"{pad} enter-code PICKUP-CODE", "at the keypad: the resident's door opens"),
            (f"{ctl} sim door LABEL close", "collected"),
            (f"{ctl} status", ""),
            (f"{ctl} events", "what the cloud will be told"),
            (f"{ctl} open A05 --reason 'check'", "a technician's audited open"),
            (f"{ctl} sim door D01 put", "D01-D08 have occupancy sensors:"),
            ("", "put something in before shutting"),
            (f"{pad} open A05 --reason x", "forbidden: a keypad may only enter codes"),
        ]
        width = max(len(command) for command, _ in hints)
        for command, note in hints:
            say(f"  {command:<{width}}  # {note}" if note else f"  {command}")
        return await serve(hub, ready=lambda: say("serving until Ctrl-C"), notifier=Notifier())
