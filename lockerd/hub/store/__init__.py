"""The durable store: one SQLite file, WAL, ``synchronous=FULL``, versioned migrations.

Every state change commits in one transaction together with the events it causes
(the outbox, with a gapless per-hub ``seq`` for the cloud link, and the local
history, which outlives the cloud taking them) and an audit line (who did what).
Opening a door is recorded as an *intent* before the pulse and its *outcome* after
the door monitor's verdict, so a crash in between is found at start-up and
reconciled by reading the doors, never by pulsing again.

A corrupt or unreadable file stops the daemon with :class:`StoreCorrupt`; it is
never recreated. A full disk raises :class:`StoreFull`: the transaction is rolled
back, nothing stored before is lost, and the caller decides (refuse the action,
raise an alarm).

The store is synchronous; the service runs it on one dedicated thread
(:class:`lockerd.hub.storethread.StoreThread`) so a slow fsync never blocks the
door monitor's loop.

:class:`Store` is assembled here from one part per concern, each a module of its own:

- :mod:`.errors`: the store's errors, and SQLite's errors translated to them
- :mod:`.schema`: the schema's migrations, the PRAGMAs, opening the file
- :mod:`.base`: the connection, transactions, the ``meta`` table
- :mod:`.rows`: rows read back as domain objects and small records
- :mod:`.history`: every event recorded, kept at the hub as long as the audit
- :mod:`.outbox`: events for the cloud, alarms, the audit trail
- :mod:`.inbox`: the cloud's commands and their replies, quarantined messages
- :mod:`.compartments`: the doors and what they hold
- :mod:`.parcels`: parcels, their code hashes and tombstones (and bulk reservations)
- :mod:`.changes`: applying a domain change, with its intent or outcome
- :mod:`.retention`: pruning what is no longer kept
"""

from __future__ import annotations

from pathlib import Path

from lockerd.hub.store.changes import ChangesMixin
from lockerd.hub.store.errors import CodeSpent, StoreConflict, StoreCorrupt, StoreError, StoreFull
from lockerd.hub.store.inbox import QUARANTINE_BODY_MAX, Inbox
from lockerd.hub.store.outbox import ALARM_EVENTS, CEILING_FACTOR, TELEMETRY_EVENTS
from lockerd.hub.store.parcels import reserved_event
from lockerd.hub.store.retention import RetentionMixin
from lockerd.hub.store.rows import AuditRow, HistoryRow, Intent, OutboxRow
from lockerd.hub.store.schema import SCHEMA


class Store(ChangesMixin, RetentionMixin):
    """The hub's state on disk, and the only code that writes SQL.

    Responsible for: opening (and migrating) the file, refusing a damaged one, and
    committing each change atomically with its events, alarms, audit line, intent and
    the cloud command behind it; the outbox's quota; reading it all back.

    Not responsible for: deciding anything (the rules are :mod:`lockerd.hub.domain`'s,
    the service asks them), threads (it is synchronous and not thread-safe: the
    service's :class:`~lockerd.hub.storethread.StoreThread` runs it), or what to do
    when the disk is full (it raises :class:`StoreFull`; the store thread decides).
    """

    def __init__(self, path: str | Path) -> None:
        # SCHEMA is looked up here, in this package, each time a file is opened: a
        # test opens a hub of an older release by setting lockerd.hub.store.SCHEMA
        super().__init__(path, SCHEMA)
        self._load_outbox()


__all__ = [
    "ALARM_EVENTS",
    "CEILING_FACTOR",
    "QUARANTINE_BODY_MAX",
    "SCHEMA",
    "TELEMETRY_EVENTS",
    "AuditRow",
    "CodeSpent",
    "HistoryRow",
    "Inbox",
    "Intent",
    "OutboxRow",
    "Store",
    "StoreConflict",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "reserved_event",
]
