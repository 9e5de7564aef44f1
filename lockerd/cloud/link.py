"""The cloud link: MQTT 5 to the operator's broker (contract: lockerd.cloud.contract).

- One persistent session per hub: fixed client id, ``clean_start`` off (aiomqtt's
  default would start clean on every new client, i.e. after every restart), a
  session expiry, so commands sent while the hub was away are delivered on return.
- Commands are acknowledged (PUBACK) only **after** their effect and their inbox
  row are committed (paho's manual acknowledgement, behind :class:`_Mqtt`): a crash
  in between gets the command redelivered, and the inbox makes the redelivery do
  nothing again (ADR 0009).
- Events leave the outbox in ``seq`` order; a row is deleted only after its PUBACK.
  Replies are queued in the store the same way.
- Birth (retained ``online`` with a ``boot_seq``) and a compartment snapshot on every
  (re)connect; the will says ``offline`` with the same ``boot_seq``.
- Commands that open a door or grant or change a code (``contract.SIGNED``) must carry
  a valid Ed25519 signature of the cloud, be for this hub, be current, and not be
  retained; a door opened now is short-lived, a grant may wait in the broker's session
  (ADR 0014). A code hash spent or replaced here is never accepted again (the store's
  tombstones). Any command, signed or not, that carries an ``expires_at`` is refused
  (``expired``) once that time has passed.
- A reservation that gives no ``pickup_window_s`` of its own gets the hub's
  (``[timers] pickup_window_h``, handed in as ``default_collect_window_s``).

The hub never waits for the cloud: every code it has keeps working offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from lockerd import __version__
from lockerd.cloud import contract as c
from lockerd.config import Cloud, Timers
from lockerd.hub import domain as d
from lockerd.hub.jsonsafe import clean, text
from lockerd.hub.service import BULK_CHUNK, HubService, Outcome
from lockerd.hub.store import Inbox, StoreError
from lockerd.hub.vocab import OK_STATUSES, RefusalReason, ReplyStatus
from lockerd.logs import bind, bound

log = structlog.get_logger(__name__)

VERSION = __version__  # in the birth message (status), as installed
WINDOW = 200  # events in flight (published, PUBACK awaited) at once
BIG = 64 * 1024  # commands larger than this are parsed on a worker thread
# a reservation's collect window when it gives none and the hub was told none: the
# config's default of `[timers] pickup_window_h`
DEFAULT_COLLECT_WINDOW_S = Timers.model_fields["pickup_window_h"].default * 3600.0


class _Stopped(Exception):
    """The daemon is stopping (see :meth:`CloudLink.close`)."""


def failpoint(name: str) -> None:
    """A named crash point for tests: ``LOCKERD_FAILPOINT=name`` kills the process here,
    as a power cut would (no clean-up, no flush)."""
    if os.environ.get("LOCKERD_FAILPOINT") == name:
        os._exit(99)


def load_command_key(path: Path) -> Ed25519PublicKey:
    key = load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise TypeError(f"{path} is not an Ed25519 public key")
    return key


@dataclass(frozen=True)
class Verifier:
    """Checks a signed command (:data:`contract.SIGNED`: it opens a door, or grants or
    changes a code) before anything else is done with it. A door opened now lives at
    most ``max_life_s``; a grant, sent ahead to wait in the broker's session, at most
    ``grant_max_life_s``."""

    hub: str
    key: Ed25519PublicKey | None
    skew_s: float
    max_life_s: float
    grant_max_life_s: float = 7 * 86_400.0

    def refusal(
        self, raw: dict[str, Any] | None, cmd: c.Command, now: float
    ) -> RefusalReason | None:
        """Why ``cmd`` is refused, or ``None``. ``raw``: the JSON object it was read
        from; ``None`` for a command validated straight from its bytes (the big
        ``codes.bulk``), whose canonical bytes then come from the model (the same)."""
        found = self.check(raw, cmd, now)
        return found[0] if found is not None else None

    def check(
        self, raw: dict[str, Any] | None, cmd: c.Command, now: float
    ) -> tuple[RefusalReason, str] | None:
        """:meth:`refusal` with what the reply's message says: for a refusal for time,
        what is wrong with which time (never a word about the signature, which was
        good); for the others, :data:`_WHY`."""
        reason = self._signature(raw, cmd)
        if reason is not None:
            return reason, _WHY[reason]
        return self.times(cmd, now, signed=True)

    def _signature(self, raw: dict[str, Any] | None, cmd: c.Command) -> RefusalReason | None:
        if self.key is None:
            return "no_command_key"
        if not cmd.sig:
            return "unsigned"
        sig = c.decode_sig(cmd.sig)
        if sig is None:
            return "bad_signature"
        try:
            self.key.verify(sig, c.canonical(raw) if raw is not None else c.canonical_model(cmd))
        except InvalidSignature:
            return "bad_signature"
        if cmd.expires_at is None:
            return "no_expiry"
        return None

    def times(
        self, cmd: c.Command, now: float, *, signed: bool
    ) -> tuple[RefusalReason, str] | None:
        """A command's times against the hub's clock ``now``: why it is refused and what
        is wrong with which time, or ``None``. A signed command (its signature checked
        already, its ``expires_at`` there) must be current and not live too long; any
        other is refused only past an ``expires_at`` it gives."""
        issued, expires, skew = cmd.issued_at, cmd.expires_at, self.skew_s
        if expires is None:
            return None
        if expires < issued:
            return "expired", (
                f"expires_at ({expires}) is before issued_at ({issued}): the command was "
                "never valid"
            )
        if signed:
            opens = cmd.type in c.OPENS_NOW
            life = self.max_life_s if opens else self.grant_max_life_s
            if expires - issued > life:
                setting = "command_max_life_s" if opens else "grant_max_life_s"
                return "lifetime_too_long", (
                    f"expires_at - issued_at is {expires - issued} s; a {cmd.type} may live "
                    f"at most {life:g} s (the hub's {setting}): shorten it"
                )
            if issued > now + skew:
                return "not_yet_valid", (
                    f"issued_at ({issued}) is {issued - now:.0f} s ahead of the hub's clock "
                    f"({now:.0f}), more than the {skew:g} s it tolerates (command_skew_s): "
                    "check the clocks (NTP)"
                )
        if expires < now - skew:
            return "expired", (
                f"expires_at ({expires}) passed {now - expires:.0f} s ago by the hub's clock "
                f"({now:.0f}), more than the {skew:g} s it tolerates (command_skew_s): send "
                "a fresh command under a new id"
            )
        return None


class PublishRefused(aiomqtt.MqttError):
    """The broker answered a publish with a failure reason code (MQTT 5 PUBACK)."""


class _Mqtt:
    """What we use of aiomqtt/paho, in one place (pinned versions, see pyproject):
    manual acknowledgement is paho's (``manual_ack``), which aiomqtt 2.x does not
    expose yet (empicano/aiomqtt#345); nor does it tell a PUBACK's reason code, so a
    publish the broker refused (its ACL) looks sent: paho's ``on_publish`` is wrapped
    to count refusals."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        client._client.manual_ack_set(True)
        client.pending_calls_threshold = WINDOW + 50
        self.refusals = 0
        self.last_refusal = ""
        inner = client._client.on_publish

        def on_publish(*args: Any) -> None:
            reason = args[3] if len(args) > 3 else None
            if getattr(reason, "is_failure", False):
                self.refusals += 1
                self.last_refusal = str(reason)
            inner(*args)  # type: ignore[misc]

        client._client.on_publish = on_publish

    def ack(self, message: aiomqtt.Message) -> None:
        if message.qos > 0:
            self.client._client.ack(message.mid, message.qos)


class CloudLink:
    """The hub's link to the operator's cloud over MQTT 5.

    Takes commands (verified, answered with the change they cause, acknowledged
    only after the commit: ADR 0009), publishes the outbox in ``seq`` order and the
    hub's status (birth, will, state), reconnects with backoff forever. A message it
    cannot handle is set aside with an alarm; the hub keeps working without it. Not
    responsible for: the rules (the service) or the contract's shapes
    (:mod:`lockerd.cloud.contract`)."""

    def __init__(
        self,
        cfg: Cloud,
        hub_id: str,
        service: HubService,
        *,
        state_dir: Path,
        clock: Callable[[], float] = time.time,
        default_collect_window_s: float = DEFAULT_COLLECT_WINDOW_S,
    ) -> None:
        """``default_collect_window_s``: the collect window of a reservation that gives
        no ``pickup_window_s`` (the hub's ``[timers] pickup_window_h``, in seconds)."""
        self.cfg = cfg
        self.default_collect_window_s = default_collect_window_s
        self.hub = hub_id
        self.service = service
        self.store = service.store
        self.clock = clock
        self.state_dir = state_dir
        base = f"{cfg.prefix}/{hub_id}"
        self.t_cmd, self.t_reply, self.t_evt = f"{base}/cmd", f"{base}/reply", f"{base}/evt"
        self.t_status, self.t_state = f"{base}/status", f"{base}/state"
        key_path = self._path(cfg.command_key_file)
        self.verifier = Verifier(
            hub_id,
            load_command_key(key_path) if key_path.exists() else None,
            cfg.command_skew_s,
            cfg.command_max_life_s,
            cfg.grant_max_life_s,
        )
        if self.verifier.key is None:
            log.warning(
                "no_command_key",
                path=str(key_path),
                hint="reservations, codes and door-opening commands from the cloud will be "
                "refused until the cloud's public key is installed there",
            )
        self.store.outbox_quota = int(cfg.outbox_quota_mb * 1024 * 1024)
        self.max_packet = cfg.max_packet_kb * 1024
        self.boot_seq = self.store.next_boot()
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.published = 0
        self._wake = asyncio.Event()
        self._state_dirty = asyncio.Event()
        self._last_state: str | None = None
        self._open_tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._stop = asyncio.Event()
        self.mqtt: _Mqtt | None = None  # the connection's, while there is one
        self.refused_reason: str | None = None  # the broker's, for a refused publish
        service.on_commit.append(self.poke)

    async def health(self) -> dict[str, Any]:
        """For ``lockerctl status``: the link, and what waits for it."""
        count, size = await self.service.run_db(self.store.outbox_size)
        oldest = await self.service.run_db(self.store.oldest_event_at)
        return {
            "broker": self.cfg.url,
            "connected": self.connected.is_set(),
            "connects": self.reconnects,
            "boot_seq": self.boot_seq,
            "outbox_events": count,
            "outbox_bytes": size,
            "outbox_quota_bytes": self.store.outbox_quota,
            "oldest_event_age_s": round(self.clock() - oldest, 1) if oldest else None,
            "published": self.published,
            "publish_refused": self.refused_reason,
        }

    def _path(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.state_dir / path

    def close(self) -> None:
        """The daemon is stopping: :meth:`run` ends even if the cancellation that comes
        with the stop is lost. Python 3.11's ``wait_for`` (inside aiomqtt) can swallow a
        cancel that lands as its inner call completes; seen as a link that kept running
        after SIGTERM, right after a (re)connect."""
        self._closing = True
        self._stop.set()

    async def _until_stopped(self) -> None:
        await self._stop.wait()
        raise _Stopped

    def poke(self) -> None:
        """Something was committed: events to send, maybe a new snapshot."""
        self._wake.set()
        self._state_dirty.set()

    # ------------------------------------------------------------------ connection
    def _client(self) -> aiomqtt.Client:
        cfg = self.cfg
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = cfg.session_expiry_s
        # the broker never sends us a larger packet (MQTT 5 Maximum Packet Size): a
        # huge command cannot stall the loop or swell the daemon
        props.MaximumPacketSize = self.max_packet
        will = aiomqtt.Will(self.t_status, self._status("offline"), qos=1, retain=True)
        password = None
        if cfg.password_file:
            password = self._path(cfg.password_file).read_text().strip()
        tls = None
        if cfg.tls:
            ctx = ssl.create_default_context(
                cafile=str(self._path(cfg.ca_file)) if cfg.ca_file else None
            )
            if cfg.cert_file and cfg.key_file:
                ctx.load_cert_chain(self._path(cfg.cert_file), self._path(cfg.key_file))
            tls = ctx
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=cfg.client_id or self.hub,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            will=will,
            keepalive=cfg.keepalive_s,
            username=cfg.username,
            password=password,
            tls_context=tls,
            timeout=10,
        )

    def _status(self, state: str) -> str:
        return c.Status(
            hub=self.hub,
            state=state,  # type: ignore[arg-type]
            boot_seq=self.boot_seq,
            at=self.clock(),
            version=VERSION,
        ).model_dump_json()

    async def run(self) -> None:
        """Connect, serve, reconnect with jittered exponential backoff; forever."""
        failures = 0

        def connected() -> None:
            nonlocal failures
            failures = 0

        while not self._closing:
            try:
                await self._session(connected)
            except aiomqtt.MqttError as exc:
                if self._closing:
                    # stopping: the connection's error may come instead of the cancellation
                    # (and Task.cancelling() cannot tell: a failing task group leaves it set)
                    raise asyncio.CancelledError from exc
                was = self.connected.is_set()
                self.connected.clear()
                failures += 1
                delay = min(
                    self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2 ** (failures - 1)
                )
                if isinstance(exc, PublishRefused):  # not a network matter: no hurry
                    delay = self.cfg.reconnect_max_s
                    log.error(  # noqa: TRY400 - the hint says what to do
                        "cloud_publish_refused",
                        broker=self.cfg.url,
                        reason=self.refused_reason,
                        hint="the broker refuses what the hub publishes: check the hub's "
                        "login and the broker's ACL (config/mosquitto-acl.conf); the events "
                        "wait in the outbox, nothing is lost",
                    )
                delay = random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not secrecy
                log.warning(
                    "cloud_disconnected" if was else "cloud_unreachable",
                    broker=self.cfg.url,
                    error=str(exc),
                    retry_in_s=round(delay, 2),
                    hint=_TAKEN_OVER
                    if "taken over" in str(exc).lower()
                    else "the hub keeps working; events wait in the outbox",
                )
                with contextlib.suppress(TimeoutError):  # a stop ends the wait too
                    async with asyncio.timeout(delay):
                        await self._stop.wait()

    async def _session(self, connected: Callable[[], None]) -> None:
        """One connection, served until it fails. A fault of the link's own (never a
        message's: those are set aside one by one) is logged with its traceback and
        ends the connection as a network error would: the link starts over, and the
        hub, which never waits for the cloud, keeps working."""
        try:
            client = self._client()
            mqtt = _Mqtt(client)  # before connecting: a resumed session delivers at once
            self.mqtt = mqtt
            async with client:
                connected()
                try:
                    await self._serve(client, mqtt)
                except asyncio.CancelledError:
                    # a clean stop sends no will: say offline ourselves
                    with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                        await client.publish(
                            self.t_status,
                            self._status("offline"),
                            qos=1,
                            retain=True,
                            timeout=2,
                        )
                    # and do not wait long for the broker to see us go: aiomqtt's
                    # disconnect waits `timeout` for it (seen stuck for 10 s)
                    client.timeout = 1.0
                    raise
        except aiomqtt.MqttError:
            raise
        except Exception as exc:
            if self._closing:
                raise asyncio.CancelledError from exc
            log.exception(
                "cloud_link_failed",
                hint="a fault in the cloud link itself; it reconnects. Keypads and doors "
                "are not affected. Report the traceback",
            )
            raise aiomqtt.MqttError(f"the link failed: {type(exc).__name__}") from exc

    async def _serve(self, client: aiomqtt.Client, mqtt: _Mqtt) -> None:
        # retain-as-published: a command published with the retain flag reaches us
        # flagged even live, so it is refused (a retained command is stale by nature)
        await client.subscribe(self.t_cmd, options=SubscribeOptions(qos=1, retainAsPublished=True))
        await client.publish(self.t_status, self._status("online"), qos=1, retain=True)
        self._last_state = None
        await self._publish_state(client)
        self.connected.set()
        self.reconnects += 1
        log.info("cloud_connected", broker=self.cfg.url, boot_seq=self.boot_seq)
        self._wake.set()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._drain(client))
                tg.create_task(self._state_loop(client))
                tg.create_task(self._commands(client, mqtt))
                tg.create_task(self._until_stopped())
        except* _Stopped:
            raise asyncio.CancelledError from None  # a stop: leave as a cancel would
        except* aiomqtt.MqttError as group:
            raise group.exceptions[0] from None  # the connection is gone: reconnect

    # ------------------------------------------------------------------ outbox and replies
    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            self._wake.clear()
            sent_any = await self._send_replies(client)
            sent_any |= await self._send_events(client)
            if not sent_any:
                await self._wake.wait()

    async def _send_events(self, client: aiomqtt.Client) -> bool:
        # publishing=True: from now on these rows are never changed (the store's
        # coalescing of service flips leaves them alone)
        rows = await self.service.run_db(self.store.outbox, 0, WINDOW, publishing=True)
        if not rows:
            return False

        async def one(row: Any) -> None:
            await client.publish(self.t_evt, self._event_json(row), qos=1)

        refused = self.mqtt.refusals if self.mqtt else 0
        results = await asyncio.gather(*(one(r) for r in rows), return_exceptions=True)
        self._refused_since(refused)
        done = [r.seq for r, res in zip(rows, results, strict=True) if res is None]
        if done:
            await self.service.run_db(self.store.delete_outbox, done)
            self.published += len(done)
        for res in results:
            if isinstance(res, BaseException):
                raise res
        return True

    def _refused_since(self, before: int) -> None:
        """The broker refused a publish of this batch (a PUBACK with a failure reason,
        e.g. "Not authorized": the ACL or the login is wrong). None of the batch is
        deleted: the link backs off and tries again, the events wait in the outbox."""
        if self.mqtt is None or self.mqtt.refusals == before:
            return
        self.refused_reason = self.mqtt.last_refusal
        raise PublishRefused(f"the broker refused a publish: {self.mqtt.last_refusal}")

    def _event_json(self, row: Any) -> str:
        """An outbox row as the contract's event. The store keeps event data safe to
        send (lockerd.hub.jsonsafe); a row that a former version stored unsafe is cleaned
        here rather than left to block every event behind it."""
        msg = c.EventMessage(
            hub=self.hub, seq=row.seq, id=row.id, type=row.type, at=row.at, data=row.data
        )
        try:
            return msg.model_dump_json()
        except ValueError:  # pydantic_core.PydanticSerializationError
            log.warning("event_cleaned", seq=row.seq, type=row.type)
            return msg.model_copy(update={"data": clean(row.data)}).model_dump_json()

    async def _send_replies(self, client: aiomqtt.Client) -> bool:
        rows = await self.service.run_db(self.store.replies, WINDOW)
        if not rows:
            return False
        refused = self.mqtt.refusals if self.mqtt else 0
        results = await asyncio.gather(
            # (ASCII JSON: even a reply a former version stored with a lone surrogate
            # is sent, escaped; new replies hold only cleaned text)
            *(client.publish(self.t_reply, json.dumps(reply), qos=1) for _, reply in rows),
            return_exceptions=True,
        )
        self._refused_since(refused)
        done = [n for (n, _), res in zip(rows, results, strict=True) if res is None]
        if done:
            await self.service.run_db(self.store.delete_replies, done)
        for res in results:
            if isinstance(res, BaseException):
                raise res
        return True

    # ------------------------------------------------------------------ the state snapshot
    async def snapshot(self) -> c.StateSnapshot:
        comps = await self.service.run_db(self.store.compartments)
        alarms = await self.service.alarms()
        return c.StateSnapshot(
            hub=self.hub,
            at=self.clock(),
            compartments=[
                c.CompartmentState(
                    label=x.label,
                    size=x.size.value,
                    state=x.state.value,
                    door_open=x.door_open,
                )
                for x in comps
            ],
            alarms=len(alarms),
        )

    async def _publish_state(self, client: aiomqtt.Client) -> None:
        snap = await self.snapshot()
        body = snap.model_dump_json(exclude={"at"})
        if body == self._last_state:
            return
        await client.publish(self.t_state, snap.model_dump_json(), qos=1, retain=True)
        self._last_state = body

    async def _state_loop(self, client: aiomqtt.Client) -> None:
        """Coalesced: at most one snapshot per ``state_coalesce_s``, only when changed."""
        while True:
            await self._state_dirty.wait()
            await asyncio.sleep(self.cfg.state_coalesce_s)
            self._state_dirty.clear()
            await self._publish_state(client)

    # ------------------------------------------------------------------ commands
    async def _commands(self, client: aiomqtt.Client, mqtt: _Mqtt) -> None:
        async for message in client.messages:
            try:
                with bound(command=None, command_type=None):  # (handle() names them)
                    await self.handle(client, mqtt, message)
            except StoreError as exc:
                # nothing acknowledged: the broker redelivers it on the next connection
                # (a persistent session), so the link reconnects now, with its backoff
                log.error(  # noqa: TRY400 - the hint says what to do
                    "command_not_stored",
                    error=str(exc),
                    hint="the store refused the write (disk full?); the command stays "
                    "unacknowledged and the link reconnects to have it again",
                )
                raise aiomqtt.MqttError(f"a command was not stored: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - one message never stops the hub
                await self._quarantine(mqtt, message, exc)

    async def _quarantine(self, mqtt: _Mqtt, message: aiomqtt.Message, exc: BaseException) -> None:
        """A command the hub failed to handle (a fault of ours, not a refusal: those
        are answered): set aside with an alarm and acknowledged, so it is never
        retried forever and never stops the link; a redelivery gets the stored reply."""
        body = _body(message)
        cid = None
        with contextlib.suppress(Exception):
            raw = json.loads(body) if len(body) <= self.max_packet else None
            cid = c.valid_id(raw.get("id")) if isinstance(raw, dict) else None
        error = f"{type(exc).__name__}: {text(str(exc), 300)}"
        log.error(
            "command_quarantined",
            command=cid,
            error=error,
            bytes=len(body),
            exc_info=exc,
            hint="the command was set aside (lockerd's quarantine table) with an alarm; "
            "the cloud got a `quarantined` reply; report it with the traceback",
        )
        reply = self._reply(
            cid or "unknown",
            "unknown",
            ok=False,
            status="quarantined",
            message="the hub could not handle this command; it was set aside for analysis",
        )
        # a redelivery of a command with an id gets this reply, never a retry
        inbox = Inbox(cid or "unknown", reply, remember=cid is not None)
        try:
            await self.service.run_db(
                self.store.quarantine, "cloud", cid, error, body, now=self.clock(), command=inbox
            )
        except Exception:  # even this must not stop the link
            log.exception("quarantine_failed", command=cid)
        mqtt.ack(message)
        self.poke()  # the reply and the alarm's event to send, the alarm in the snapshot

    async def handle(  # noqa: PLR0911 - one return per way a command ends
        self, client: aiomqtt.Client, mqtt: _Mqtt, message: aiomqtt.Message
    ) -> None:
        failpoint("cloud.command_received")
        body = _body(message)
        if len(body) > self.max_packet:  # (a broker that ignored our Maximum Packet Size)
            await self._refuse(
                mqtt,
                message,
                None,
                "unknown",
                "too_large",
                f"{len(body)} bytes; the hub takes commands up to {self.max_packet} bytes",
            )
            return
        raw, cmd, cid, ctype = await _read(body)
        bind(command=cid, command_type=ctype)  # on every line logged while it is handled
        if cid is not None:
            stored = await self.service.run_db(self.store.inbox, cid)
            if stored is not None and stored.get("status") != "opening":
                await self._publish_reply(client, {**stored, "duplicate": True})
                mqtt.ack(message)
                return
            if stored is not None:
                mqtt.ack(message)  # an open of this command is under way
                return
        if message.retain:
            await self._refuse(mqtt, message, cid, ctype, "retained", "a retained command is stale")
            return
        try:
            if cmd is None:  # (a big codes.bulk is validated already)
                cmd = (
                    await asyncio.to_thread(c.COMMAND.validate_python, raw)
                    if len(body) > BIG
                    else c.COMMAND.validate_python(raw)
                )
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            await self._refuse(mqtt, message, cid, ctype, "malformed", f"{where}: {first['msg']}")
            return
        if cmd.hub != self.hub:
            await self._refuse(mqtt, message, cid, ctype, "wrong_hub", f"for hub {cmd.hub}")
            return
        if cmd.type in c.SIGNED:
            # a big one (codes.bulk) off the event loop, as its parse is
            found = (
                await asyncio.to_thread(self.verifier.check, raw, cmd, self.clock())
                if len(body) > BIG
                else self.verifier.check(raw, cmd, self.clock())
            )
        else:  # unsigned: only an expires_at it gives, if it gives one
            found = self.verifier.times(cmd, self.clock(), signed=False)
        if found is not None:
            await self._refuse(mqtt, message, cid, ctype, *found)
            return
        await self._apply(cmd, mqtt, message)

    async def _refuse(  # noqa: PLR0917
        self,
        mqtt: _Mqtt,
        message: aiomqtt.Message,
        cid: str | None,
        ctype: str,
        reason: RefusalReason,
        detail: str,
    ) -> None:
        detail = text(detail, 300)  # what is echoed from the command, bounded
        log.warning("command_refused", command=cid, type=ctype, reason=reason, detail=detail)
        reply = self._reply(cid or "unknown", ctype, ok=False, status=reason, message=detail)
        event = d.Event("command_refused", {"command": cid, "type": ctype, "reason": reason})
        # the reply, never the id: nothing was done, and a refusal before the command is
        # authenticated must not use up its id (a grant refused as not yet valid by a
        # hub whose clock was late is taken when it comes again, right)
        answer = Inbox(cid or "unknown", reply, remember=False)
        await self.service.record(
            d.Change(events=(event,)), actor="cloud", target=cid or "-", command=answer
        )
        mqtt.ack(message)
        self._wake.set()

    def _reply(
        self,
        cid: str,
        ctype: str,
        *,
        ok: bool,
        status: ReplyStatus,
        message: str = "",
        result: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return c.Reply(
            id=cid,
            hub=self.hub,
            type=ctype,
            ok=ok,
            status=status,
            message=message,
            result=result or {},
            at=self.clock(),
        ).model_dump(mode="json")

    def _from_outcome(self, cmd: c.Command, outcome: Outcome, **result: Any) -> dict[str, Any]:
        ok = outcome.status in OK_STATUSES
        if outcome.compartment:
            result.setdefault("compartment", outcome.compartment)
        # the cloud is told what a technician is (the door already open, busy with which
        # operation, the board offline), not the keypad's words for a customer
        message = text(outcome.detail or outcome.message, 1000)
        return self._reply(
            cmd.id, cmd.type, ok=ok, status=outcome.status, message=message, result=result
        )

    async def _publish_reply(self, client: aiomqtt.Client, reply: dict[str, Any]) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(self.t_reply, json.dumps(reply), qos=1)

    async def _apply(self, cmd: c.Command, mqtt: _Mqtt, message: aiomqtt.Message) -> None:
        """Carry out a valid, authenticated command: commit its change with its answer,
        then acknowledge the message (ADR 0009). An open is answered when the door has."""
        actor = f"cloud:{cmd.id}"
        match cmd:
            case c.CompartmentOpen():
                self._open(cmd, mqtt, message)
                return
            case c.SyncRequest():
                snap = await self.snapshot()
                self._last_state = None
                self._state_dirty.set()
                await self._answer(cmd, snap.model_dump(mode="json"))
            case c.CodesBulk() if not self.service.store_thread.disk_low:
                await self._answer(cmd, await self._bulk(cmd, actor))
            case _:
                ok = self._reply(cmd.id, cmd.type, ok=True, status="ok")
                outcome = await self._change(cmd, actor, Inbox(cmd.id, ok))
                if outcome.status != "ok":  # refused: nothing was done; the reply says why
                    reply = self._from_outcome(cmd, outcome)
                    await self.service.run_db(
                        self.store.answer, Inbox(cmd.id, reply), now=self.clock()
                    )
                failpoint("cloud.command_committed")
        mqtt.ack(message)
        self._wake.set()

    async def _answer(self, cmd: c.Command, result: dict[str, Any]) -> None:
        """Store the reply of a command that changes nothing the service keeps."""
        reply = self._reply(cmd.id, cmd.type, ok=True, status="ok", result=result)
        await self.service.run_db(self.store.answer, Inbox(cmd.id, reply), now=self.clock())

    async def _change(self, cmd: c.Command, actor: str, inbox: Inbox) -> Outcome:
        """A command that changes parcels or compartments, through the service (which
        commits the change, its events and the command's answer together)."""
        s = self.service
        match cmd:
            case c.ParcelReserve() | c.ReturnReserve():
                parcel, codes = reservation(cmd, self.default_collect_window_s)
                return await s.reserve(parcel, codes, actor=actor, command=inbox)
            case c.ParcelCancel(parcel=pid):
                return await s.cancel(pid, actor=actor, command=inbox)
            case c.ParcelUpdateCodes(parcel=pid):
                hashes: dict[d.Purpose, str] = {}
                if cmd.deposit_code_hash:
                    hashes[d.Purpose.DEPOSIT] = cmd.deposit_code_hash
                if cmd.pickup_code_hash:
                    hashes[d.Purpose.COLLECT] = cmd.pickup_code_hash
                return await s.set_codes(pid, hashes, actor=actor, command=inbox)
            case c.ParcelRecall(parcel=pid, recall_code_hash=recall):
                return await s.set_codes(
                    pid, {d.Purpose.RECALL: recall}, actor=actor, command=inbox
                )
            case c.CompartmentSetService(compartment=label, in_service=in_service):
                return await s.set_service(label, in_service, actor=actor, command=inbox)
            case c.CodesBulk():  # only while the disk is full (see _apply)
                return Outcome("refused", "the hub's disk is full: send the reservations later")
            case c.CompartmentOpen() | c.SyncRequest():
                raise TypeError(f"{cmd.type} is answered by _apply, not as a change")

    async def _bulk(self, cmd: c.CodesBulk, actor: str) -> dict[str, Any]:
        """A codes.bulk's reservations, and what became of each."""
        fate = await self._reserve_bulk(cmd, actor)
        return {
            "reserved": sum(1 for f in fate.values() if f == "reserved"),
            "exists": sorted(p for p, f in fate.items() if f == "exists"),
            "code_conflict": sorted(p for p, f in fate.items() if f == "code_conflict"),
            "code_used": sorted(p for p, f in fate.items() if f == "code_used"),
        }

    async def _reserve_bulk(self, cmd: c.CodesBulk, actor: str) -> dict[str, str]:
        """A codes.bulk's reservations, chunk by chunk as :meth:`HubService.reserve_many`
        takes them (a transaction each), each chunk's parcels built on a worker thread
        while the store writes the chunk before (whose commit, mostly, holds no GIL): the
        store waits only for the first chunk's."""
        rs = cmd.reservations
        parts = [rs[i : i + BULK_CHUNK] for i in range(0, len(rs), BULK_CHUNK)]
        fate: dict[str, str] = {}
        if not parts:
            return fate
        window = self.default_collect_window_s
        items = await asyncio.to_thread(_parcels, parts[0], window)
        nxt: asyncio.Task[list[tuple[d.Parcel, dict[d.Purpose, str]]]] | None = None
        try:
            for k in range(len(parts)):
                if k + 1 < len(parts):
                    nxt = asyncio.create_task(asyncio.to_thread(_parcels, parts[k + 1], window))
                fate.update(await self.service.reserve_many(items, actor=actor))
                if nxt is not None:
                    items, nxt = await nxt, None
        finally:
            if nxt is not None:  # the store failed: the command is not acknowledged
                nxt.cancel()
        return fate

    def _open(self, cmd: c.CompartmentOpen, mqtt: _Mqtt, message: aiomqtt.Message) -> None:
        """A signed remote open: the intent and the inbox row commit together, the
        command is acknowledged, then the pulse; the final reply follows the door."""
        opening = self._reply(cmd.id, cmd.type, ok=True, status="opening")
        acked = False

        def committed() -> None:
            nonlocal acked
            failpoint("cloud.open_committed")
            mqtt.ack(message)
            acked = True

        async def go() -> None:
            outcome = await self.service.open_compartment(
                cmd.compartment,
                actor=f"cloud:{cmd.id}",
                reason=cmd.reason,
                command=Inbox(cmd.id, opening, publish=False),
                committed=committed,
            )
            reply = self._from_outcome(cmd, outcome)
            await self.service.run_db(self.store.answer, Inbox(cmd.id, reply), now=self.clock())
            if not acked:
                mqtt.ack(message)
            self._wake.set()

        task = asyncio.create_task(go(), name=f"open {cmd.id}")
        self._open_tasks.add(task)
        task.add_done_callback(self._open_done)

    def _open_done(self, task: asyncio.Task[None]) -> None:
        self._open_tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # the intent is durable: the next start reconciles it from the door
            log.error("remote_open_failed", task=task.get_name(), exc_info=exc)

    async def settle_unfinished(self) -> None:
        """At start-up: opens the last run began for the cloud but never answered get
        their final reply (the intent itself was reconciled from the doors)."""
        for cid, reply in await self.service.run_db(self.store.unfinished_commands):
            final = {
                **reply,
                "ok": False,
                "status": "interrupted",
                "message": "the hub restarted during the open; its events tell what the door did",
                "at": self.clock(),
            }
            await self.service.run_db(self.store.answer, Inbox(cid, final), now=self.clock())


async def _read(body: bytes | bytearray) -> tuple[Any, c.Command | None, str | None, str]:
    """A command's JSON (whatever JSON value it is; ``None`` if it is no JSON, or is
    read straight into its model), its model if it is validated already (a big
    ``codes.bulk``), and its id and type as far as they can be read (``None``,
    ``"unknown"``): the id finds a redelivery in the inbox, and both go in a refusal's
    reply."""
    if len(body) > BIG and b'"codes.bulk"' in body:
        # a big command (codes.bulk: megabytes) is parsed off the event loop; a valid
        # codes.bulk straight into its model. (Only what names the type: pydantic takes
        # some 60 ms, holding the GIL, to refuse a megabyte of anything else.)
        bulk = await asyncio.to_thread(_valid_bulk, body)
        if bulk is not None:
            return None, bulk, bulk.id, bulk.type  # what the ordinary way reads in it too
    raw: Any = None
    with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):
        raw = await asyncio.to_thread(json.loads, body) if len(body) > BIG else json.loads(body)
    cid = c.valid_id(raw.get("id")) if isinstance(raw, dict) else None
    ctype = raw.get("type") if isinstance(raw, dict) else None
    # echoed in the reply, an event and the log: only a name of a command's shape
    ctype = ctype if isinstance(ctype, str) and _TYPE.fullmatch(ctype) else "unknown"
    return raw, None, cid, ctype


_TYPE = re.compile(c.TYPE_PATTERN)

_TAKEN_OVER = (
    "another client connected with this hub's client id and took its session: a second "
    "lockerd on another box with this hub's identity, or a broker that does not make the "
    "client id the login (use_username_as_clientid, config/mosquitto-lockerd.conf)"
)

# what a signed command's refusal for its signature says (the reply's message;
# docs/cloud-guide.md); a refusal for time says which time is wrong (Verifier.times)
_WHY: dict[RefusalReason, str] = {
    "no_command_key": "the hub has no public key of the cloud installed: nothing signed is taken",
    "unsigned": "this command grants or opens: it must be signed",
    "bad_signature": "the signature does not verify (another key, a changed field, or other "
    "canonical bytes)",
    "no_expiry": "a signed command needs expires_at",
}


def _body(message: aiomqtt.Message) -> bytes:
    return bytes(message.payload)  # (aiomqtt hands paho's bytes on as they came)


def _valid_bulk(body: bytes | bytearray) -> c.CodesBulk | None:
    """A valid ``codes.bulk`` validated straight from its JSON bytes, with no dict of
    its thousands of reservations built first (``json.loads``) only to be validated;
    ``None`` for anything else, which then takes the ordinary way (``json.loads``, the
    id for the inbox, ``validate_python``), refusals included. The same strict models:
    whatever they accept from the bytes, the ordinary way accepts too, as the same
    command (the last of duplicate keys wins in both); a few bodies only the ordinary
    way reads (a UTF-8 byte order mark, a lone surrogate escape) take it, as before."""
    try:
        cmd = c.COMMAND.validate_json(body)
    except ValueError:  # ValidationError, whatever is wrong with it
        return None
    return cmd if isinstance(cmd, c.CodesBulk) else None


def _parcels(
    rs: list[c.Reservation], default_collect_window_s: float
) -> list[tuple[d.Parcel, dict[d.Purpose, str]]]:
    return [reservation(r, default_collect_window_s) for r in rs]


def reservation(
    r: c.Reservation, default_collect_window_s: float = DEFAULT_COLLECT_WINDOW_S
) -> tuple[d.Parcel, dict[d.Purpose, str]]:
    """The parcel and code hashes of a reservation; its collect window is its own
    ``pickup_window_s``, or else ``default_collect_window_s`` (the hub's)."""
    window = r.pickup_window_s
    parcel = d.Parcel(
        r.parcel,
        d.Kind(r.kind),
        d.Size(r.size),
        deposit_from=float(r.deposit_from),
        deposit_until=float(r.deposit_until),
        collect_window_s=float(window) if window is not None else default_collect_window_s,
        accessible=r.accessible,
        has_recall_code=r.recall_code_hash is not None,
    )
    codes = {d.Purpose.DEPOSIT: r.deposit_code_hash, d.Purpose.COLLECT: r.pickup_code_hash}
    if r.recall_code_hash is not None:
        codes[d.Purpose.RECALL] = r.recall_code_hash
    return parcel, codes


__all__ = [
    "DEFAULT_COLLECT_WINDOW_S",
    "CloudLink",
    "Verifier",
    "failpoint",
    "load_command_key",
    "reservation",
]
