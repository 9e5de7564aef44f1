"""The hub config: one TOML file, validated by pydantic, checked as a whole.

:func:`load` returns a :class:`HubConfig` or raises :class:`ConfigInvalid`, which
carries every problem found (not only the first), each with its place in the
file (a path such as ``compartments[12].channel`` and, where it can be found, a
line number) and a fix a technician understands.

Bus and board settings are the models of :mod:`lockerd.drivers.settings`, embedded as
they are: one definition, one default, one error message per setting.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from lockerd.drivers.framing import frame_silence
from lockerd.drivers.settings import BOARD_KINDS, BoardSettings, BusSettings
from lockerd.errors import LockerdError

SizeClass = Literal["S", "M", "L", "XL"]
SIZES: tuple[SizeClass, ...] = ("S", "M", "L", "XL")
LABEL_RE = re.compile(r"^[A-Z]{1,3}[0-9]{1,3}$")


class ThrottlePolicy(BaseModel):
    """How wrong codes slow a terminal and the hub (embedded in the hub config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    free_attempts: int = Field(
        default=3,
        ge=1,
        description="wrong codes a terminal may enter one right after another (all that "
        "a burst gets checked); the first delay follows the last of them",
    )
    base_delay_s: float = Field(
        default=2.0, gt=0, description="first delay; doubles with each wrong code after"
    )
    max_delay_s: float = Field(default=300.0, gt=0, description="longest delay")
    alarm_after: int = Field(
        default=10, ge=1, description="wrong codes from one terminal that raise an alarm"
    )
    hub_wide_per_hour: int = Field(
        default=20,
        ge=1,
        description="wrong codes in the window, all terminals together, after which every "
        "terminal waits the longest delay",
    )
    window_s: float = Field(default=3600.0, gt=0, description="how long a wrong code counts")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _BusHead(BusSettings):
    """A bus without its boards (check-config validates the boards one by one)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="short name, e.g. A")


class BusConfig(_BusHead):
    """A bus: its port settings (lockerd.drivers.settings.BusSettings), a name and its boards."""

    boards: list[BoardSettings] = Field(min_length=1)


class Compartment(_Model):
    label: str = Field(description="what the public sees on the door, e.g. A07")
    size: SizeClass
    bus: str
    board: int = Field(ge=0, le=247, description="the board's address on that bus")
    channel: int = Field(ge=1, description="the lock/sensor channel on that board, from 1")
    accessible: bool = Field(default=False, description="reachable from a wheelchair")

    @field_validator("label")
    @classmethod
    def _label_shape(cls, value: str) -> str:
        if not LABEL_RE.match(value):
            raise ValueError("a label is 1-3 capital letters then 1-3 digits, e.g. A07")
        return value


class Timers(_Model):
    """How long the hub waits for things: polls, door confirmations, alarms."""

    open_confirm_s: float = Field(
        default=3.0, gt=0, le=60, description="how long an opened door may take to be seen open"
    )
    left_open_alarm_s: float = Field(
        default=120.0, gt=0, description="alarm when a door stays open longer than this"
    )
    pickup_window_h: float = Field(
        default=72.0, gt=0, description="default time a stored parcel waits for its resident"
    )
    poll_interval_s: float = Field(
        default=0.5, gt=0, le=10, description="door poll cycle of every board"
    )
    debounce_reads: int = Field(
        default=2, ge=1, le=10, description="equal readings before a door change counts"
    )
    bus_stale_s: float = Field(
        default=30.0,
        ge=2,
        description="watchdog: a bus that answered and then stays silent this long with its "
        "port open is wedged; the ping to systemd is held back so that it restarts lockerd",
    )


class Codes(_Model):
    length: int = Field(default=8, ge=6, le=16, description="digits in a code")
    key_file: str = Field(
        default="keys/code-hmac.key",
        description="HMAC key for code hashes, relative to state_dir unless absolute; "
        "readable only by the daemon",
    )
    throttle: ThrottlePolicy = ThrottlePolicy()
    fallback_to_larger: bool = Field(
        default=True, description="a parcel may take a larger compartment when its size is full"
    )


class Paths(_Model):
    """Where the hub keeps its state and its sockets, and who may use them."""

    state_dir: str = Field(default="/var/lib/lockerd", description="the store and keys")
    socket: str = Field(
        default="/run/lockerd/api.sock",
        description="the technician socket (lockerctl): who connects is told by the kernel "
        "(SO_PEERCRED), and the audit names that user (ADR 0015)",
    )
    technician_group: str | None = Field(
        default=None,
        description="members of this group (primary or supplementary) may use the "
        "technician socket, which is 0660 with this group; root and lockerd's own user "
        "always may. Keypads and kiosks get sockets of their own: [[terminals]]",
    )
    disk_reserve_mb: float = Field(
        default=8.0,
        ge=0,
        le=1024,
        description="space kept back next to the store: when the disk fills up it is freed "
        "so that pickups go on (0: none)",
    )


class Cloud(_Model):
    """The MQTT link to the operator's cloud (docs/cloud-guide.md, docs/asyncapi.json).
    Absent: the hub runs alone."""

    url: str = Field(
        pattern=r"^mqtts?://[^/:]+(:[0-9]{1,5})?/?$",
        description="mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS)",
    )
    prefix: str = Field(default="lockers", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    client_id: str | None = Field(
        default=None,
        description="default: the hub id. Under the shipped broker settings "
        "(config/mosquitto-lockerd.conf) the broker makes it the hub's login anyway",
    )
    username: str | None = None
    password_file: str | None = Field(
        default=None, description="file holding the MQTT password (not the password itself)"
    )
    ca_file: str | None = Field(default=None, description="CA that signed the broker (mqtts)")
    cert_file: str | None = Field(default=None, description="this hub's client certificate")
    key_file: str | None = Field(default=None, description="this hub's client key")
    command_key_file: str = Field(
        default="keys/cloud-commands.pub",
        description="the cloud's Ed25519 public key (PEM) that signs every command that "
        "opens a door or grants a code (contract.SIGNED)",
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(
        default=7 * 86_400, ge=0, description="how long the broker keeps our session offline"
    )
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    command_skew_s: float = Field(
        default=30.0, ge=0, le=600, description="clock difference tolerated on signed commands"
    )
    command_max_life_s: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="longest lifetime of a signed command that opens a door now (compartment.open)",
    )
    grant_max_life_s: float = Field(
        default=7 * 86_400.0,
        gt=0,
        le=90 * 86_400,
        description="longest lifetime of a signed grant (parcel.reserve, return.reserve, "
        "parcel.update_codes, parcel.recall, codes.bulk): sent ahead, it may wait in the "
        "broker's session while the hub is offline. A replay is refused by its id in the "
        "inbox while it is valid, so the inbox (and the code tombstones) must be kept at "
        "least this long plus command_skew_s",
    )
    outbox_quota_mb: float = Field(
        default=64.0, gt=0, description="disk for events waiting for the cloud"
    )
    state_coalesce_s: float = Field(
        default=1.0, ge=0, le=60, description="compartment snapshots at most this often"
    )
    max_packet_kb: int = Field(
        default=1024,
        ge=64,
        le=16 * 1024,
        description="largest MQTT packet the hub takes (MQTT 5 Maximum Packet Size, told to "
        "the broker in CONNECT; a larger command is never delivered, and one that arrives "
        "anyway is refused before it is parsed). A full codes.bulk is about 600 kB",
    )

    @property
    def tls(self) -> bool:
        return self.url.startswith("mqtts://")

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1].rstrip("/").split(":")[0]

    @property
    def port(self) -> int:
        rest = self.url.split("://", 1)[1].rstrip("/")
        return int(rest.split(":")[1]) if ":" in rest else (8883 if self.tls else 1883)


class Retention(_Model):
    """How long the store keeps what no longer matters to a door (pruned once an hour,
    in small batches between door events)."""

    audit_days: float = Field(
        default=365,
        gt=0,
        description="audit lines, the local event history (lockerctl events), acknowledged "
        "alarms, quarantined messages",
    )
    inbox_days: float = Field(
        default=30,
        gt=0,
        description="cloud commands applied, with their replies (a redelivery within this "
        "time gets the stored reply; keep it longer than any command may live)",
    )
    intents_days: float = Field(default=30, gt=0, description="settled door-open intents")
    parcels_days: float = Field(
        default=90, gt=0, description="parcels that ended (collected, recalled, cancelled)"
    )
    tombstone_days: float = Field(
        default=120,
        gt=0,
        description="hashes of spent or replaced codes, never accepted again meanwhile "
        "(keep it longer than any command may live)",
    )


class Terminal(_Model):
    """A keypad, kiosk or scanner: a socket of its own, on which only what a person at
    the hub may do is accepted (lockerd/api/server.py, ADR 0015). Its name is who it is in the
    code throttle, the audit and the metrics; the request cannot change it."""

    name: str = Field(
        pattern=r"^[a-z][a-z0-9-]{1,15}:[A-Za-z0-9_-]{1,32}$",
        description="KIND:ID, e.g. keypad:1 or kiosk:lobby",
    )
    socket: str = Field(description="its socket, e.g. /run/lockerd/keypad-1.sock")
    group: str | None = Field(
        default=None,
        description="the group of the terminal's process: the socket is 0660 with this group",
    )

    @field_validator("name")
    @classmethod
    def _not_a_technician(cls, value: str) -> str:
        if value.startswith("tech:"):
            raise ValueError("tech:USER names a technician; a terminal is e.g. keypad:1")
        return value


class Api(_Model):
    """Bounds of the local API, for each of its sockets (lockerd/api/server.py, ADR 0015)."""

    max_connections: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="connections at once on each socket. At the cap a new connection "
        "closes the longest-idle one (idle connections never lock a keypad out), or is told "
        "busy when every one is in the middle of a request",
    )
    idle_timeout_s: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="a connection with no request for this long is closed (clients reconnect)",
    )
    read_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="a request line that has begun must be complete within this, and a "
        "reply must be taken within it; else the connection is closed",
    )
    technician_burst: int = Field(
        default=20,
        ge=1,
        le=10_000,
        description="technician actions that change something (open, service, inspect, ack, "
        "empty-expired) one technician may do in a burst",
    )
    technician_per_minute: float = Field(
        default=30.0,
        gt=0,
        le=6000,
        description="... and the rate at which that allowance comes back; over it the "
        "action is not done and the reply says wait (status wait, wait_s)",
    )


class MetricsEndpoint(_Model):
    """Prometheus metrics (lockerd/ops/metrics.py). Absent: no metrics endpoint."""

    address: str = Field(
        default="127.0.0.1",
        description="where to listen; keep it on localhost (or a management network): "
        "the metrics name compartments, terminals and boards",
    )
    port: int = Field(default=9417, ge=0, le=65535, description="0: any free port (tests)")


class HubConfig(_Model):
    """A hub's whole configuration, as ``lockerd check-config`` and ``lockerd run``
    read it from TOML: identity, paths, buses and boards, compartments, codes,
    timers, terminals, the cloud, the API's limits, retention, metrics."""

    hub_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{2,62}$", description="e.g. hub-0042")
    buses: list[BusConfig] = Field(min_length=1)
    compartments: list[Compartment] = Field(min_length=1)
    timers: Timers = Timers()
    codes: Codes = Codes()
    paths: Paths = Paths()
    cloud: Cloud | None = None
    metrics: MetricsEndpoint | None = None
    retention: Retention = Retention()
    terminals: list[Terminal] = Field(
        default_factory=list,
        max_length=64,
        description="keypads, kiosks and scanners: one socket each ([[terminals]])",
    )
    api: Api = Api()
    simulated: bool = Field(
        default=False, description="buses are served by the built-in simulator (demo, tests)"
    )

    def key_path(self) -> Path:
        return self.state_path(self.codes.key_file)

    def state_path(self, name: str) -> Path:
        """A file named in the config: relative to the state directory unless absolute."""
        path = Path(name)
        return path if path.is_absolute() else Path(self.paths.state_dir) / path


# ======================================================================================
# Problems, with places and fixes
# ======================================================================================


@dataclass(frozen=True)
class Problem:
    """Something wrong (the hub will not start) or, with ``warning``, risky (it starts,
    but a technician should look), at its place in the file, with a fix."""

    where: str  # a path such as compartments[12].channel
    line: int | None
    message: str
    fix: str = ""
    warning: bool = False

    def render(self, file: str) -> str:
        place = f"{file}:{self.line}" if self.line else file
        text = f"{place}: {self.where}: {'warning: ' if self.warning else ''}{self.message}"
        return f"{text}\n    fix: {self.fix}" if self.fix else text


class ConfigInvalid(LockerdError, ValueError):
    """The config cannot run a hub; :attr:`problems` says everything that is wrong."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        super().__init__(self.report())

    def report(self) -> str:
        head = f"{self.file}: {len(self.problems)} problem(s); the hub will not start"
        return "\n".join([head, *(p.render(self.file) for p in self.problems)])


_FIXES = {
    "missing": "add this setting",
    "extra_forbidden": "remove it, or check its spelling against config/example-hub.toml",
    "literal_error": "use one of the values listed",
    "enum": "use one of the values listed",
    "union_tag_invalid": f"kind is one of {', '.join(BOARD_KINDS)}",
    "union_tag_not_found": f"add kind = one of {', '.join(BOARD_KINDS)}",
    "string_pattern_mismatch": "see the pattern in the message",
    # a value of the wrong type (TOML: numbers and true/false take no quotes)
    "int_parsing": "write a whole number, without quotes (e.g. 9600)",
    "int_type": "write a whole number, without quotes (e.g. 9600)",
    "int_from_float": "write a whole number, without a decimal point",
    "float_parsing": "write a number, without quotes (e.g. 2.5)",
    "float_type": "write a number, without quotes (e.g. 2.5)",
    "finite_number": "write a finite number (not inf or nan)",
    "bool_parsing": "write true or false, without quotes",
    "bool_type": "write true or false, without quotes",
    "string_type": 'write text in double quotes (e.g. "A")',
    "list_type": "write a list in square brackets (e.g. [1, 2])",
    "tuple_type": "write a list in square brackets (e.g. [1, 2])",
    "set_type": "write a list in square brackets (e.g. [1, 2])",
    "dict_type": "write a table: a [section] with key = value lines, or {{ key = value }}",
    "model_type": "write a table: a [section] with key = value lines, or {{ key = value }}",
    "model_attributes_type": "write a table: a [section] with key = value lines, or "
    "{{ key = value }}",
    # a value out of bounds
    "greater_than": "use a value above {gt}",
    "greater_than_equal": "use {ge} or more",
    "less_than": "use a value below {lt}",
    "less_than_equal": "use {le} or less",
    "multiple_of": "use a multiple of {multiple_of}",
    "string_too_short": "write at least {min_length} character(s)",
    "string_too_long": "shorten it to {max_length} characters or fewer",
    "too_short": "give at least {min_length} item(s)",
    "too_long": "give {max_length} item(s) or fewer",
    "url_parsing": "write a URL such as mqtts://broker.example.com:8883",
    "url_scheme": "write a URL such as mqtts://broker.example.com:8883",
}
# any other kind of problem pydantic finds (a validator's own message says what is wrong)
_FIX_ELSE = "change the value as the message says (config/example-hub.toml has every setting)"


def _fix(err: Any) -> str:
    """The fix for one of pydantic's errors: by its type, with its limits filled in;
    never none (a problem without a fix leaves a technician guessing)."""
    fix = _FIXES.get(err["type"])
    if fix is None:
        return _FIX_ELSE
    try:
        return fix.format(**err.get("ctx", {}))
    except (KeyError, IndexError, ValueError):
        return _FIX_ELSE


# settings that were renamed or moved: what they are called now (an extra_forbidden)
_RENAMED = {
    "paths.socket_group": (
        "socket_group was renamed technician_group",
        'write technician_group = "lockerd-tech" (the group whose members may use '
        "lockerctl); keypads and kiosks get sockets of their own under [[terminals]] "
        "(docs/install.md)",
    ),
}


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in BOARD_KINDS:
            continue  # pydantic's discriminator branch, not a place in the file
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


class _Lines:
    """Finds the line of a place such as ``buses[1].boards[0].address`` in TOML text.

    Understands ``[table]``, ``[[array.of.tables]]`` and ``key = value`` lines, and
    arrays of inline tables written one ``{ ... }`` per line. Best effort: a place
    it cannot find gets no line, never a wrong one.
    """

    def __init__(self, text: str) -> None:
        self.index: dict[str, int] = {}
        counters: Counter[str] = Counter()
        table = ""
        inline_array: str | None = None
        inline_count = 0
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if inline_array is not None:
                if line.startswith("{"):
                    item = f"{inline_array}[{inline_count}]"
                    self.index.setdefault(item, number)
                    for key in re.findall(r"([A-Za-z_][A-Za-z0-9_-]*)\s*=", line):
                        self.index.setdefault(f"{item}.{key}", number)
                    inline_count += 1
                if line.startswith("]") or (line.endswith("]") and not line.startswith("{")):
                    inline_array = None
                continue
            if m := re.match(r"^\[\[\s*([A-Za-z0-9_.-]+)\s*\]\]$", line):
                name = m.group(1)
                parent, _, leaf = name.rpartition(".")
                prefix = self._resolve(parent, counters) if parent else ""
                key = f"{prefix}.{leaf}" if prefix else leaf
                table = f"{key}[{counters[key]}]"
                counters[key] += 1
                self.index.setdefault(table, number)
                continue
            if m := re.match(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]$", line):
                table = m.group(1)
                self.index.setdefault(table, number)
                continue
            if m := re.match(r"^([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(.*)$", line):
                key = f"{table}.{m.group(1)}" if table else m.group(1)
                self.index.setdefault(key, number)
                if m.group(2).startswith("[") and not m.group(2).rstrip().endswith("]"):
                    inline_array, inline_count = key, 0

    def _resolve(self, dotted: str, counters: Counter[str]) -> str:
        """``buses`` -> ``buses[<current>]`` for nested arrays of tables."""
        out = ""
        for part in dotted.split("."):
            key = f"{out}.{part}" if out else part
            out = f"{key}[{counters[key] - 1}]" if counters[key] else key
        return out

    def find(self, where: str) -> int | None:
        probe = where
        while probe:
            if probe in self.index:
                return self.index[probe]
            shorter = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", probe)
            if shorter == probe:
                return None
            probe = shorter
        return None


def _structural(text: str, exc: ValidationError) -> list[Problem]:
    lines = _Lines(text)
    problems = []
    for err in exc.errors(include_url=False):
        where = _where(tuple(err["loc"]))
        message = err["msg"]
        if err["type"] == "missing":
            message = "missing"
        fix = _fix(err)
        if err["type"] == "extra_forbidden" and where in _RENAMED:
            message, fix = _RENAMED[where]
        problems.append(Problem(where, lines.find(where), message, fix))
    return problems


# ======================================================================================
# The parts that could be read, for the checks across them
# ======================================================================================

M = TypeVar("M", bound=BaseModel)
_BOARD: TypeAdapter[BoardSettings] = TypeAdapter(BoardSettings)
_BOOL = TypeAdapter(bool)
# load_key's rule (lockerd/hub/codes.py KEY_BYTES; the config sits below the hub and
# cannot import it: tests/lockerd/test_config.py keeps the two equal)
CODE_KEY_BYTES = 32
# a Unix socket's path, in bytes, without its terminating NUL (sun_path is 108 bytes)
MAX_SOCKET_PATH = 107
# adapters named by the order the kernel found them in: the number changes on a re-plug
_ENUMERATED_TTY = re.compile(r"^/dev/tty(USB|ACM)[0-9]+$")


def _part(model: type[M], raw: Any) -> M | None:
    try:
        return model.model_validate(raw)
    except ValidationError:
        return None


def _board(raw: Any) -> BoardSettings | None:
    try:
        return _BOARD.validate_python(raw)
    except ValidationError:
        return None


@dataclass
class _Bus:
    """A bus as far as it could be read: its own settings (None when one of them is
    wrong), its name (also when another setting is wrong) and each board (None where
    the board is wrong)."""

    raw: dict[str, Any]
    head: _BusHead | None
    name: str | None
    boards: list[BoardSettings | None]

    @property
    def complete(self) -> bool:
        """Every board of the bus was read: an address missing from it is really missing."""
        return isinstance(self.raw.get("boards"), list) and None not in self.boards


@dataclass
class _Draft:
    """What could be read of a config, part by part. The checks across parts run on
    every part that is valid, also when another part has a type error: check-config
    reports both at once."""

    raw: dict[str, Any]
    hub_id: str | None
    simulated: bool | None
    buses: list[_Bus]
    compartments: list[Compartment | None]
    terminals: list[Terminal | None]
    sections: dict[str, BaseModel | None]  # timers, codes, paths, ... (None: wrong)

    @classmethod
    def of(cls, raw: dict[str, Any]) -> _Draft:
        buses = []
        for item in _list(raw.get("buses")):
            if not isinstance(item, dict):
                buses.append(_Bus({}, None, None, []))
                continue
            head = _part(_BusHead, {k: v for k, v in item.items() if k != "boards"})
            name = head.name if head else item.get("name")
            buses.append(
                _Bus(
                    item,
                    head,
                    name if isinstance(name, str) else None,
                    [_board(b) for b in _list(item.get("boards"))],
                )
            )
        sections: dict[str, BaseModel | None] = {}
        for key, model in _SECTIONS.items():
            if key in raw or key not in _OPTIONAL:
                sections[key] = _part(model, raw.get(key, {}))
        simulated: bool | None
        try:
            simulated = _BOOL.validate_python(raw.get("simulated", False))
        except ValidationError:
            simulated = None
        hub_id = raw.get("hub_id")
        return cls(
            raw,
            hub_id if isinstance(hub_id, str) else None,
            simulated,
            buses,
            [_part(Compartment, c) for c in _list(raw.get("compartments"))],
            [_part(Terminal, t) for t in _list(raw.get("terminals"))],
            sections,
        )

    @property
    def buses_known(self) -> bool:
        """Every bus's name was read: a name missing from them is really missing."""
        return isinstance(self.raw.get("buses"), list) and all(b.name for b in self.buses)

    def section(self, key: str, model: type[M]) -> M | None:
        value = self.sections.get(key)
        return value if isinstance(value, model) else None

    @property
    def paths(self) -> Paths | None:
        return self.section("paths", Paths)

    @property
    def codes(self) -> Codes | None:
        return self.section("codes", Codes)

    @property
    def cloud(self) -> Cloud | None:
        return self.section("cloud", Cloud)

    def state_path(self, name: str) -> Path | None:
        """As :meth:`HubConfig.state_path`; None when [paths] could not be read."""
        paths = self.paths
        if paths is None:
            return None
        path = Path(name)
        return path if path.is_absolute() else Path(paths.state_dir) / path


_SECTIONS: dict[str, type[BaseModel]] = {
    "timers": Timers,
    "codes": Codes,
    "paths": Paths,
    "cloud": Cloud,
    "metrics": MetricsEndpoint,
    "retention": Retention,
    "api": Api,
}
_OPTIONAL = {"cloud", "metrics"}  # absent: none, not the defaults


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _unusable_dir(path: Path) -> str | None:
    """Why this user cannot keep files in ``path`` or create it (None: it can)."""
    probe = path
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if probe == path:
        if not path.is_dir():
            return f"{path} is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable by this user ({_user()})"
        return None
    if not probe.is_dir():
        return f"{path} cannot be created: {probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{path} does not exist, and this user ({_user()}) cannot create it in {probe}"
    return None


def _by_id(port: str) -> list[str]:
    """The stable names (/dev/serial/by-id) of the adapter ``port`` is now."""
    links = Path("/dev/serial/by-id")
    try:
        target = Path(port).resolve()
        return sorted(str(link) for link in links.iterdir() if link.resolve() == target)
    except OSError:
        return []


def _quoted(model: BaseModel, raw: Any, where: str) -> list[tuple[str, str, Any]]:
    """Settings given as TOML strings where a boolean or a number belongs, which pydantic
    reads anyway ("true", "off", "5"): (place, the string, what it was read as)."""
    if not isinstance(raw, dict):
        return []
    found: list[tuple[str, str, Any]] = []
    for name in type(model).model_fields:
        if name not in raw:
            continue
        value, given = getattr(model, name), raw[name]
        place = f"{where}.{name}" if where else name
        if isinstance(given, str) and isinstance(value, bool | int | float):
            found.append((place, given, value))
        elif isinstance(value, BaseModel):
            found.extend(_quoted(value, given, place))
        elif isinstance(value, list) and isinstance(given, list):
            for i, (item, item_raw) in enumerate(zip(value, given, strict=False)):
                if isinstance(item, BaseModel):
                    found.extend(_quoted(item, item_raw, f"{place}[{i}]"))
    return found


# ======================================================================================
# The checks
# ======================================================================================


class _Checker:
    """What each part can't see alone: the parts against each other, the files they
    name and (for check-config) the machine; and the settings that are risky."""

    def __init__(self, draft: _Draft, text: str) -> None:
        self.draft = draft
        self.lines = _Lines(text)
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.boards: dict[tuple[str, int], int] = {}  # (bus, address) -> channels

    def add(self, where: str, message: str, fix: str) -> None:
        self.problems.append(Problem(where, self.lines.find(where), message, fix))

    def warn(self, where: str, message: str, fix: str) -> None:
        self.warnings.append(Problem(where, self.lines.find(where), message, fix, warning=True))

    def run(self) -> None:
        if self.draft.hub_id == "cloud":
            self.add(
                "hub_id",
                "`cloud` is the cloud's own account on the broker (config/mosquitto-acl.conf): "
                "a hub by that name would get the cloud's rights",
                "give the hub another id",
            )
        self.buses()
        self.compartments()
        if self.draft.simulated is False:
            self.key_file()
        self.cloud()
        self.terminals()
        self.socket_paths()
        self.risky()

    # ------------------------------------------------------------------ across parts
    def terminals(self) -> None:
        """One socket per terminal, none shared with another terminal or the technician
        socket: a terminal is known by its socket (ADR 0015)."""
        names: set[str] = set()
        sockets: dict[str, str] = {}
        if self.draft.paths is not None:
            sockets[self.draft.paths.socket] = "the technician socket (paths.socket)"
        for i, term in enumerate(self.draft.terminals):
            if term is None:
                continue
            if term.name in names:
                self.add(
                    f"terminals[{i}].name",
                    f"terminal name {term.name!r} is used twice",
                    "name each terminal once: its name is who it is in the throttle and audit",
                )
            names.add(term.name)
            taken = sockets.get(term.socket)
            if taken is not None:
                self.add(
                    f"terminals[{i}].socket",
                    f"socket {term.socket} is also {taken}",
                    "give each terminal a socket of its own (e.g. /run/lockerd/keypad-1.sock)",
                )
            sockets[term.socket] = f"the socket of terminal {term.name}"

    def socket_paths(self) -> None:
        """A socket's path fits in a Unix socket address, or the API cannot bind it."""
        for where, path in self.sockets():
            size = len(os.fsencode(path))
            if size > MAX_SOCKET_PATH:
                self.add(
                    where,
                    f"the socket path {path} is {size} bytes; a Unix socket's path has at "
                    f"most {MAX_SOCKET_PATH}",
                    "choose a shorter path, e.g. /run/lockerd/api.sock",
                )

    def sockets(self) -> list[tuple[str, str]]:
        found = []
        if self.draft.paths is not None:
            found.append(("paths.socket", self.draft.paths.socket))
        for i, term in enumerate(self.draft.terminals):
            if term is not None:
                found.append((f"terminals[{i}].socket", term.socket))
        return found

    def cloud(self) -> None:
        cloud = self.draft.cloud
        if cloud is None:
            return
        if cloud.reconnect_min_s > cloud.reconnect_max_s:
            self.add(
                "cloud.reconnect_min_s",
                "reconnect_min_s is longer than reconnect_max_s",
                "make the first retry the shortest",
            )
        if (cloud.cert_file is None) != (cloud.key_file is None):
            self.add(
                "cloud.cert_file",
                "a client certificate needs its key, and a key its certificate",
                "set both cert_file and key_file, or neither",
            )
        if cloud.cert_file is not None and not cloud.tls:
            self.add(
                "cloud.url",
                "a client certificate is set but the url is not mqtts://",
                "use mqtts://HOST:8883 to connect with TLS",
            )
        if cloud.password_file is not None and cloud.username is None:
            self.add("cloud.password_file", "a password without a username", "set username")
        retention = self.draft.section("retention", Retention)
        if retention is not None:
            self.retention(cloud, retention)
        if self.draft.simulated is not False:
            return  # the demo makes its own keys (and unknown: said above)
        for name in ("ca_file", "cert_file", "key_file", "password_file", "command_key_file"):
            value = getattr(cloud, name)
            path = None if value is None else self.draft.state_path(value)
            if path is not None and not path.exists():
                self.add(
                    f"cloud.{name}",
                    f"{name} {path} does not exist",
                    "install the file from the operator's provisioning bundle, "
                    "or correct the path (relative paths start at the state directory)",
                )

    def retention(self, cloud: Cloud, kept: Retention) -> None:
        """A signed grant is refused as a replay by its id in the inbox, and its codes
        by their tombstones, only while those are kept: both must outlive the longest
        lifetime a command may have."""
        # (a command is taken up to skew before its issued_at and after its expires_at)
        life_days = (cloud.grant_max_life_s + 2 * cloud.command_skew_s) / 86_400
        for name in ("inbox_days", "tombstone_days", "parcels_days"):
            days = getattr(kept, name)
            if days < life_days:
                self.add(
                    f"retention.{name}",
                    f"{name} = {days:g} is shorter than a signed command may live "
                    f"(cloud.grant_max_life_s + 2 x command_skew_s = {life_days:.2f} days): "
                    "a replayed command could be applied again",
                    f"keep it at least {life_days:.2f} days, or shorten cloud.grant_max_life_s",
                )

    def buses(self) -> None:
        names = Counter(b.name for b in self.draft.buses if b.name)
        ports = Counter(b.head.port for b in self.draft.buses if b.head)
        for i, bus in enumerate(self.draft.buses):
            if bus.name and names[bus.name] > 1:
                self.add(
                    f"buses[{i}].name", f"bus name {bus.name!r} is used twice", "name each bus once"
                )
            if bus.head and ports[bus.head.port] > 1:
                self.add(
                    f"buses[{i}].port",
                    f"port {bus.head.port} is used by two buses",
                    "one bus per serial port; put every board of that line under one bus",
                )
            if bus.name is None:
                continue
            for j, board in enumerate(bus.boards):
                if board is None:
                    continue
                if (bus.name, board.address) in self.boards:
                    self.add(
                        f"buses[{i}].boards[{j}].address",
                        f"two boards at address {board.address} on bus {bus.name}",
                        "each board on one bus needs its own address (DIP switches)",
                    )
                self.boards[(bus.name, board.address)] = board.channels

    def compartments(self) -> None:
        bus_names = sorted({b.name for b in self.draft.buses if b.name})
        complete = {b.name for b in self.draft.buses if b.name and b.complete}
        comps = self.draft.compartments
        labels = Counter(c.label for c in comps if c is not None)
        taken: dict[tuple[str, int, int], str] = {}
        for k, comp in enumerate(comps):
            if comp is None:
                continue
            here = f"compartments[{k}]"
            if labels[comp.label] > 1:
                self.add(
                    f"{here}.label",
                    f"label {comp.label} is used twice",
                    "give each door its own label",
                )
            if comp.bus not in bus_names:
                if self.draft.buses_known:
                    self.add(
                        f"{here}.bus",
                        f"no bus named {comp.bus!r}",
                        f"use one of: {', '.join(bus_names)}",
                    )
                continue
            count = self.boards.get((comp.bus, comp.board))
            if count is None:
                if comp.bus in complete:
                    self.add(
                        f"{here}.board",
                        f"no board at address {comp.board} on bus {comp.bus}",
                        "add the board under its bus, or correct the address",
                    )
                continue
            if comp.channel > count:
                self.add(
                    f"{here}.channel",
                    f"channel {comp.channel} is beyond the {count} channels of board "
                    f"{comp.board} on bus {comp.bus}",
                    "check the wiring sheet: channels count from 1",
                )
            spot = (comp.bus, comp.board, comp.channel)
            if spot in taken:
                self.add(
                    f"{here}.channel",
                    f"{comp.label} and {taken[spot]} are both on bus {comp.bus} board "
                    f"{comp.board} channel {comp.channel}",
                    "each door has its own lock channel",
                )
            else:
                taken[spot] = comp.label

    def key_file(self) -> None:
        """What ``lockerd run`` asks of the code key (lockerd/hub/codes.py load_key)."""
        codes = self.draft.codes
        key_file = None if codes is None else self.draft.state_path(codes.key_file)
        if key_file is None:
            return
        fix_owner = f"chown the file to the daemon's user and chmod 600 {key_file}"
        try:
            st = key_file.stat()
            if st.st_mode & 0o077:
                self.add(
                    "codes.key_file",
                    f"key file {key_file} is readable by others (mode {st.st_mode & 0o777:o})",
                    f"chmod 600 {key_file}",
                )
                return
            key = key_file.read_bytes()
        except FileNotFoundError:
            self.add(
                "codes.key_file",
                f"key file {key_file} does not exist",
                f"create it with `lockerd keygen {key_file}` "
                "(mode 0600, owned by the daemon's user)",
            )
            return
        except PermissionError:
            self.add(
                "codes.key_file",
                f"key file {key_file} is not readable by this user ({_user()})",
                fix_owner,
            )
            return
        except OSError as exc:
            self.add(
                "codes.key_file",
                f"key file {key_file} cannot be read: {exc.strerror or exc}",
                "codes.key_file names the key file itself, made by `lockerd keygen`",
            )
            return
        if len(key) < CODE_KEY_BYTES:
            self.add(
                "codes.key_file",
                f"key file {key_file} holds {len(key)} bytes; a code key has at least "
                f"{CODE_KEY_BYTES}",
                "restore the hub's key (the cloud holds the same one); a new key "
                "(`lockerd keygen`) makes every code given out so far useless",
            )

    # ------------------------------------------------------------------ risky settings
    def risky(self) -> None:
        """Settings the hub runs with, but a technician should look at."""
        for i, bus in enumerate(self.draft.buses):
            head = bus.head
            if head is None:
                continue
            silence_ms = frame_silence(head.baudrate) * 1000
            if head.gap_ms < silence_ms:
                self.warn(
                    f"buses[{i}].gap_ms",
                    f"gap_ms = {head.gap_ms:g} is below 3.5 characters at {head.baudrate} "
                    f"baud ({silence_ms:.2f} ms): the bus keeps {silence_ms:.2f} ms anyway",
                    f"set gap_ms to at least {silence_ms:.2f} (5 ms suits most boards)",
                )
            if _ENUMERATED_TTY.match(head.port):
                stable = _by_id(head.port)
                self.warn(
                    f"buses[{i}].port",
                    f"{head.port} is numbered in the order the adapters were found: it "
                    "can name another adapter after a re-plug or a reboot",
                    f"use port = {stable[0]!r}"
                    if stable
                    else "use the adapter's /dev/serial/by-id/... name (ls -l /dev/serial/by-id)",
                )
        for where, given, value in self.quoted():
            name = where.rsplit(".", 1)[-1]
            if isinstance(value, bool):
                word = "true" if value else "false"
                self.warn(
                    where,
                    f'"{given}" is a string where a boolean belongs; it is read as {word}',
                    f"write {name} = {word}, without quotes",
                )
            else:
                self.warn(
                    where,
                    f'"{given}" is a string where a number belongs; it is read as {value}',
                    f"write {name} = {value}, without quotes",
                )

    def quoted(self) -> list[tuple[str, str, Any]]:
        draft, found = self.draft, []
        if isinstance(draft.raw.get("simulated"), str) and draft.simulated is not None:
            found.append(("simulated", draft.raw["simulated"], draft.simulated))
        for key, part in draft.sections.items():
            if part is not None:
                found.extend(_quoted(part, draft.raw.get(key), key))
        for i, bus in enumerate(draft.buses):
            if bus.head is not None:
                found.extend(_quoted(bus.head, bus.raw, f"buses[{i}]"))
            raw_boards = _list(bus.raw.get("boards"))
            for j, (board, raw) in enumerate(zip(bus.boards, raw_boards, strict=True)):
                if board is not None:
                    found.extend(_quoted(board, raw, f"buses[{i}].boards[{j}]"))
        items: list[tuple[str, BaseModel | None, Any]] = [
            *(
                (f"compartments[{k}]", c, raw)
                for k, (c, raw) in enumerate(
                    zip(draft.compartments, _list(draft.raw.get("compartments")), strict=True)
                )
            ),
            *(
                (f"terminals[{k}]", t, raw)
                for k, (t, raw) in enumerate(
                    zip(draft.terminals, _list(draft.raw.get("terminals")), strict=True)
                )
            ),
        ]
        for where, item, raw in items:
            if item is not None:
                found.extend(_quoted(item, raw, where))
        return found

    # ------------------------------------------------------------------ the machine
    def machine(self) -> None:
        """What ``lockerd run`` would meet on this machine, as this user: the state
        directory, the sockets' directories, the groups, the ports."""
        paths = self.draft.paths
        if paths is not None:
            why = _unusable_dir(Path(paths.state_dir))
            if why is not None:
                self.add(
                    "paths.state_dir",
                    f"the state directory: {why}",
                    "create it, owned by the daemon's user (under systemd, "
                    "StateDirectory=lockerd makes /var/lib/lockerd: docs/install.md)",
                )
        for where, path in self.sockets():
            why = _unusable_dir(Path(path).parent)
            if why is not None:
                self.add(
                    where,
                    f"the socket's directory: {why}",
                    "create it (under systemd, RuntimeDirectory=lockerd makes /run/lockerd: "
                    "docs/install.md), or put the socket in a directory that exists",
                )
        groups = []
        if paths is not None and paths.technician_group:
            groups.append(("paths.technician_group", paths.technician_group))
        for i, term in enumerate(self.draft.terminals):
            if term is not None and term.group:
                groups.append((f"terminals[{i}].group", term.group))
        for where, name in groups:
            self.group(where, name)
        if self.draft.simulated is not False:
            return  # the simulator stands in for the ports
        for i, bus in enumerate(self.draft.buses):
            port = bus.head.port if bus.head else ""
            if port.startswith("/") and not os.path.exists(port):
                self.warn(
                    f"buses[{i}].port",
                    f"{port} does not exist now",
                    "plug the adapter in, or correct the path (ls -l /dev/serial/by-id); "
                    "lockerd starts anyway and opens the port when it appears",
                )

    def group(self, where: str, name: str) -> None:
        try:
            gid = grp.getgrnam(name).gr_gid
        except KeyError:
            self.add(
                where,
                f"the group {name} does not exist: lockerd cannot give a socket to it",
                f"create it (groupadd --system {name}, docs/install.md), or correct the name",
            )
            return
        if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
            self.warn(
                where,
                f"this user ({_user()}) is not in the group {name}: lockerd run as this "
                "user could not give its socket that group",
                f"run lockerd as a member (the unit's SupplementaryGroups=, or "
                f"usermod -aG {name} USER)",
            )


# ======================================================================================
# Checking, parsing, loading
# ======================================================================================


@dataclass(frozen=True)
class Checked:
    """Everything found in a config: the problems (the hub will not start), the
    warnings (it starts), and the config when there is no problem."""

    file: str
    cfg: HubConfig | None
    problems: list[Problem]
    warnings: list[Problem]

    def report(self) -> str:
        """The problems, then the warnings, each with its place and its fix."""
        out = []
        if self.problems:
            out.append(ConfigInvalid(self.file, self.problems).report())
        if self.warnings:
            out.append(f"{self.file}: {len(self.warnings)} warning(s); the hub starts anyway")
            out.extend(w.render(self.file) for w in self.warnings)
        return "\n".join(out)


def check(text: str, file: str = "<config>", *, machine: bool = False) -> Checked:
    """Every problem and warning of TOML text at once: a type error does not hide the
    checks across parts. ``machine``: also what this machine would refuse (the state
    and socket directories, the groups), as ``lockerd check-config`` does."""
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        syntax = Problem(
            "(syntax)",
            int(m.group(1)) if m else None,
            f"not valid TOML: {exc}",
            "fix the syntax at that line (quotes, brackets, = between key and value)",
        )
        return Checked(file, None, [syntax], [])
    cfg: HubConfig | None = None
    problems: list[Problem] = []
    try:
        cfg = HubConfig.model_validate(raw)
    except ValidationError as exc:
        problems = _structural(text, exc)
    checker = _Checker(_Draft.of(raw), text)
    checker.run()
    if machine:
        checker.machine()
    problems += checker.problems
    return Checked(file, None if problems else cfg, problems, checker.warnings)


def check_file(path: str | Path, *, machine: bool = True) -> Checked:
    """:func:`check` on a file (an unreadable file is a problem too)."""
    try:
        text = _read(Path(path))
    except ConfigInvalid as exc:
        return Checked(exc.file, None, exc.problems, [])
    return check(text, str(path), machine=machine)


def parse(text: str, file: str = "<config>") -> HubConfig:
    """Validate TOML text; every problem at once in :class:`ConfigInvalid`."""
    checked = check(text, file)
    if checked.cfg is None:
        raise ConfigInvalid(file, checked.problems)
    return checked.cfg


def _read(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigInvalid(
            str(p),
            [
                Problem(
                    "(file)", None, f"cannot read: {exc.strerror}", "check the path and permissions"
                )
            ],
        ) from None
    except UnicodeDecodeError:
        raise ConfigInvalid(
            str(p), [Problem("(file)", None, "not UTF-8 text", "save the file as UTF-8")]
        ) from None


def load(path: str | Path) -> HubConfig:
    p = Path(path)
    return parse(_read(p), str(p))
