"""The systemd watchdog: ``WATCHDOG=1`` only while the hub is healthy.

The ping is sent from the event loop, so a blocked loop stops it by itself. Before
each ping the hub checks itself:

- every bus whose port is open and which has answered since this process started
  has answered within ``bus_stale_s``: a bus that answered and then fell silent
  while its adapter stays plugged in is *wedged* (a hung USB adapter, a stuck
  driver, a poll task that no longer runs), and a restart reopens it. A bus that has
  not answered since the start does not hold the ping back: the restart did not
  help it, and restarting again would only take the other buses down with it (its
  boards are reported offline, with alarms, and in ``lockerctl bus``). An
  unplugged adapter is not a wedge either: the bus reopens it by itself;
- the store takes a small committed write (its write lock is free, the disk takes
  a flush) within the check's own time. A *full* disk does not hold the ping back:
  the service has alarmed it and keeps serving from its reserve
  (lockerd/hub/diskreserve.py), and a restart would free nothing.

When a check fails, the ping is held back and the reason logged (once per change)
and shown in systemd's STATUS; systemd restarts the service once ``WatchdogSec``
passes without a ping (``Restart=on-failure``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

import structlog

from lockerd.drivers.bus import Bus
from lockerd.hub.store import StoreError, StoreFull
from lockerd.ops.sdnotify import Notifier

log = structlog.get_logger(__name__)


class Watchdog:
    """Pings systemd's watchdog only while the hub is healthy: the loop turns, the
    store can write, every bus polled recently."""

    def __init__(
        self,
        notifier: Notifier,
        buses: Mapping[str, Bus],
        probe_store: Callable[[float], Awaitable[None]],
        *,
        bus_stale_s: float,
        interval_s: float | None = None,
    ) -> None:
        self.notifier = notifier
        self.buses = buses
        self.probe_store = probe_store
        self.bus_stale_s = bus_stale_s
        # systemd's advice: ping at half the WatchdogSec
        self.interval_s = interval_s or (notifier.watchdog_s or 20.0) / 2
        self.problems: list[str] = []  # the last check's findings; empty: healthy
        self.pings = 0
        self.checks = 0

    async def snapshot(self) -> dict[str, object]:
        """For ``lockerctl status``: healthy or why not, and how often it was checked."""
        return {
            "healthy": not self.problems,
            "problems": self.problems,
            "checks": self.checks,
            "pings": self.pings,
            "systemd": self.notifier.enabled,
        }

    def bus_problems(self, now: float) -> list[str]:
        found = []
        for name, bus in self.buses.items():
            answers = [h.last_ok_at for h in bus.health.values() if h.last_ok_at is not None]
            if not bus.is_open or not answers:
                continue
            silent_for = now - max(answers)
            if silent_for > self.bus_stale_s:
                found.append(
                    f"bus {name}: no board has answered for {silent_for:.0f} s while its port "
                    f"stays open (wedged adapter or poll)"
                )
        return found

    async def store_problem(self) -> str | None:
        try:
            async with asyncio.timeout(self.interval_s):
                await self.probe_store(time.time())
        except TimeoutError:
            return (
                f"store: a small write took over {self.interval_s:.1f} s "
                "(the disk or the store's thread is stuck)"
            )
        except StoreFull:
            # a full disk is alarmed and logged by the service; a restart would not
            # free it, and would stop the pickups the hub can still serve
            return None
        except StoreError as exc:
            return f"store: not writable ({exc})"
        return None

    async def check(self) -> list[str]:
        found = self.bus_problems(asyncio.get_running_loop().time())
        store = await self.store_problem()
        if store is not None:
            found.append(store)
        return found

    async def run(self) -> None:
        while True:
            found = await self.check()
            if not found:
                if self.problems:
                    log.info("watchdog_healthy_again", was=self.problems)
                    self.notifier.status("serving")
                self.notifier.watchdog()
                self.pings += 1
            elif found != self.problems:
                log.error(
                    "watchdog_withheld",
                    problems=found,
                    hint="the hub is unhealthy; systemd restarts it when WatchdogSec "
                    "passes without a ping (see `lockerctl bus` and the store's disk)",
                )
                self.notifier.status("unhealthy: " + "; ".join(found))
            self.problems = found
            self.checks += 1
            await asyncio.sleep(self.interval_s)
