"""The hub config: one TOML file, validated by pydantic, checked as a whole.

:func:`load` returns a :class:`HubConfig` or raises :class:`ConfigInvalid`, which
carries every problem found (not only the first), each with its place in the
file (a path such as ``compartments[12].channel`` and, where it can be found, a
line number) and a fix a technician understands.

Bus and board settings are the models of :mod:`lockerd.drivers.settings`, embedded as
they are: one definition, one default, one error message per setting.
"""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


class BusConfig(BusSettings):
    """A bus: its port settings (lockerd.drivers.settings.BusSettings), a name and its boards."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="short name, e.g. A")
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
        default=365, gt=0, description="audit lines, acknowledged alarms, quarantined messages"
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
    where: str  # a path such as compartments[12].channel
    line: int | None
    message: str
    fix: str = ""

    def render(self, file: str) -> str:
        place = f"{file}:{self.line}" if self.line else file
        text = f"{place}: {self.where}: {self.message}"
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
    "union_tag_invalid": f"kind is one of {', '.join(BOARD_KINDS)}",
    "string_pattern_mismatch": "see the pattern in the message",
}

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


def _structural(file: str, text: str, exc: ValidationError) -> list[Problem]:
    lines = _Lines(text)
    problems = []
    for err in exc.errors(include_url=False):
        where = _where(tuple(err["loc"]))
        message = err["msg"]
        if err["type"] == "missing":
            message = "missing"
        fix = _FIXES.get(err["type"], "")
        if err["type"] == "extra_forbidden" and where in _RENAMED:
            message, fix = _RENAMED[where]
        problems.append(Problem(where, lines.find(where), message, fix))
    return problems


class _Checker:
    """What each part can't see alone: the parts against each other and the machine."""

    def __init__(self, cfg: HubConfig, text: str) -> None:
        self.cfg = cfg
        self.lines = _Lines(text)
        self.problems: list[Problem] = []
        self.boards: dict[tuple[str, int], int] = {}  # (bus, address) -> channels

    def add(self, where: str, message: str, fix: str) -> None:
        self.problems.append(Problem(where, self.lines.find(where), message, fix))

    def run(self) -> list[Problem]:
        if self.cfg.hub_id == "cloud":
            self.add(
                "hub_id",
                "`cloud` is the cloud's own account on the broker (config/mosquitto-acl.conf): "
                "a hub by that name would get the cloud's rights",
                "give the hub another id",
            )
        self.buses()
        self.compartments()
        if not self.cfg.simulated:
            self.key_file()
        self.cloud()
        self.terminals()
        return self.problems

    def terminals(self) -> None:
        """One socket per terminal, none shared with another terminal or the technician
        socket: a terminal is known by its socket (ADR 0015)."""
        names: set[str] = set()
        sockets = {self.cfg.paths.socket: "the technician socket (paths.socket)"}
        for i, term in enumerate(self.cfg.terminals):
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

    def cloud(self) -> None:
        cloud = self.cfg.cloud
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
        self.retention(cloud)
        if self.cfg.simulated:
            return  # the demo makes its own keys
        for name in ("ca_file", "cert_file", "key_file", "password_file", "command_key_file"):
            value = getattr(cloud, name)
            if value is not None and not self.cfg.state_path(value).exists():
                self.add(
                    f"cloud.{name}",
                    f"{name} {self.cfg.state_path(value)} does not exist",
                    "install the file from the operator's provisioning bundle, "
                    "or correct the path (relative paths start at the state directory)",
                )

    def retention(self, cloud: Cloud) -> None:
        """A signed grant is refused as a replay by its id in the inbox, and its codes
        by their tombstones, only while those are kept: both must outlive the longest
        lifetime a command may have."""
        # (a command is taken up to skew before its issued_at and after its expires_at)
        life_days = (cloud.grant_max_life_s + 2 * cloud.command_skew_s) / 86_400
        kept = self.cfg.retention
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
        names = Counter(b.name for b in self.cfg.buses)
        ports = Counter(b.port for b in self.cfg.buses)
        for i, bus in enumerate(self.cfg.buses):
            if names[bus.name] > 1:
                self.add(
                    f"buses[{i}].name", f"bus name {bus.name!r} is used twice", "name each bus once"
                )
            if ports[bus.port] > 1:
                self.add(
                    f"buses[{i}].port",
                    f"port {bus.port} is used by two buses",
                    "one bus per serial port; put every board of that line under one bus",
                )
            for j, board in enumerate(bus.boards):
                if (bus.name, board.address) in self.boards:
                    self.add(
                        f"buses[{i}].boards[{j}].address",
                        f"two boards at address {board.address} on bus {bus.name}",
                        "each board on one bus needs its own address (DIP switches)",
                    )
                self.boards[(bus.name, board.address)] = board.channels

    def compartments(self) -> None:
        bus_names = sorted({b.name for b in self.cfg.buses})
        labels = Counter(c.label for c in self.cfg.compartments)
        taken: dict[tuple[str, int, int], str] = {}
        for k, comp in enumerate(self.cfg.compartments):
            here = f"compartments[{k}]"
            if labels[comp.label] > 1:
                self.add(
                    f"{here}.label",
                    f"label {comp.label} is used twice",
                    "give each door its own label",
                )
            if comp.bus not in bus_names:
                self.add(
                    f"{here}.bus",
                    f"no bus named {comp.bus!r}",
                    f"use one of: {', '.join(bus_names)}",
                )
                continue
            count = self.boards.get((comp.bus, comp.board))
            if count is None:
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
        key_file = self.cfg.key_path()
        if not key_file.exists():
            self.add(
                "codes.key_file",
                f"key file {key_file} does not exist",
                f"create it with `lockerd keygen {key_file}` "
                "(mode 0600, owned by the daemon's user)",
            )
        elif key_file.stat().st_mode & 0o077:
            self.add(
                "codes.key_file",
                f"key file {key_file} is readable by others "
                f"(mode {key_file.stat().st_mode & 0o777:o})",
                f"chmod 600 {key_file}",
            )


def parse(text: str, file: str = "<config>") -> HubConfig:
    """Validate TOML text; every problem at once in :class:`ConfigInvalid`."""
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigInvalid(
            file,
            [
                Problem(
                    "(syntax)",
                    int(m.group(1)) if m else None,
                    f"not valid TOML: {exc}",
                    "fix the syntax at that line (quotes, brackets, = between key and value)",
                )
            ],
        ) from None
    try:
        cfg = HubConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigInvalid(file, _structural(file, text, exc)) from None
    problems = _Checker(cfg, text).run()
    if problems:
        raise ConfigInvalid(file, problems)
    return cfg


def load(path: str | Path) -> HubConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
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
    return parse(text, str(p))
