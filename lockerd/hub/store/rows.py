"""Rows read back as objects: compartments and parcels as the domain's own objects,
intents, outbox events, the history's events and audit lines as the store's small
records (:class:`Intent`, :class:`OutboxRow`, :class:`HistoryRow`, :class:`AuditRow`).
Reading only: no SQL runs here."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from lockerd.hub import domain as d


@dataclass(frozen=True)
class Intent:
    id: int
    label: str
    purpose: d.Purpose
    parcel_id: str | None
    actor: str
    created: float


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    id: str
    type: str
    at: float
    data: dict[str, Any]


@dataclass(frozen=True)
class HistoryRow:
    """An event of the local history (:meth:`Store.history`): what happened (``type``,
    ``data``, as the cloud gets it), when, and who (``actor``) did what to which
    ``target`` (a compartment, a parcel, a board, ...) in the change behind it."""

    seq: int
    at: float
    type: str
    data: dict[str, Any]
    actor: str
    target: str


@dataclass(frozen=True)
class AuditRow:
    """A line of the audit trail (:meth:`Store.audit_log`): who did what, when."""

    id: int
    at: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


def to_compartment(r: sqlite3.Row) -> d.Compartment:
    op = None
    if r["op_purpose"] is not None:
        op = d.Operation(
            d.Purpose(r["op_purpose"]),
            r["op_parcel"],
            r["op_started"],
            bool(r["op_seen_open"]),
            r["op_actor"] or "",
        )
    return d.Compartment(
        r["label"],
        d.Size(r["size"]),
        bool(r["accessible"]),
        bool(r["in_service"]),
        d.Content(r["content"]),
        r["parcel_id"],
        op,
        bool(r["door_open"]),
    )


def to_parcel(r: sqlite3.Row) -> d.Parcel:
    return d.Parcel(
        r["id"],
        d.Kind(r["kind"]),
        d.Size(r["size"]),
        d.ParcelState(r["state"]),
        r["compartment"],
        r["deposit_from"],
        r["deposit_until"],
        r["collect_window_s"],
        r["collect_until"],
        bool(r["accessible"]),
        bool(r["has_recall"]),
    )


def to_intent(r: sqlite3.Row) -> Intent:
    return Intent(
        r["id"],
        r["label"],
        d.Purpose(r["purpose"]),
        r["parcel_id"],
        r["actor"],
        r["created"],
    )


def to_outbox_row(r: sqlite3.Row) -> OutboxRow:
    return OutboxRow(r["seq"], r["id"], r["type"], r["at"], json.loads(r["data"]))


def to_history_row(r: sqlite3.Row) -> HistoryRow:
    return HistoryRow(r["seq"], r["at"], r["type"], json.loads(r["data"]), r["actor"], r["target"])


def to_audit_row(r: sqlite3.Row) -> AuditRow:
    return AuditRow(r["id"], r["at"], r["actor"], r["action"], r["target"], json.loads(r["detail"]))
