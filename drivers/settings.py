"""Settings of buses and boards, validated by pydantic.

The hub config (``lockerd.config``) embeds these models as they are, so a setting
has one definition, one default and one error message.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BusSettings(_Settings):
    """One serial line (or serial-over-TCP gateway) and how to talk on it."""

    port: str = Field(
        description="tty path (prefer /dev/serial/by-id/...) or tcp://HOST:PORT of a gateway",
    )
    baudrate: int = Field(default=19200, gt=0, description="line speed, 8N1")
    gap_ms: float = Field(
        default=5.0,
        ge=0,
        le=1000,
        description="silence enforced between a reply and the next request",
    )
    timeout_ms: float = Field(
        default=100.0,
        gt=0,
        le=10_000,
        description="how long a board may take to start answering, on top of the frames' wire time",
    )
    read_attempts: int = Field(
        default=2, ge=1, le=10, description="tries of a read (unlocks: always 1)"
    )
    offline_after: int = Field(
        default=3, ge=1, description="consecutive failed requests after which a board is offline"
    )
    offline_probe_s: float = Field(
        default=5.0, gt=0, description="how often an offline board is asked whether it is back"
    )
    reopen_min_s: float = Field(
        default=0.2, gt=0, description="first wait before reopening a lost port"
    )
    reopen_max_s: float = Field(
        default=10.0, gt=0, description="longest wait between reopen attempts"
    )
    local_echo: bool = Field(
        default=False,
        description="the adapter hears its own transmitter (2-wire RS-485 without echo "
        "suppression): drop our own request from what comes back",
    )

    @field_validator("port")
    @classmethod
    def _port_shape(cls, value: str) -> str:
        if value.startswith("tcp://"):
            hostport = value.removeprefix("tcp://")
            host, sep, port = hostport.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected tcp://HOST:PORT, got {value!r}")
        elif not value.startswith("/"):
            raise ValueError(
                f"expected an absolute tty path such as /dev/serial/by-id/... "
                f"or tcp://HOST:PORT, got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _reopen_order(self) -> BusSettings:
        if self.reopen_max_s < self.reopen_min_s:
            raise ValueError("reopen_max_s must be at least reopen_min_s")
        return self


SensorBit = Literal[0, 1]


class Cu48Settings(_Settings):
    kind: Literal["kerong-cu48"] = "kerong-cu48"
    address: int = Field(ge=0, le=9, description="board address 0..9 (DIP switches)")
    channels: int = Field(default=48, ge=1, le=48)
    door_open_bit: SensorBit = Field(
        default=0,
        description="raw hook-switch bit that means 'door open' (sources: 1 = closed; ADR 0004)",
    )


class Cu16Settings(_Settings):
    kind: Literal["kerong-cu16"] = "kerong-cu16"
    address: int = Field(ge=0, le=15, description="board address 0..15")
    channels: int = Field(default=16, ge=1, le=16)
    door_open_bit: SensorBit = Field(
        default=0, description="raw lock bit that means 'door open' (1 = closed)"
    )
    infrared: bool = Field(default=True, description="the board has infrared occupancy sensors")
    occupied_bit: SensorBit = Field(default=1, description="raw infrared bit that means 'occupied'")


class ModbusRelaySettings(_Settings):
    """A Modbus RTU relay + input board: relays are coils, door sensors discrete inputs."""

    kind: Literal["modbus-relay"] = "modbus-relay"
    address: int = Field(ge=1, le=247, description="Modbus device id (slave address)")
    channels: int = Field(default=8, ge=1, le=64)
    coil_base: int = Field(default=0, ge=0, le=0xFFFF, description="coil of channel 1")
    input_base: int = Field(default=0, ge=0, le=0xFFFF, description="discrete input of channel 1")
    door_open_bit: SensorBit = Field(default=1, description="input level that means 'door open'")
    pulse: Literal["board", "software"] = Field(
        default="board",
        description="board: the board times the pulse (flash-on), safe across crashes; "
        "software: coil on, wait, coil off",
    )
    pulse_ms: int = Field(default=500, ge=100, le=25_500, description="unlock pulse length")
    flash_base: int = Field(
        default=0x0200, ge=0, le=0xFFFF, description="flash-on address of channel 1"
    )
    flash_function: Literal[5, 6] = Field(
        default=5, description="function code of the flash-on write (FC05 or FC06, board dependent)"
    )

    @model_validator(mode="after")
    def _pulse_units(self) -> ModbusRelaySettings:
        if self.pulse == "board" and self.pulse_ms % 100:
            raise ValueError("pulse_ms must be a multiple of 100 for a board-timed pulse")
        for name in ("coil_base", "input_base", "flash_base"):
            if getattr(self, name) + self.channels > 0x10000:
                raise ValueError(f"{name} + channels goes past the last Modbus address 0xFFFF")
        return self


BoardSettings = Annotated[
    Cu48Settings | Cu16Settings | ModbusRelaySettings, Field(discriminator="kind")
]
# every kind a config may name (a new board kind: its settings above, in this union)
BOARD_KINDS: tuple[str, ...] = tuple(
    get_args(m.model_fields["kind"].annotation)[0] for m in get_args(get_args(BoardSettings)[0])
)


def address_range(kind: str) -> range:
    """The addresses a board of ``kind`` can have: the bounds of its settings' ``address``
    (a CU48 0..9, a CU16 0..15, a Modbus device 1..247; docs: HARDWARE facts)."""
    for model in get_args(get_args(BoardSettings)[0]):
        if get_args(model.model_fields["kind"].annotation)[0] == kind:
            bounds = model.model_json_schema()["properties"]["address"]
            return range(int(bounds["minimum"]), int(bounds["maximum"]) + 1)
    raise KeyError(f"no board kind {kind!r}; one of {', '.join(BOARD_KINDS)}")
