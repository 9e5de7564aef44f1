"""The local API: a Unix socket owned by the daemon; one JSON object per line each way.

Request:  ``{"op": "enter_code", "code": "12345678", "terminal": "keypad:1"}``
Reply:    ``{"ok": true, "result": {...}}`` or
          ``{"ok": false, "error": {"type": "bad_request", "message": "..."}}``

The kiosk and ``lockerctl`` both speak it; ``lockerctl`` never opens a serial port.
Every request is validated (pydantic); a malformed one gets an error reply and the
connection stays usable. A code is never logged: requests are logged by ``op`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from lockerd import domain as d
from lockerd.logs import bound
from lockerd.service import HubService, Outcome

log = structlog.get_logger("lockerd.api")

MAX_LINE = 64 * 1024  # a request
MAX_REPLY = 64 * 1024 * 1024


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Status(_Req):
    op: Literal["status"]


class EnterCode(_Req):
    op: Literal["enter_code"]
    code: str = Field(min_length=1, max_length=64)
    terminal: str = Field(default="keypad", min_length=1, max_length=64)


class Open(_Req):
    op: Literal["open"]
    label: str
    reason: str = Field(min_length=1, max_length=500)
    actor: str = Field(min_length=1, max_length=64)


class SetService(_Req):
    op: Literal["service"]
    label: str
    in_service: bool
    actor: str = Field(min_length=1, max_length=64)


class Inspect(_Req):
    op: Literal["inspect"]
    label: str
    holds_parcel: bool
    actor: str = Field(min_length=1, max_length=64)


class Parcels(_Req):
    op: Literal["parcels"]
    states: list[d.ParcelState] | None = None


class Events(_Req):
    op: Literal["events"]
    after_seq: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=10_000)


class Alarms(_Req):
    op: Literal["alarms"]


class Ack(_Req):
    op: Literal["ack"]
    id: int = Field(ge=1)
    actor: str = Field(min_length=1, max_length=64)


class EmptyExpired(_Req):
    op: Literal["empty_expired"]
    actor: str = Field(min_length=1, max_length=64)


class SimDoor(_Req):
    op: Literal["sim_door"]
    label: str
    action: Literal["open", "close", "put", "take", "jam", "unjam"]


class SimBus(_Req):
    op: Literal["sim_bus"]
    bus: str
    action: Literal["dead", "alive"]


class SimStall(_Req):
    op: Literal["sim_stall"]
    seconds: float = Field(gt=0, le=120)


Request = Annotated[
    Status
    | EnterCode
    | Open
    | SetService
    | Inspect
    | Parcels
    | Events
    | Alarms
    | Ack
    | EmptyExpired
    | SimDoor
    | SimBus
    | SimStall,
    Field(discriminator="op"),
]
_REQUEST: TypeAdapter[Any] = TypeAdapter(Request)


def _outcome(o: Outcome) -> dict[str, Any]:
    return {
        "status": o.status,
        "message": o.message,
        "compartment": o.compartment,
        "wait_s": round(o.wait_s, 1),
    }


class ApiServer:
    def __init__(
        self,
        service: HubService,
        path: str | Path,
        *,
        group: str | None = None,
        extra: dict[str, Callable[[], Awaitable[Any]]] | None = None,
    ) -> None:
        self.service = service
        self.path = Path(path)
        self.group = group
        self.extra = extra or {}  # read-only extras, e.g. "bus": the buses' health
        # on a simulated hub: play the person at a door (lockerctl sim door LABEL open|close)
        self.sim_door: Callable[[str, str], str] | None = None
        # ... and every board of a bus losing power (lockerctl sim bus NAME dead|alive)
        self.sim_bus: Callable[[str, str], str] | None = None
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket of a previous run
        self._server = await asyncio.start_unix_server(self._client, self.path, limit=MAX_LINE)
        os.chmod(self.path, 0o660)
        if self.group:
            os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
        log.info("api_listening", socket=str(self.path), group=self.group)

    def stop_accepting(self) -> None:
        """No new connections (a stop drains); requests on open ones are still answered."""
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than MAX_LINE
                    await _send(writer, _error("bad_request", f"request over {MAX_LINE} bytes"))
                    break
                if not line:
                    break
                await _send(writer, await self.handle(line))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def handle(self, line: bytes) -> dict[str, Any]:
        try:
            raw = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error("bad_request", f"not JSON: {exc}")
        if isinstance(raw, dict) and raw.get("op") in self.extra and len(raw) == 1:
            return {"ok": True, "result": await self.extra[raw["op"]]()}
        try:
            req = _REQUEST.validate_python(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            return _error("bad_request", f"{where}: {first['msg']}" if where else first["msg"])
        log.info("api_request", op=req.op)  # never the code itself
        try:
            with bound(request=req.op):
                return {"ok": True, "result": await self._dispatch(req)}
        except Exception as exc:
            log.exception("api_request_failed", op=req.op)
            return _error("internal", f"{type(exc).__name__}: the request failed; see the log")

    async def _status(self) -> dict[str, Any]:
        """Compartments and alarms (the service), boards (the buses' health)."""
        status = await self.service.status()
        if "cloud" in self.extra:
            status["cloud"] = await self.extra["cloud"]()
        if "watchdog" in self.extra:
            status["watchdog"] = await self.extra["watchdog"]()
        if "bus" in self.extra:
            status["boards"] = [
                {"bus": bus["bus"], **board}
                for bus in await self.extra["bus"]()
                for board in bus["boards"]
            ]
        return status

    def _sim(self, req: SimDoor | SimBus | SimStall) -> Any:
        """A simulated hub's stage: the person at a door, a bus losing power, a stall."""
        if self.sim_door is None or self.sim_bus is None:
            return _error("bad_request", "this hub is not simulated: nothing to play with")
        if isinstance(req, SimStall):
            log.warning("sim_stall", seconds=req.seconds)
            time.sleep(req.seconds)
            return {"message": f"the event loop was blocked for {req.seconds:g} s"}
        try:
            if isinstance(req, SimBus):
                return {"message": self.sim_bus(req.bus, req.action)}
            return {"message": self.sim_door(req.label, req.action)}
        except KeyError as exc:
            return _error("bad_request", str(exc.args[0]))

    async def _dispatch(self, req: Any) -> Any:  # noqa: PLR0911 - one per request type
        s = self.service
        if isinstance(req, Status):
            return await self._status()
        if isinstance(req, EnterCode):
            return _outcome(await s.enter_code(req.code, req.terminal))
        if isinstance(req, Open):
            return _outcome(await s.open_compartment(req.label, actor=req.actor, reason=req.reason))
        if isinstance(req, SetService):
            return _outcome(await s.set_service(req.label, req.in_service, actor=req.actor))
        if isinstance(req, Inspect):
            return _outcome(await s.inspect(req.label, req.holds_parcel, actor=req.actor))
        if isinstance(req, Alarms):
            return await s.alarms()
        if isinstance(req, Ack):
            return _outcome(await s.ack(req.id, actor=req.actor))
        if isinstance(req, EmptyExpired):
            return [_outcome(o) for o in await s.empty_expired(actor=req.actor)]
        if isinstance(req, SimDoor | SimBus | SimStall):
            return self._sim(req)
        if isinstance(req, Parcels):
            parcels = await s.parcels(req.states)
            return [
                {
                    "id": p.id,
                    "kind": p.kind.value,
                    "size": p.size.value,
                    "state": p.state.value,
                    "compartment": p.compartment,
                    "collect_until": p.collect_until,
                }
                for p in parcels
            ]
        assert isinstance(req, Events)
        rows = await s.events(req.after_seq, req.limit)
        return [
            {"seq": r.seq, "id": r.id, "type": r.type, "at": r.at, "data": r.data} for r in rows
        ]


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"type": kind, "message": message}}


async def _send(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
    writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


async def call(
    path: str | Path, request: dict[str, Any], *, within: float = 10.0
) -> dict[str, Any]:
    """One request to the daemon's socket (what lockerctl does)."""
    async with asyncio.timeout(within):
        # replies can be long (status of a 1,000-door hub is ~80 kB): the request limit
        # protects the daemon, not the client
        reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_REPLY)
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    if not line:
        raise ConnectionError("lockerd closed the connection without a reply (did it stop?)")
    reply: dict[str, Any] = json.loads(line)
    return reply
