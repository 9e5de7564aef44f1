"""Where a hub's buses are: the port provider that :func:`~lockerd.daemon.wiring.open_hub`
asks before it opens them.

A real hub's ports are in its config (``[[buses]] port = "/dev/ttyUSB0"``):
:class:`ConfiguredPorts`. The demo and the tests supply their own provider
(``lockerd.demo.ports.SimulatedPorts``: a simulator per bus, on a real pseudo-terminal),
so there is one wiring and it is the one the tests run. The daemon knows only this
protocol: its import path never imports the simulator.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lockerd.config import HubConfig


class Stage(Protocol):
    """A simulated hub's stage, played through ``lockerctl sim``: the person at a door,
    a bus losing its power. Each returns a sentence saying what happened; an unknown
    label or bus raises :class:`KeyError` with the message for the technician."""

    def door(self, label: str, action: str) -> str: ...

    def bus(self, name: str, action: str) -> str: ...


class Ports(Protocol):
    """Provides each configured bus's port."""

    @property
    def stage(self) -> Stage | None:
        """What ``lockerctl sim`` plays with, on a simulated hub; None on a real one."""
        ...

    async def open(self, cfg: HubConfig, stack: contextlib.AsyncExitStack) -> dict[str, str]:
        """Each bus's port (bus name -> device path or pyserial URL), with whatever serves
        them entered on ``stack`` (closed after the hub). Called once the state directory
        is locked and before the store opens."""
        ...


class ConfiguredPorts:
    """A real hub: each bus on the port its config names."""

    stage: Stage | None = None

    async def open(self, cfg: HubConfig, stack: contextlib.AsyncExitStack) -> dict[str, str]:
        return {bus.name: bus.port for bus in cfg.buses}
