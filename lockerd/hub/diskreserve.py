"""Space kept back on the store's disk for the writes that must not fail.

A hub whose disk fills up (a log gone wild, another program) must still let
residents collect their parcels: each pickup writes a few rows (the intent, its
outcome, the events, the audit). lockerd keeps a reserve file of
``paths.disk_reserve_mb`` next to the store, with its blocks really allocated
(``posix_fallocate``). The first time the store reports the disk full, the store
thread (:class:`lockerd.hub.storethread.StoreThread`) deletes the reserve, the
write that failed is retried in the space it frees, a ``disk_full`` alarm is
raised, and the hub goes *low on disk*: it refuses new reservations (the cloud is
told why, and can send them again later) and keeps serving everything already
stored. Once the disk has room again, the reserve is made anew and the hub leaves
that mode.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


class DiskReserve:
    """The reserve file at ``path``, of ``size_bytes`` (none when 0)."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size = size_bytes

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except FileNotFoundError:
            return False

    def ensure(self) -> bool:
        """Make the reserve if it is not there; ``False`` if the disk has no room for it."""
        if self.size <= 0 or self.held:
            return True
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # half a reserve only takes space
            log.error(  # noqa: TRY400 - a known condition, not a traceback
                "disk_reserve_not_made",
                path=str(self.path),
                size_mb=round(self.size / 2**20, 1),
                error=str(exc),
                hint="the store's disk has no room for the reserve that keeps pickups "
                "working when it fills up: free space on it",
            )
            return False
        return True

    def release(self) -> bool:
        """Free the reserve's space; ``False`` if there was none to free."""
        if self.size <= 0:
            return False
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True

    def room_again(self) -> bool:
        """The disk has room for the reserve and as much again to spare."""
        return shutil.disk_usage(self.path.parent).free > 2 * self.size
