"""The hub's closed vocabularies: the one home of every event type, alarm kind,
outcome (of a request, of an open intent), refusal reason and reply status.

Each vocabulary is a ``Literal`` type alias, so that mypy refuses an unknown word
where one is written (``d.Event("no_such_event", ...)`` does not type-check:
:attr:`lockerd.hub.domain.Event.type` is an :data:`EventType`), with the tuple of its
values beside it for the code that needs them at run time (``typing.get_args``).
The emit sites keep writing plain strings.

The shape of each event's ``data`` is in the cloud contract
(:data:`lockerd.cloud.contract.EVENT_DATA`); a test keeps the two in step, and fails
when the code emits an event type that is not here.

Vocabularies that are enums already stay where they are: sizes are
:class:`lockerd.hub.domain.Size`, why a door stays shut is
:class:`lockerd.hub.domain.Refusal`, a code's purpose is
:class:`lockerd.hub.domain.Purpose` (this module imports nothing of the hub: the
domain imports it).
"""

from __future__ import annotations

from typing import Literal, TypeAlias, get_args

# ======================================================================================
# Events (the outbox, the audit log, the cloud's `evt` topic)
# ======================================================================================

# parcels: reservations and codes (the cloud's commands, the hub's timers)
ParcelEventType: TypeAlias = Literal[
    "parcel_reserved",
    "parcel_codes_changed",
    "parcel_cancelled",
    "reservation_expired",
    "parcel_expired",
]
# a parcel's way through a compartment (the door shut ends each step)
FlowEventType: TypeAlias = Literal[
    "deposited",
    "return_deposited",
    "deposit_abandoned",
    "collected",
    "return_collected",
    "recalled",
    "collect_not_taken",
]
# doors: what was asked, what the door did
DoorEventType: TypeAlias = Literal[
    "door_open_requested",
    "door_opened",
    "door_shut",
    "service_door_shut",
    "door_not_opened",
    "door_jammed",
    "door_left_open",
    "forced_open",
    "open_interrupted",
    "occupancy_mismatch",
]
# technicians (lockerctl) and the cloud's service commands
ServiceEventType: TypeAlias = Literal[
    "compartment_service",
    "compartment_inspected",
]
# the hub itself: boards, sensors, keypads, disk, outbox, the cloud link
HubEventType: TypeAlias = Literal[
    "board_offline",
    "board_online",
    "sensor_fault",
    "code_guessing",
    "code_guessing_hub_wide",
    "disk_full",
    "outbox_quota_reached",
    "outbox_full",
    "message_quarantined",
    "command_refused",
]
EventType: TypeAlias = Literal[
    ParcelEventType, FlowEventType, DoorEventType, ServiceEventType, HubEventType
]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)

# events that raise an alarm (one open alarm per type and target until acknowledged)
AlarmKind: TypeAlias = Literal[
    "forced_open",
    "occupancy_mismatch",
    "outbox_quota_reached",
    "door_jammed",
    "door_left_open",
    "code_guessing",
    "code_guessing_hub_wide",
    "board_offline",
    "open_interrupted",
    "sensor_fault",
    "disk_full",
    "message_quarantined",
    "outbox_full",
]
ALARM_KINDS: frozenset[AlarmKind] = frozenset(get_args(AlarmKind))
# events that say an alarm is over: the open alarm of that kind and the same target
# is acknowledged by the hub itself (actor `lockerd`, audited), so no stale alarm stays
ALARM_CLEARED_BY: dict[EventType, AlarmKind] = {"board_online": "board_offline"}

# door telemetry, and reports whose news the retained state snapshot or the command's
# reply also carries: past the outbox quota they are no longer queued for the cloud
TelemetryKind: TypeAlias = Literal[
    "door_open_requested",
    "door_opened",
    "door_shut",
    "service_door_shut",
    "board_online",
    "compartment_service",
    "command_refused",
]
TELEMETRY_KINDS: frozenset[TelemetryKind] = frozenset(get_args(TelemetryKind))

# ======================================================================================
# Outcomes and replies
# ======================================================================================

# what the service tells whoever asked (keypad, technician, cloud): Outcome.status
OutcomeStatus: TypeAlias = Literal[
    "ok",  # done
    "opened",  # the door was seen open
    "already_open",  # the door stood open already: nothing was pulsed
    "jammed",  # pulsed, never seen open: the compartment is out of service
    "failed",  # the unlock never went out (bus, board)
    "refused",  # the hub's rules say no (the message says why)
    "wait",  # the keypad's throttle: try again in `wait_s`
]
OUTCOME_STATUSES: tuple[OutcomeStatus, ...] = get_args(OutcomeStatus)

# what became of an open intent (the store's ``intents.outcome``, the audit line's
# action, the ``lockerd_open_outcomes`` metric): the door monitor's verdict on a pulse
IntentOutcome: TypeAlias = Literal[
    "opened",  # the door was seen open
    "already_open",  # the door stood open already: nothing was pulsed
    "not_sent",  # the unlock never went out (bus, board)
    "jammed",  # pulsed, never seen open
    "interrupted",  # the hub stopped during the open; the door was shut at start-up
]
INTENT_OUTCOMES: frozenset[IntentOutcome] = frozenset(get_args(IntentOutcome))

# why the cloud link refuses a command before anything is done (the reply's status,
# and the `command_refused` event's reason); the command's id is not used up
RefusalReason: TypeAlias = Literal[
    "too_large",
    "retained",
    "malformed",
    "wrong_hub",
    "no_command_key",
    "unsigned",
    "bad_signature",
    "no_expiry",
    "lifetime_too_long",
    "not_yet_valid",
    "expired",
]
REFUSAL_REASONS: tuple[RefusalReason, ...] = get_args(RefusalReason)

# a reply's status on the cloud's `reply` topic
ReplyStatus: TypeAlias = Literal[
    OutcomeStatus,
    RefusalReason,
    "quarantined",  # the hub failed to handle the command: set aside, never retried
    "interrupted",  # the hub restarted during a remote open
    "opening",  # kept at the hub while a remote open is under way; never published
]
REPLY_STATUSES: tuple[ReplyStatus, ...] = get_args(ReplyStatus)
# the reply statuses that never reach the cloud: `opening` stays in the hub's inbox
# (a redelivery meanwhile gets no reply), `wait` is the keypad's
UNPUBLISHED_STATUSES: frozenset[ReplyStatus] = frozenset({"opening", "wait"})
# the statuses of a reply with `ok: true`
OK_STATUSES: frozenset[ReplyStatus] = frozenset({"ok", "opened", "already_open"})
# the outcome statuses of something not done (refused, jammed, failed, wait):
# `lockerctl` exits 1 on them
NOT_OK_OUTCOMES: frozenset[OutcomeStatus] = frozenset(
    s for s in OUTCOME_STATUSES if s not in OK_STATUSES
)

__all__ = [
    "ALARM_CLEARED_BY",
    "ALARM_KINDS",
    "EVENT_TYPES",
    "INTENT_OUTCOMES",
    "NOT_OK_OUTCOMES",
    "OK_STATUSES",
    "OUTCOME_STATUSES",
    "REFUSAL_REASONS",
    "REPLY_STATUSES",
    "TELEMETRY_KINDS",
    "UNPUBLISHED_STATUSES",
    "AlarmKind",
    "DoorEventType",
    "EventType",
    "FlowEventType",
    "HubEventType",
    "IntentOutcome",
    "OutcomeStatus",
    "ParcelEventType",
    "RefusalReason",
    "ReplyStatus",
    "ServiceEventType",
    "TelemetryKind",
]
