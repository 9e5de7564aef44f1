"""The demo's buses: every configured bus served by an in-process simulator on a real
pseudo-terminal, and the stage ``lockerctl sim`` plays on (a person at a door, a bus
losing its power).

The demo, ``lockerd run`` on a config with ``simulated = true``, the tests and the
benchmarks all build their hub with :func:`lockerd.daemon.wiring.open_hub` and this
provider: one wiring, and it is the one that is tested.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from lockerd.demo.keys import demo_command_keys
from lockerd.hub.codes import create_key
from lockerd.simulator.boards import SimCu16, board_for
from lockerd.simulator.line import Simulator

if TYPE_CHECKING:
    from lockerd.config import HubConfig
    from lockerd.daemon.wiring import Hub


class SimulatedPorts:
    """A :class:`~lockerd.daemon.ports.Ports` provider for a hub without hardware. It
    also makes the keys a demo needs and a real hub is given: the code key, and (with
    a cloud link) the cloud's command-signing key pair, the private half kept for
    ``lockerctl cloud``."""

    def __init__(self, *, spring_delay_s: float = 0.3) -> None:
        self.spring_delay_s = spring_delay_s
        self.sims: dict[str, Simulator] = {}
        self._where: dict[str, tuple[str, int, int]] = {}

    @property
    def stage(self) -> SimulatedPorts:
        return self

    async def open(self, cfg: HubConfig, stack: contextlib.AsyncExitStack) -> dict[str, str]:
        if not cfg.key_path().exists():
            create_key(cfg.key_path())
        if cfg.cloud is not None:
            demo_command_keys(cfg.state_path(cfg.cloud.command_key_file))
        ports: dict[str, str] = {}
        for bus in cfg.buses:
            boards = [board_for(b, spring_delay_s=self.spring_delay_s) for b in bus.boards]
            sim = Simulator(boards, baudrate=bus.baudrate)
            await stack.enter_async_context(sim)
            self.sims[bus.name] = sim
            ports[bus.name] = sim.url
        self._where = {c.label: (c.bus, c.board, c.channel) for c in cfg.compartments}
        return ports

    def bus(self, name: str, action: str) -> str:
        """``dead``: every board on the bus loses its power; anything else: back."""
        if name not in self.sims:
            raise KeyError(f"no bus {name}")
        for board in self.sims[name].line.boards:
            board.faults.dead = action == "dead"
        if action == "dead":
            return f"every board on bus {name} lost its power"
        return f"every board on bus {name} has its power back"

    def door(self, label: str, action: str) -> str:
        """``open``/``close`` the door, ``put``/``take`` a parcel (occupancy sensors
        only), ``jam``/``unjam`` the lock."""
        if label not in self._where:
            raise KeyError(f"no compartment {label}")
        bus, address, channel = self._where[label]
        board = self.sims[bus].board(address)
        if action == "open":
            board.open_door(channel)
            return f"a person opens {label}"
        if action == "close":
            board.close_door(channel)
            return f"a person shuts {label}"
        if action in ("put", "take"):
            if not isinstance(board, SimCu16):
                raise KeyError(f"{label} has no occupancy sensor")
            board.put_parcel(channel, action == "put")
            return (
                f"a person {'puts something in' if action == 'put' else 'takes it out of'} {label}"
            )
        if action == "jam":
            board.faults.jammed.add(channel)
            return f"the lock of {label} is jammed: a pulse will not open it"
        board.faults.jammed.discard(channel)
        return f"the lock of {label} works again"


def simulators(hub: Hub) -> dict[str, Simulator]:
    """The simulators of a hub opened with :class:`SimulatedPorts` (bus name -> simulator),
    for a test or a benchmark to play the boards directly."""
    if not isinstance(hub.ports, SimulatedPorts):
        raise TypeError("this hub's buses are not simulated")
    return hub.ports.sims
