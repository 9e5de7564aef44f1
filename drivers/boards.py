"""One interface for every lock board, implemented per protocol over a :class:`Bus`.

Channels are numbered from 1, as on the boards' labels and in the vendors'
documents. A reading gives every channel's door (and occupancy, where the board
has sensors for it) from one bus transaction.
"""

from __future__ import annotations

import asyncio
import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, assert_never

import structlog

from lockerd.drivers import kerong, modbus
from lockerd.drivers.bus import Bus, Exchange, Priority
from lockerd.drivers.errors import (
    BusError,
    EncodeError,
    ReplyTimeout,
    UnlockNotSent,
    UnlockUnconfirmed,
)
from lockerd.drivers.settings import BoardSettings, Cu16Settings, Cu48Settings, ModbusRelaySettings

log = structlog.get_logger(__name__)

S = TypeVar("S", bound=Cu48Settings | Cu16Settings | ModbusRelaySettings)


class UnlockAck(enum.Enum):
    """What an unlock returned. Neither means the door opened: only a reading says that."""

    SENT = "sent"  # the board does not answer unlocks (Kerong)
    ACKNOWLEDGED = "acknowledged"  # the board echoed the command (Modbus)


@dataclass(frozen=True, slots=True)
class DoorReading:
    """Every channel's door of one board from one transaction; index 0 is channel 1."""

    board: str
    doors_open: tuple[bool, ...]
    occupied: tuple[bool, ...] | None = None


@dataclass(frozen=True, slots=True)
class BoardInfo:
    key: str
    kind: str
    address: int
    channels: int
    occupancy_sensors: bool
    bus: str
    online: bool


class BoardRejected(BusError):
    """The board answered with an error (a Modbus exception): a setting is wrong."""


class Board(ABC, Generic[S]):
    """A lock board at one address on one bus."""

    def __init__(self, bus: Bus, settings: S) -> None:
        self.bus = bus
        self.settings: S = settings
        self.key = f"{settings.kind}@{settings.address}"
        self._log = log.bind(bus=bus.name, board=self.key)

    @property
    def channels(self) -> int:
        return int(self.settings.channels)

    @property
    def has_occupancy(self) -> bool:
        return False

    def describe(self) -> BoardInfo:
        return BoardInfo(
            key=self.key,
            kind=self.settings.kind,
            address=self.settings.address,
            channels=self.channels,
            occupancy_sensors=self.has_occupancy,
            bus=self.bus.name,
            online=self.bus.health_of(self.key).online,
        )

    async def probe(self) -> BoardInfo:
        """Ask the board once; its description if it answers (raises otherwise)."""
        await self.read()
        return self.describe()

    async def prepare(self) -> None:
        """Bring the board to a safe state (no relay energised); called at start and after
        the board comes back online."""

    @abstractmethod
    async def read(self) -> DoorReading:
        """Every channel's door (and occupancy) in one transaction."""

    @abstractmethod
    async def unlock(self, channel: int) -> UnlockAck:
        """Pulse one lock. Never retried: on doubt, read the door and decide."""

    def _check_channel(self, channel: int) -> None:
        if not 1 <= channel <= self.channels:
            raise EncodeError(
                f"board {self.key}: channel {channel} out of range 1..{self.channels}"
            )

    def _doors(self, raw: tuple[bool, ...]) -> tuple[bool, ...]:
        open_bit = bool(self.settings.door_open_bit)
        return tuple(bit == open_bit for bit in raw[: self.channels])

    async def _unlock(self, exchange: Exchange[Any]) -> Any:
        try:
            reply = await self.bus.transact(exchange)
        except ReplyTimeout as exc:
            raise UnlockUnconfirmed(
                f"board {self.key}: {exchange.what} sent, no acknowledgement; "
                "read the door before trying again",
                bus=self.bus.name,
                board=self.key,
            ) from exc
        self._check_reply(exchange, reply)
        return reply

    def _check_reply(self, exchange: Exchange[Any], reply: Any) -> None:
        """Raise if the board answered with a refusal (protocols with error replies)."""


K = TypeVar("K", bound=Cu48Settings | Cu16Settings)


class _KerongBoard(Board[K]):
    """What Kerong boards share: a fixed status request, and unlocks without a reply."""

    UNLOCK_MAY_REPLY = 0  # bytes a board of this kind may send back to an unlock anyway

    def __init__(self, bus: Bus, settings: K) -> None:
        super().__init__(bus, settings)
        self._unlocks: dict[int, Exchange[Any]] = {}
        # the status request never changes: built once, not on every poll
        self._status = self._status_exchange()

    @abstractmethod
    def _status_exchange(self) -> Exchange[Any]: ...

    @abstractmethod
    def _encode_unlock(self, channel: int) -> bytes: ...

    async def unlock(self, channel: int) -> UnlockAck:
        exchange = self._unlocks.get(channel)
        if exchange is None:
            self._check_channel(channel)
            exchange = self._unlocks[channel] = Exchange(
                board=self.key,
                request=self._encode_unlock(channel),
                priority=Priority.UNLOCK,
                reply_len=self.UNLOCK_MAY_REPLY,
                what=f"unlock {channel}",
                precheck=self._status,
            )
        await self.bus.transact(exchange)
        return UnlockAck.SENT


class KerongCu48(_KerongBoard[Cu48Settings]):
    """Kerong KR-CU48: 48 locks, status of all in one 12-byte reply; unlocks unanswered."""

    def _status_exchange(self) -> Exchange[Any]:
        address = self.settings.address
        return Exchange(
            board=self.key,
            request=kerong.cu48_read_status(address).encode(),
            priority=Priority.READ,
            decoder=kerong.Cu48ReplyDecoder,
            match=lambda f: f.address == address,
            reply_len=kerong.CU48_STATUS_LEN,
            what="status",
        )

    def _encode_unlock(self, channel: int) -> bytes:
        return kerong.cu48_unlock(self.settings.address, channel).encode()

    async def read(self) -> DoorReading:
        frame = await self.bus.transact(self._status)
        assert frame is not None
        return DoorReading(self.key, self._doors(frame.bits()))


class KerongCu16(_KerongBoard[Cu16Settings]):
    """Kerong KR-CU16: 16 locks and 16 infrared occupancy sensors in one 9-byte reply."""

    # sources disagree whether a CU16 answers an unlock (ADR 0004): keep the line free
    # for a status reply, so the next request never collides with it
    UNLOCK_MAY_REPLY = kerong.CU16_STATUS_LEN

    @property
    def has_occupancy(self) -> bool:
        return bool(self.settings.infrared)

    def _status_exchange(self) -> Exchange[Any]:
        address = self.settings.address
        return Exchange(
            board=self.key,
            request=kerong.cu16_read_status(address).encode(),
            priority=Priority.READ,
            decoder=kerong.Cu16ReplyDecoder,
            match=lambda f: f.board == address,
            reply_len=kerong.CU16_STATUS_LEN,
            what="status",
        )

    def _encode_unlock(self, channel: int) -> bytes:
        return kerong.cu16_unlock(self.settings.address, channel).encode()

    async def read(self) -> DoorReading:
        frame = await self.bus.transact(self._status)
        assert frame is not None
        occupied = None
        if self.settings.infrared:
            occupied_bit = bool(self.settings.occupied_bit)
            occupied = tuple(b == occupied_bit for b in frame.infrared_bits()[: self.channels])
        return DoorReading(self.key, self._doors(frame.lock_bits()), occupied)


class ModbusRelay(Board[ModbusRelaySettings]):
    """A Modbus RTU relay + input board: locks on coils, door sensors on discrete inputs."""

    RELAY_OFF_ATTEMPTS = 3

    def _exchange(
        self,
        request: bytes,
        function: int,
        priority: Priority,
        what: str,
        *,
        address: int = -1,
        value: int = -1,
        precheck: bool = False,
    ) -> Exchange[modbus.ModbusReply]:
        """An exchange whose reply must come from our device, for the same function, and
        (for writes) echo the same address and value; an exception reply also matches."""
        device = self.settings.address

        def match(reply: modbus.ModbusReply) -> bool:
            if reply.device != device or reply.function != function:
                return False
            if reply.exception is not None:
                return True
            return (address < 0 or reply.address == address) and (value < 0 or reply.value == value)

        reply_len = 5 + (self.channels + 7) // 8 if function <= 2 else 8
        return Exchange(
            board=self.key,
            request=request,
            priority=priority,
            decoder=lambda: modbus.ModbusReplyDecoder(device, function),
            match=match,
            reply_len=reply_len,
            what=what,
            precheck=self._status if precheck else None,
        )

    async def _call(self, exchange: Exchange[modbus.ModbusReply]) -> modbus.ModbusReply:
        reply = await self.bus.transact(exchange)
        assert reply is not None
        self._check_reply(exchange, reply)
        return reply

    def _check_reply(self, exchange: Exchange[Any], reply: Any) -> None:
        assert isinstance(reply, modbus.ModbusReply)
        if reply.exception is not None:
            raise BoardRejected(
                f"board {self.key}: {exchange.what} refused with Modbus exception "
                f"{reply.exception}: {self._hint(reply.function, reply.exception)}",
                bus=self.bus.name,
                board=self.key,
            )

    def _hint(self, function: int, code: int) -> str:
        """What a technician should change for exception ``code`` to ``function``."""
        s = self.settings
        if code == modbus.EX_ILLEGAL_FUNCTION:
            if function in (s.flash_function,) and s.pulse == "board":
                return "the board has no board-timed pulse: set pulse='software'"
            return f"the board does not support function {function:#04x}"
        if code == modbus.EX_ILLEGAL_ADDRESS:
            field = {
                modbus.FC_READ_DISCRETE_INPUTS: "input_base",
                modbus.FC_READ_COILS: "coil_base",
                modbus.FC_WRITE_COILS: "coil_base",
            }.get(function, "flash_base" if s.pulse == "board" else "coil_base")
            return f"address out of the board's range: check {field} and channels ({s.channels})"
        if code == modbus.EX_ILLEGAL_VALUE:
            return "value refused: check pulse_ms (board-timed pulses take 100 ms units)"
        return "see the board's manual for this exception code"

    def __init__(self, bus: Bus, settings: ModbusRelaySettings) -> None:
        super().__init__(bus, settings)
        self._relays = asyncio.Lock()  # prepare and unlock never interleave on one board
        self._pulse_until = 0.0  # when the last board-timed pulse ends
        self._status = self._exchange(
            modbus.read_discrete_inputs(settings.address, settings.input_base, settings.channels),
            modbus.FC_READ_DISCRETE_INPUTS,
            Priority.READ,
            "read door inputs",
        )

    async def read(self) -> DoorReading:
        s = self.settings
        reply = await self._call(self._status)
        if len(reply.bits) < s.channels:
            raise BoardRejected(
                f"board {self.key}: {len(reply.bits)} inputs in reply, {s.channels} asked",
                bus=self.bus.name,
                board=self.key,
            )
        return DoorReading(self.key, self._doors(reply.bits))

    async def read_relays(self) -> tuple[bool, ...]:
        s = self.settings
        reply = await self._call(
            self._exchange(
                modbus.read_coils(s.address, s.coil_base, s.channels),
                modbus.FC_READ_COILS,
                Priority.CONTROL,
                "read relays",
            )
        )
        return reply.bits[: s.channels]

    async def prepare(self) -> None:
        """All relays off, then read back: no lock may be left energised at start-up.

        Waits for a pulse in progress to end (it would be cut short). Boards without
        FC0F get one FC05 per relay.
        """
        s = self.settings
        async with self._relays:
            pending = self._pulse_until - asyncio.get_running_loop().time()
            if pending > 0:
                await asyncio.sleep(pending)
            try:
                await self._call(
                    self._exchange(
                        modbus.write_coils(s.address, s.coil_base, [False] * s.channels),
                        modbus.FC_WRITE_COILS,
                        Priority.CONTROL,
                        "all relays off",
                        address=s.coil_base,
                    )
                )
            except BoardRejected as exc:
                if f"exception {modbus.EX_ILLEGAL_FUNCTION}" not in str(exc):
                    raise
                for channel in range(1, s.channels + 1):
                    await self._write_relay_off(
                        s.coil_base + channel - 1, channel, Priority.CONTROL
                    )
            on = [i + 1 for i, bit in enumerate(await self.read_relays()) if bit]
        if on:
            raise BoardRejected(
                f"board {self.key}: relays {on} still on after 'all off'; check the board",
                bus=self.bus.name,
                board=self.key,
            )

    async def unlock(self, channel: int) -> UnlockAck:
        self._check_channel(channel)
        async with self._relays:
            if self.settings.pulse == "board":
                return await self._flash(channel)
            return await self._software_pulse(channel)

    async def _flash(self, channel: int) -> UnlockAck:
        s = self.settings
        address = s.flash_base + channel - 1
        units = s.pulse_ms // 100
        if s.flash_function == modbus.FC_WRITE_COIL:
            request = modbus.write_coil_value(s.address, address, units)
        else:
            request = modbus.write_register(s.address, address, units)
        exchange = self._exchange(
            request,
            s.flash_function,
            Priority.UNLOCK,
            f"unlock {channel}",
            address=address,
            precheck=True,
        )
        reply = await self._unlock(exchange)
        self._pulse_until = asyncio.get_running_loop().time() + s.pulse_ms / 1000
        if reply.value != units:
            # Not a flash-on board: it took the value as something else (FC05: coil ON,
            # latched). Switch that address off (always safe), and say what to change.
            if s.flash_function == modbus.FC_WRITE_COIL:
                await self._relay_off(address, channel)
            self._pulse_until = 0.0
            raise BoardRejected(
                f"board {self.key}: unlock {channel} echoed value {reply.value:#06x} for "
                f"{units:#06x} at {address:#06x}: the board has no board-timed pulse "
                "there; set pulse='software' (or the right flash_base)",
                bus=self.bus.name,
                board=self.key,
            )
        return UnlockAck.ACKNOWLEDGED

    async def _software_pulse(self, channel: int) -> UnlockAck:
        s = self.settings
        coil = s.coil_base + channel - 1
        exchange = self._exchange(
            modbus.write_coil(s.address, coil, True),
            modbus.FC_WRITE_COIL,
            Priority.UNLOCK,
            f"unlock {channel}",
            address=coil,
            value=modbus.COIL_ON,
            precheck=True,
        )
        async with self.bus.hold():  # a closing bus waits for the relay to go off
            try:
                await self._unlock(exchange)
            except (BoardRejected, UnlockNotSent):
                raise  # refused, or never sent: the relay did not switch
            except BaseException:
                # a timeout or a cancel: the relay may have switched, so it must go off.
                await asyncio.shield(self._relay_off(coil, channel))
                raise
            try:
                await asyncio.sleep(s.pulse_ms / 1000)
            finally:
                # Off is safe to repeat, unlike an unlock; shielded so a cancel can't skip it.
                await asyncio.shield(self._relay_off(coil, channel))
        return UnlockAck.ACKNOWLEDGED

    async def _write_relay_off(self, coil: int, channel: int, priority: Priority) -> None:
        s = self.settings
        await self._call(
            self._exchange(
                modbus.write_coil(s.address, coil, False),
                modbus.FC_WRITE_COIL,
                priority,
                f"relay {channel} off",
                address=coil,
                value=modbus.COIL_OFF,
            )
        )

    async def _relay_off(self, coil: int, channel: int) -> None:
        """Switch one relay off, trying a few times (off is safe to repeat)."""
        error = ""
        for attempt in range(1, self.RELAY_OFF_ATTEMPTS + 1):
            try:
                # UNLOCK priority: it goes first, and is never refused for an offline board
                await self._write_relay_off(coil, channel, Priority.UNLOCK)
            except BusError as exc:
                error = str(exc)
                self._log.warning("relay_off_failed", channel=channel, attempt=attempt, error=error)
            else:
                return
        self._log.error(
            "relay_may_be_on",
            channel=channel,
            error=error,
            hint="the relay could not be confirmed off; it is switched off again when the "
            "board is prepared (at start and when it comes back online)",
        )


def make_board(bus: Bus, settings: BoardSettings) -> Board[Any]:
    """The driver for ``settings.kind`` (a new board kind: its case here)."""
    match settings:
        case Cu48Settings():
            return KerongCu48(bus, settings)
        case Cu16Settings():
            return KerongCu16(bus, settings)
        case ModbusRelaySettings():
            return ModbusRelay(bus, settings)
        case _:
            assert_never(settings)
