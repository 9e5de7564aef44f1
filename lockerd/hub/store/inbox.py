"""The cloud's commands as the hub keeps them: each command id with the reply it got
(a redelivered command gets the same reply and is never acted on twice), the replies
waiting for the broker's PUBACK, and the messages set aside in quarantine because
the hub could not handle them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lockerd.hub import domain as d
from lockerd.hub.store.outbox import OutboxMixin

QUARANTINE_BODY_MAX = 64 * 1024  # bytes of a quarantined message kept for analysis


@dataclass(frozen=True)
class Inbox:
    """A cloud command recorded with its effect, in the same transaction: a redelivered
    command finds it and gets ``reply`` again instead of acting twice. ``publish``:
    queue the reply for the cloud now (``False`` while an open is still under way).
    ``remember``: ``False`` for a refusal before the command was authenticated: only
    the reply is queued, and the id stays free for the command done right."""

    command_id: str
    reply: dict[str, Any]
    publish: bool = True
    remember: bool = True


class InboxMixin(OutboxMixin):
    """The ``inbox``, ``replies`` and ``quarantine`` tables: :meth:`_inbox` records a
    command's reply inside the transaction of the change it asked for."""

    def _inbox(self, db: sqlite3.Connection, command: Inbox | None, now: float) -> None:
        if command is None:
            return
        reply = json.dumps(command.reply, sort_keys=True)
        if command.remember:
            db.execute(
                "INSERT INTO inbox(command_id, at, reply) VALUES(?,?,?) "
                "ON CONFLICT(command_id) DO UPDATE SET reply=excluded.reply",
                (command.command_id, now, reply),
            )
        if command.publish:
            db.execute(
                "INSERT INTO replies(command_id, reply) VALUES(?,?)", (command.command_id, reply)
            )

    def answer(self, command: Inbox, *, now: float) -> None:
        """Record a command's reply alone (a refusal, or the final word on an open)."""
        with self.transaction() as db:
            self._inbox(db, command, now)

    def quarantine(
        self,
        source: str,
        ref: str | None,
        error: str,
        body: bytes,
        *,
        now: float,
        command: Inbox | None = None,
    ) -> None:
        """Set a message the hub could not handle aside (its first
        :data:`QUARANTINE_BODY_MAX` bytes, for analysis), with a ``message_quarantined``
        alarm and, when it had a usable id, the reply a redelivery gets."""
        event = d.Event(
            "message_quarantined",
            {"source": source, "ref": ref, "error": error[:200], "bytes": len(body)},
        )
        with self.transaction() as db:
            db.execute(
                "INSERT INTO quarantine(at, source, ref, error, body) VALUES(?,?,?,?,?)",
                (now, source, ref, error[:1000], bytes(body[:QUARANTINE_BODY_MAX])),
            )
            self._inbox(db, command, now)
            self._record(db, [event], now=now, actor=source, action="quarantine", target=ref or "-")

    def quarantined(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest messages set aside (without their bodies)."""
        return [
            dict(r)
            for r in self._db.execute(
                "SELECT n, at, source, ref, error, length(body) AS bytes FROM quarantine "
                "ORDER BY n DESC LIMIT ?",
                (limit,),
            )
        ]

    def inbox(self, command_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT reply FROM inbox WHERE command_id=?", (command_id,)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def unfinished_commands(self) -> list[tuple[str, dict[str, Any]]]:
        """Commands whose effect began (an open) but whose final reply was never made:
        the daemon stopped in between."""
        rows = self._db.execute(
            "SELECT command_id, reply FROM inbox WHERE json_extract(reply, '$.status') = ?",
            ("opening",),
        )
        return [(r[0], dict(json.loads(r[1]))) for r in rows]

    def replies(self, limit: int = 100) -> list[tuple[int, dict[str, Any]]]:
        return [
            (r[0], dict(json.loads(r[1])))
            for r in self._db.execute("SELECT n, reply FROM replies ORDER BY n LIMIT ?", (limit,))
        ]

    def delete_replies(self, ns: Iterable[int]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM replies WHERE n=?", [(n,) for n in ns])
