"""Lock boards in software: doors with physics, faults, and the boards' own wire protocols.

A board answers decoded requests with the bytes a real board would send. Time
(the spring delay of a door, a board-timed pulse) runs on the asyncio loop.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lockerd.drivers import kerong, modbus
from lockerd.drivers.framing import pack_bits
from lockerd.drivers.settings import BoardSettings, ModbusRelaySettings, address_range


@dataclass(slots=True)
class Faults:
    """What is wrong with a board right now. All off by default."""

    no_reply: bool = False  # hears and acts, never answers
    late_reply_s: float = 0.0  # answers this much later than it should
    corrupt_checksum: bool = False  # answers with a wrong checksum/CRC
    split_reply: bool = False  # answer written in two parts with a pause between
    split_pause_s: float = 0.005
    garbage: bytes = b""  # noise written before and after each answer
    dead: bool = False  # no power: neither answers nor acts
    jammed: set[int] = field(default_factory=set)  # channels: pulse, but the door stays shut
    bouncing: set[int] = field(default_factory=set)  # channels whose sensor bounces
    bounce_reads: int = 4  # reads after a door change that see the sensor bounce

    def clear(self) -> None:
        fresh = Faults()
        for name in self.__slots__:
            setattr(self, name, getattr(fresh, name))


@dataclass(frozen=True, slots=True)
class Told:
    """A command the board received, for tests to check what the driver did."""

    at: float
    command: str
    channel: int = 0
    value: int = 0


class SimBoard(ABC):
    """A board's doors and locks; the protocol lives in subclasses."""

    kind: ClassVar[str]
    protocol: ClassVar[str]
    max_channels: ClassVar[int]

    def __init__(
        self,
        address: int,
        channels: int | None = None,
        *,
        door_open_bit: int = 1,
        spring_delay_s: float = 0.05,
        pulse_s: float = 0.5,
    ) -> None:
        addresses = address_range(self.kind)
        if address not in addresses:
            raise ValueError(
                f"{self.kind}: no board can have address {address} "
                f"(its addresses are {addresses.start}..{addresses.stop - 1})"
            )
        self.address = address
        self.channels = channels or self.max_channels
        if not 1 <= self.channels <= self.max_channels:
            raise ValueError(f"{self.kind}: channels must be 1..{self.max_channels}")
        self.door_open_bit = door_open_bit
        self.spring_delay_s = spring_delay_s
        self.pulse_s = pulse_s
        self.doors_open = [False] * self.channels
        self.occupied = [False] * self.channels
        self.faults = Faults()
        self.told: list[Told] = []
        self.status_reads = 0
        self._bounce_left = [0] * self.channels
        self._released_until = [0.0] * self.channels

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind}@{self.address}>"

    # -------------------------------------------------------------- people and physics
    def _check(self, channel: int) -> int:
        if not 1 <= channel <= self.channels:
            raise ValueError(f"{self.kind}@{self.address}: no channel {channel}")
        return channel - 1

    def open_door(self, channel: int) -> None:
        """A person pulls the door open (a forced open if the lock did not release it)."""
        self._set_door(self._check(channel), True)

    def close_door(self, channel: int) -> None:
        """A person pushes the door shut; the latch catches."""
        self._set_door(self._check(channel), False)

    def put_parcel(self, channel: int, present: bool = True) -> None:
        """Something is (or is no longer) in the compartment (infrared sensor)."""
        self.occupied[self._check(channel)] = present

    def unlocks_of(self, channel: int) -> int:
        return sum(1 for t in self.told if t.command == "unlock" and t.channel == channel)

    def _set_door(self, index: int, is_open: bool) -> None:
        if self.doors_open[index] != is_open:
            self.doors_open[index] = is_open
            if index + 1 in self.faults.bouncing:
                self._bounce_left[index] = self.faults.bounce_reads

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def release(self, channel: int, seconds: float | None = None) -> None:
        """The lock is pulsed: a spring door pops open after a moment, unless jammed."""
        index = self._check(channel)
        self.told.append(Told(self._now(), "unlock", channel, round((seconds or 0) * 1000)))
        self._released_until[index] = self._now() + (seconds or self.pulse_s)
        if channel in self.faults.jammed:
            return
        if self.spring_delay_s <= 0:
            self._set_door(index, True)
        else:
            asyncio.get_running_loop().call_later(self.spring_delay_s, self._set_door, index, True)

    def sensor_bits(self) -> list[bool]:
        """Door sensor levels as the board reads them, bounce included."""
        self.status_reads += 1
        bits = []
        for i, is_open in enumerate(self.doors_open):
            level = is_open
            if self._bounce_left[i] > 0:
                # a bouncing contact: every other read in the window sees the old level
                if self._bounce_left[i] % 2 == 0:
                    level = not level
                self._bounce_left[i] -= 1
            bits.append(level if self.door_open_bit else not level)
        return bits

    # -------------------------------------------------------------- protocol
    @abstractmethod
    def addressed(self, request: Any) -> bool:
        """Whether ``request`` (a decoded frame of this board's protocol) is for this board."""

    @abstractmethod
    def handle(self, request: Any) -> bytes | None:
        """Act on ``request``; the answer's bytes, or ``None`` if the board stays silent."""

    @abstractmethod
    def corrupt(self, reply: bytes) -> bytes:
        """``reply`` with a wrong checksum."""


class SimCu48(SimBoard):
    kind = "kerong-cu48"
    protocol = "kerong-cu48"
    max_channels = kerong.CU48_CHANNELS

    def __init__(self, address: int, channels: int | None = None, **kw: Any) -> None:
        kw.setdefault("door_open_bit", 0)
        super().__init__(address, channels, **kw)

    def addressed(self, request: Any) -> bool:
        assert isinstance(request, kerong.Cu48Request)
        return request.address in (self.address, kerong.CU48_BROADCAST)

    def handle(self, request: Any) -> bytes | None:
        assert isinstance(request, kerong.Cu48Request)
        if request.command == kerong.CU48_CMD_UNLOCK:
            if request.lock == kerong.CU48_ALL_LOCKS:
                for ch in range(1, self.channels + 1):
                    self.release(ch)
            elif request.lock < self.channels:
                self.release(request.lock + 1)
            return None  # the CU48 never answers an unlock
        if request.address == kerong.CU48_BROADCAST:
            return None
        self.told.append(Told(self._now(), "status"))
        bits = self.sensor_bits() + [not self.door_open_bit] * (48 - self.channels)
        return kerong.Cu48Status(self.address, request.lock, pack_bits(bits, 6)).encode()

    def corrupt(self, reply: bytes) -> bytes:
        return reply[:-1] + bytes(((reply[-1] + 1) & 0xFF,))


class SimCu16(SimBoard):
    """A KR-CU16. With ``answers_unlock`` it answers an unlock (0x31) with its one-board
    status frame (0x35), as some public clients assume; by default it stays silent."""

    kind = "kerong-cu16"
    protocol = "kerong-cu16"
    max_channels = kerong.CU16_CHANNELS

    def __init__(
        self, address: int, channels: int | None = None, *, answers_unlock: bool = False, **kw: Any
    ) -> None:
        kw.setdefault("door_open_bit", 0)
        super().__init__(address, channels, **kw)
        self.answers_unlock = answers_unlock

    def addressed(self, request: Any) -> bool:
        assert isinstance(request, kerong.Cu16Request)
        return request.board == self.address

    def handle(self, request: Any) -> bytes | None:
        assert isinstance(request, kerong.Cu16Request)
        if request.command == kerong.CU16_CMD_UNLOCK:
            if request.lock < self.channels:
                self.release(request.lock + 1)
            # the board's sensors as they are right after the pulse starts
            return self._status() if self.answers_unlock else None
        if request.command == kerong.CU16_CMD_UNLOCK_ALL:
            for ch in range(1, self.channels + 1):
                self.release(ch)
            return None
        if request.command != kerong.CU16_CMD_STATUS:
            return None  # documented but not simulated: a real board would answer
        self.told.append(Told(self._now(), "status"))
        return self._status()

    def _status(self) -> bytes:
        """The one-board status frame (0x35): lock bits, then infrared occupancy bits."""
        bits = self.sensor_bits() + [not self.door_open_bit] * (16 - self.channels)
        ir = self.occupied + [False] * (16 - self.channels)
        return kerong.Cu16Status(self.address, pack_bits(bits, 2), pack_bits(ir, 2)).encode()

    def corrupt(self, reply: bytes) -> bytes:
        return reply[:-1] + bytes(((reply[-1] + 1) & 0xFF,))


class SimModbusRelay(SimBoard):
    """A Waveshare-style relay + input board: coils are relays, inputs are door sensors.

    Supports FC01, FC02, FC05 (ON/OFF on a coil; a pulse length in 100 ms units on
    ``flash_base + channel``), FC06 on the flash addresses, FC0F. Anything else
    gets the exception a real board would send.
    """

    kind = "modbus-relay"
    protocol = "modbus-rtu"
    max_channels = 64

    def __init__(
        self,
        address: int,
        channels: int | None = 8,
        *,
        coil_base: int = 0,
        input_base: int = 0,
        flash_base: int = 0x0200,
        flash: bool = True,
        **kw: Any,
    ) -> None:
        super().__init__(address, channels, **kw)
        self.coil_base = coil_base
        self.input_base = input_base
        self.flash_base = flash_base
        self.flash = flash
        self.relays = [False] * self.channels
        self.refuse_functions: set[int] = set()  # answered with exception 1

    def addressed(self, request: Any) -> bool:
        assert isinstance(request, modbus.ModbusRequest)
        return request.device in (self.address, 0)

    def _set_relay(self, index: int, on: bool) -> None:
        was = self.relays[index]
        self.relays[index] = on
        if on and not was:
            self.release(index + 1, seconds=3600.0)
        elif not on:
            self._released_until[index] = 0.0

    def _flash(self, index: int, units: int) -> None:
        self.relays[index] = True
        self.release(index + 1, seconds=units / 10)
        asyncio.get_running_loop().call_later(units / 10, self._flash_end, index)

    def _flash_end(self, index: int) -> None:
        self.relays[index] = False

    def _in_range(self, base: int, address: int, count: int) -> bool:
        return base <= address and address + count <= base + self.channels

    def handle(self, request: Any) -> bytes | None:
        assert isinstance(request, modbus.ModbusRequest)
        reply = self._handle(request)
        return None if request.device == 0 else reply

    def _handle(self, r: modbus.ModbusRequest) -> bytes:  # noqa: PLR0911 - one per function
        dev, fc = self.address, r.function
        if fc in self.refuse_functions:  # a cheaper board without this function
            return modbus.exception_reply(dev, fc, modbus.EX_ILLEGAL_FUNCTION)
        if not r.valid:
            return modbus.exception_reply(dev, fc, modbus.EX_ILLEGAL_VALUE)
        if fc == modbus.FC_READ_DISCRETE_INPUTS:
            if not self._in_range(self.input_base, r.address, r.count):
                return modbus.exception_reply(dev, fc, modbus.EX_ILLEGAL_ADDRESS)
            self.told.append(Told(self._now(), "status"))
            bits = self.sensor_bits()[r.address - self.input_base :][: r.count]
            return modbus.bits_reply(dev, fc, bits)
        if fc == modbus.FC_READ_COILS:
            if not self._in_range(self.coil_base, r.address, r.count):
                return modbus.exception_reply(dev, fc, modbus.EX_ILLEGAL_ADDRESS)
            start = r.address - self.coil_base
            return modbus.bits_reply(dev, fc, self.relays[start : start + r.count])
        if fc in (modbus.FC_WRITE_COIL, modbus.FC_WRITE_REGISTER):
            return self._write_one(r)
        if fc == modbus.FC_WRITE_COILS:
            if not self._in_range(self.coil_base, r.address, r.count):
                return modbus.exception_reply(dev, fc, modbus.EX_ILLEGAL_ADDRESS)
            self.told.append(Told(self._now(), "write-coils", value=len(r.bits)))
            for i, bit in enumerate(r.bits):
                self._set_relay(r.address - self.coil_base + i, bit)
            return modbus.write_coils_reply(dev, r.address, r.count)
        return modbus.exception_reply(dev, fc, modbus.EX_ILLEGAL_FUNCTION)

    def _write_one(self, r: modbus.ModbusRequest) -> bytes:
        dev, fc = self.address, r.function
        if self.flash and self._in_range(self.flash_base, r.address, 1):
            if not 1 <= r.value <= 255:
                return modbus.exception_reply(dev, fc, modbus.EX_ILLEGAL_VALUE)
            self._flash(r.address - self.flash_base, r.value)
            return modbus.echo_reply(dev, fc, r.address, r.value)
        if fc == modbus.FC_WRITE_COIL and self._in_range(self.coil_base, r.address, 1):
            if r.value not in (modbus.COIL_ON, modbus.COIL_OFF):
                return modbus.exception_reply(dev, fc, modbus.EX_ILLEGAL_VALUE)
            index = r.address - self.coil_base
            self.told.append(Told(self._now(), "coil", index + 1, int(r.value == modbus.COIL_ON)))
            self._set_relay(index, r.value == modbus.COIL_ON)
            return modbus.echo_reply(dev, fc, r.address, r.value)
        return modbus.exception_reply(dev, fc, modbus.EX_ILLEGAL_ADDRESS)

    def corrupt(self, reply: bytes) -> bytes:
        return reply[:-2] + bytes((reply[-2] ^ 0xFF, reply[-1]))


BOARD_TYPES: dict[str, type[SimBoard]] = {
    cls.kind: cls for cls in (SimCu48, SimCu16, SimModbusRelay)
}


def board_for(settings: BoardSettings, *, spring_delay_s: float = 0.3) -> SimBoard:
    """The simulated board that answers like the configured one, register map included
    (a new board kind: its driver in drivers/boards.py, its simulation here)."""
    extra: dict[str, Any] = {}
    if isinstance(settings, ModbusRelaySettings):
        extra = {
            "coil_base": settings.coil_base,
            "input_base": settings.input_base,
            "flash_base": settings.flash_base,
        }
    return BOARD_TYPES[settings.kind](
        settings.address,
        settings.channels,
        door_open_bit=settings.door_open_bit,
        spring_delay_s=spring_delay_s,
        **extra,
    )
