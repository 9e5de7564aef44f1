"""The store's errors, and how SQLite's own errors become them.

A damaged file is :class:`StoreCorrupt` (stop, never recreate it), a full disk
:class:`StoreFull` (the change was rolled back), a change that contradicts what is
stored :class:`StoreConflict` (:class:`CodeSpent` for a code hash used before).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from lockerd.errors import LockerdError


class StoreError(LockerdError):
    """Base of the store's errors."""


class StoreCorrupt(StoreError):
    """The database file is damaged or not a lockerd database: stop, never recreate."""


class StoreFull(StoreError):
    """The disk is full: the change was rolled back; nothing stored before is lost."""


class StoreConflict(StoreError):
    """The change contradicts what is stored (a code already live, a duplicate id)."""


class CodeSpent(StoreConflict):
    """A code hash that was spent or replaced at this hub (a tombstone): never again."""


def translate(exc: sqlite3.Error, path: Path) -> StoreError:
    """The store's error for what SQLite raised on the file at ``path``."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("disk is full" in text or "full" in text):
        return StoreFull(f"{path}: the disk is full ({text}); free space on the device")
    if isinstance(exc, sqlite3.IntegrityError):
        return StoreConflict(text)
    if isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in text or "not a database" in text or "corrupt" in text
    ):
        return StoreCorrupt(
            f"{path} is damaged ({text}). lockerd will not start on it and never recreates "
            "it: keep the file for analysis, restore the last backup, or move it away to "
            "start an empty hub (its parcels would be lost)"
        )
    return StoreError(f"{path}: {text}")
