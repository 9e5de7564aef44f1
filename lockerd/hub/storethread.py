"""The store's own thread, and what the hub does when the store's disk fills up.

Every store call runs on one worker thread (never two at once: SQLite's connection
is the store's only one), so a slow fsync never stalls the loop that polls the
doors. When a call meets a full disk, the disk reserve
(:mod:`lockerd.hub.diskreserve`) is freed and the call is tried once more in the
space it frees; the hub is then *low on disk* (:attr:`StoreThread.disk_low`) until
the disk has room again and the reserve is made anew.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import structlog

from lockerd.hub import domain as d
from lockerd.hub.diskreserve import DiskReserve
from lockerd.hub.store import Store, StoreFull

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class StoreThread:
    """Runs the store's calls on the store's one thread, and keeps the hub going when
    its disk fills up.

    Responsible for: the worker thread (:meth:`run`, :meth:`close`); on a full disk,
    freeing the reserve, retrying the call once, logging, and going low on disk
    (:attr:`disk_low`); leaving that mode once there is room (:meth:`check_disk`).

    Not responsible for: what is refused while low on disk (the service reads
    :attr:`disk_low`), nor committing the ``disk_full`` alarm: that event goes to
    ``on_disk_full``, which records it (through the service, as every change is).
    """

    def __init__(self, store: Store, *, disk_reserve: DiskReserve | None = None) -> None:
        self.store = store
        # who records the disk_full alarm: the service, which sets it (HubService)
        self.on_disk_full: Callable[[d.Event], None] = lambda event: None
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        # space kept back for when the disk fills up (from the config: open_hub)
        self.disk_reserve = disk_reserve
        # new reservations are refused until there is room; from the start when even
        # the reserve could not be made
        self.disk_low = disk_reserve is not None and not disk_reserve.ensure()
        self._full_logged = False

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on the store's thread. A full disk frees the reserve
        and ``fn`` is called once more; without a reserve to free, :class:`StoreFull`
        is raised (the change was rolled back)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._io, lambda: fn(*args, **kwargs))
        except StoreFull as exc:
            # the change was rolled back: free the disk reserve and try once more in it
            if self.disk_reserve is None or not self.disk_reserve.release():
                if not self._full_logged:
                    self._full_logged = True
                    log.error(  # noqa: TRY400 - a known condition, not a traceback
                        "disk_full_no_reserve",
                        error=str(exc),
                        hint="the store's disk is full and its reserve is used up: writes "
                        "fail (nothing stored is lost); free space on the device now",
                    )
                raise
            self._disk_full(str(exc))
            return await loop.run_in_executor(self._io, lambda: fn(*args, **kwargs))

    def _disk_full(self, error: str) -> None:
        self.disk_low = True
        log.error(
            "disk_full",
            error=error,
            hint="the store's disk is full: its reserve was freed so that pickups and "
            "opens go on; new reservations are refused until there is room; free space "
            "on the device (the reserve is made again by itself)",
        )
        self.on_disk_full(d.Event("disk_full", {"path": str(self.store.path.parent)}))

    def check_disk(self) -> None:
        """Low on disk: is there room again? Then the reserve is made anew."""
        if not self.disk_low or self.disk_reserve is None:
            return
        if self.disk_reserve.room_again() and self.disk_reserve.ensure():
            self.disk_low = False
            self._full_logged = False
            log.info("disk_space_back", reserve_mb=round(self.disk_reserve.size / 2**20, 1))

    def close(self) -> None:
        """Wait for the call under way, then end the thread."""
        self._io.shutdown(wait=True)


__all__ = ["StoreThread"]
