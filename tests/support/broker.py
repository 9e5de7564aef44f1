"""A real Mosquitto broker per test: free port, its own config, log and persistence.

Use the pytest fixtures (registered in ``tests/conftest.py``)::

    async def test_x(broker: Broker) -> None:            # plain, anonymous
        async with aiomqtt.Client(broker.host, broker.port) as c: ...

    async def test_y(make_broker: MakeBroker) -> None:   # TLS + ACL (+ passwords)
        b = make_broker(tls=True, acl=True, passwords={"cloud": "pw"})
        hub = b.make_client_cert("A")                    # CN "A" is the username
        ...

A broker with an ACL is set up as production (``config/mosquitto-lockerd.conf``):
no anonymous login, and a client's id is its username, whatever id it sends.  So two
clients that log in with one name at once take each other's place: give each client
in a test its own name (its own cert CN, or its own login).

A broker keeps its ports, config and persistence file across ``stop()``/``start()``,
so persistent sessions and their queued QoS 1/2 messages survive a clean restart
(SIGTERM makes mosquitto write its database).  ``kill()`` is a crash (SIGKILL): only
what the last autosave (every ``autosave_interval`` seconds) wrote survives it.

Nothing here talks to the machine's own broker on 1883; every broker listens on
127.0.0.1 on ports the kernel handed out as free.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import datetime as dt
import hashlib
import ipaddress
import itertools
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MOSQUITTO_FALLBACK = "/usr/sbin/mosquitto"
HOST = "127.0.0.1"
INSTALL_HINT = (
    "mosquitto is not installed: the MQTT tests need a real broker. "
    "Install it with `apt-get install mosquitto` (`./dev test` does this), "
    "or put a mosquitto binary on PATH."
)

#: ACL used by ``acl=True``: the one lockerd ships, ``config/mosquitto-acl.conf``. A hub
#: (username = its id, from its cert CN or its login) may only subscribe to its own
#: ``lockers/<id>/cmd`` and publish its own ``reply``, ``evt``, ``status`` and ``state``;
#: the user ``cloud`` may read/write all of ``lockers/#``.
ACL_PATH = Path(__file__).resolve().parents[2] / "config" / "mosquitto-acl.conf"
DEFAULT_ACL = ACL_PATH.read_text()

#: The broker settings lockerd ships for production: ``config/mosquitto-lockerd.conf``.
#: A broker with an ACL (``acl=True`` or an ACL's text) takes from it the settings that
#: decide who a client is and what its session keeps, so the tests run what the operator
#: is told to run: ``allow_anonymous`` (the default), ``PRODUCTION_GLOBAL``, and on its
#: listeners ``use_username_as_clientid`` (the client id is the username, so no login
#: can take another client's session).  Every TLS listener takes ``require_certificate``
#: and ``use_identity_as_username`` from it (a client cert's CN is its username).
PRODUCTION_CONF_PATH = ACL_PATH.with_name("mosquitto-lockerd.conf")
PRODUCTION_GLOBAL = ("max_packet_size", "persistent_client_expiration")
PRODUCTION_TLS = ("require_certificate", "use_identity_as_username")
PRODUCTION_CLIENT_ID = "use_username_as_clientid"

START_TIMEOUT = 10.0
STOP_TIMEOUT = 3.0
PORT_ATTEMPTS = 5


class BrokerError(RuntimeError):
    """The broker did not start or stop as asked; the message has its log's tail."""


class MosquittoNotFound(BrokerError):
    """No mosquitto binary on this machine."""


class _PortInUse(BrokerError):
    pass


# --------------------------------------------------------------------------- binary


def find_mosquitto() -> str:
    """Path of the mosquitto binary (PATH first, then ``/usr/sbin``), or MosquittoNotFound."""
    found = shutil.which("mosquitto")
    if found:
        return found
    if os.access(MOSQUITTO_FALLBACK, os.X_OK):
        return MOSQUITTO_FALLBACK
    raise MosquittoNotFound(INSTALL_HINT)


def require_mosquitto() -> str:
    """``find_mosquitto()`` for tests: fails the test (never skips) when it is missing."""
    try:
        return find_mosquitto()
    except MosquittoNotFound as e:
        pytest.fail(str(e), pytrace=False)


_VERSION_CACHE: dict[str, str] = {}


def mosquitto_version(binary: str | None = None) -> str:
    """``"2.0.11"``: the version that ``mosquitto -h`` reports."""
    binary = binary or find_mosquitto()
    if binary not in _VERSION_CACHE:
        out = subprocess.run(  # noqa: PLW1510 - `mosquitto -h` exits non-zero by design
            [binary, "-h"], capture_output=True, text=True, timeout=10
        )
        m = re.search(r"mosquitto version (\S+)", out.stdout + out.stderr)
        if not m:
            raise BrokerError(f"cannot tell the version of {binary}: {out.stdout!r}")
        _VERSION_CACHE[binary] = m.group(1)
    return _VERSION_CACHE[binary]


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


# --------------------------------------------------------------------------- ports


def free_port(host: str = HOST) -> int:
    """A port the kernel just called free (bind to 0, read, close).

    Racy by nature: ``Broker.start`` retries on other ports if mosquitto loses the race.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- production


@dataclass(frozen=True)
class MosquittoConf:
    """The options of a mosquitto config: the global ones, and each listener's."""

    options: dict[str, str]
    listeners: dict[str, dict[str, str]]  # "8883 127.0.0.1" (`listener`'s value) -> options


def parse_mosquitto_conf(text: str) -> MosquittoConf:
    """Read ``option value`` lines (``#`` comments and blank lines skipped); the lines
    after ``listener X`` are that listener's. An option given twice in one place is an
    error here (mosquitto itself would keep one of them, or refuse the file)."""
    options: dict[str, str] = {}
    listeners: dict[str, dict[str, str]] = {}
    where = options
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        value = value.strip()
        if key == "listener":
            if value in listeners:
                raise ValueError(f"line {n}: listener {value} twice")
            where = listeners[value] = {}
        elif key in where:
            raise ValueError(f"line {n}: {key} twice")
        else:
            where[key] = value
    return MosquittoConf(options, listeners)


def production_conf(path: Path = PRODUCTION_CONF_PATH) -> tuple[dict[str, str], dict[str, str]]:
    """The shipped config's global options and its one listener's options.

    BrokerError when it has not exactly one listener, or lacks an option that the test
    brokers take from it (``allow_anonymous``, ``PRODUCTION_*``).
    """
    conf = parse_mosquitto_conf(path.read_text())
    if len(conf.listeners) != 1:
        raise BrokerError(f"{path}: expected one listener, found {sorted(conf.listeners)}")
    (listener,) = conf.listeners.values()
    missing = [k for k in ("allow_anonymous", *PRODUCTION_GLOBAL) if k not in conf.options]
    missing += [k for k in (*PRODUCTION_TLS, PRODUCTION_CLIENT_ID) if k not in listener]
    if missing:
        raise BrokerError(f"{path}: no {', '.join(missing)}")
    return conf.options, listener


# --------------------------------------------------------------------------- passwords


def mosquitto_password_hash(password: str, *, iterations: int = 101) -> str:
    """Mosquitto's ``$7$`` format: PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte hash.

    The same as ``mosquitto_passwd`` writes (mosquitto >= 2.0 reads it).
    """
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def write_password_file(
    path: Path, passwords: Mapping[str, str], *, use_tool: bool | None = None
) -> None:
    """A mosquitto password file for ``passwords`` (user -> clear text).

    ``use_tool``: None uses ``mosquitto_passwd -b`` when it is installed, else hashes
    here; True/False forces one or the other.
    """
    for user in passwords:
        if not user or ":" in user or "\n" in user:
            raise ValueError(f"bad MQTT username for a password file: {user!r}")
    tool = shutil.which("mosquitto_passwd") if use_tool in (None, True) else None
    if use_tool and tool is None:
        raise BrokerError("mosquitto_passwd is not installed")
    path.write_text("")
    path.chmod(0o600)
    if tool is None:
        lines = [f"{user}:{mosquitto_password_hash(pw)}\n" for user, pw in passwords.items()]
        path.write_text("".join(lines))
        return
    for user, pw in passwords.items():
        subprocess.run(
            [tool, "-b", str(path), user, pw], check=True, capture_output=True, timeout=10
        )


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class ClientCert:
    """A client certificate and key on disk, plus the CA that the client should trust."""

    common_name: str
    certfile: Path
    keyfile: Path
    ca_certs: Path

    def ssl_context(self) -> ssl.SSLContext:
        """A client context: verifies the broker against ``ca_certs``, presents this cert."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_certs))
        ctx.load_cert_chain(str(self.certfile), str(self.keyfile))
        return ctx


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertAuthority:
    """A throwaway CA (EC P-256: fast to make) that writes PEM files into ``directory``."""

    def __init__(self, directory: Path, name: str = "lockerd test CA") -> None:

        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _utcnow()
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = directory / "ca.crt"
        self.cert_path.write_bytes(self._pem(self._cert))

    @staticmethod
    def _pem(cert: x509.Certificate) -> bytes:

        return cert.public_bytes(serialization.Encoding.PEM)

    @staticmethod
    def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:

        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def issue(
        self,
        common_name: str,
        *,
        stem: str,
        server: bool = False,
        expired: bool = False,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
    ) -> tuple[Path, Path]:
        """Sign a leaf certificate; write ``<stem>.crt`` and ``<stem>.key``; their paths."""

        key = ec.generate_private_key(ec.SECP256R1())
        now = _utcnow()
        if expired:
            not_before, not_after = now - dt.timedelta(days=10), now - dt.timedelta(days=1)
        else:
            not_before, not_after = now - dt.timedelta(hours=1), now + dt.timedelta(days=30)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_path = self.directory / f"{stem}.crt"
        key_path = self.directory / f"{stem}.key"
        cert_path.write_bytes(self._pem(cert))
        key_path.write_bytes(self._key_pem(key))
        key_path.chmod(0o600)
        return cert_path, key_path


# --------------------------------------------------------------------------- the broker

_LIVE: weakref.WeakSet[Broker] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:  # a crashed test run must not leave brokers behind
    for b in list(_LIVE):
        with contextlib.suppress(Exception):
            b.kill()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the thread that started it dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


_SEQ = itertools.count(1)


@dataclass(eq=False)
class Broker:
    """One mosquitto process with its own directory, config, log and persistence.

    Build it with ``Broker.create(...)`` (or the fixtures), then ``start()``.
    ``port`` is always a plain MQTT listener; ``tls_port`` is a TLS listener that
    requires a client certificate signed by ``ca_cert`` and takes its CN as username.
    ``production``: the settings of ``config/mosquitto-lockerd.conf`` (``PRODUCTION_*``);
    ``username_as_clientid``: every listener makes a client's id its username.
    """

    workdir: Path
    binary: str
    version: str
    host: str = HOST
    port: int = 0
    tls_port: int | None = None
    ca_cert: Path | None = None
    server_cert: Path | None = None
    server_key: Path | None = None
    password_file: Path | None = None
    acl_file: Path | None = None
    allow_anonymous: bool = True
    production: bool = False
    username_as_clientid: bool = False
    autosave_interval: int = 1
    extra_config: str = ""
    config_path: Path = field(init=False)
    log_path: Path = field(init=False)
    persistence_dir: Path = field(init=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _ca: CertAuthority | None = field(default=None, init=False, repr=False)
    _other_ca: CertAuthority | None = field(default=None, init=False, repr=False)
    _started_once: bool = field(default=False, init=False, repr=False)
    _certs: Iterator[int] = field(default_factory=itertools.count, init=False, repr=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.persistence_dir = self.workdir / "persist"
        self.persistence_dir.mkdir(exist_ok=True)

    # ------------------------------------------------------------------ building

    @classmethod
    def create(
        cls,
        workdir: Path,
        *,
        tls: bool = False,
        acl: bool | str = False,
        passwords: Mapping[str, str] | None = None,
        allow_anonymous: bool | None = None,
        username_as_clientid: bool | None = None,
        autosave_interval: int = 1,
        extra_config: str = "",
        binary: str | None = None,
    ) -> Broker:
        """A configured, not yet started broker in ``workdir``.

        ``acl``: True for ``DEFAULT_ACL``, or the text of an ACL file; either way the
        broker is set up as production (``PRODUCTION_CONF_PATH``): anonymous login off
        and the client id is the username, unless ``allow_anonymous`` or
        ``username_as_clientid`` say otherwise.
        ``passwords``: user -> password; then anonymous login is off unless
        ``allow_anonymous`` says otherwise (default: on without passwords nor ACL).
        """
        binary = binary or find_mosquitto()
        production = bool(acl)
        if allow_anonymous is None:
            if production:
                allow_anonymous = production_conf()[0]["allow_anonymous"] == "true"
            else:
                allow_anonymous = passwords is None
        if username_as_clientid is None:
            username_as_clientid = production
        b = cls(
            workdir=workdir,
            binary=binary,
            version=mosquitto_version(binary),
            allow_anonymous=allow_anonymous,
            production=production,
            username_as_clientid=username_as_clientid,
            autosave_interval=autosave_interval,
            extra_config=extra_config,
        )
        if passwords is not None:
            b.password_file = workdir / "passwords"
            write_password_file(b.password_file, passwords)
        if acl:
            b.acl_file = workdir / "acl"
            b.acl_file.write_text(DEFAULT_ACL if acl is True else acl)
            b.acl_file.chmod(0o600)
        if tls:
            b._ca = CertAuthority(workdir / "pki")
            b.ca_cert = b._ca.cert_path
            b.server_cert, b.server_key = b._ca.issue(
                "localhost", stem="server", server=True, dns=("localhost",), ips=(HOST, "::1")
            )
        b._pick_ports()
        return b

    def make_client_cert(
        self, common_name: str, *, expired: bool = False, signed_by_other_ca: bool = False
    ) -> ClientCert:
        """A client cert with CN ``common_name`` (the username on ``tls_port``).

        ``expired``: valid only in the past.  ``signed_by_other_ca``: from a CA the
        broker does not trust.  ``ca_certs`` is always the broker's CA, so the client
        itself trusts the broker and only the broker's verdict on the client is tested.
        """
        if self._ca is None or self.ca_cert is None:
            raise BrokerError("make_client_cert needs a broker made with tls=True")
        ca = self._ca
        if signed_by_other_ca:
            if self._other_ca is None:
                self._other_ca = CertAuthority(self.workdir / "pki-other", "some other CA")
            ca = self._other_ca
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", common_name) or "client"
        certfile, keyfile = ca.issue(
            common_name, stem=f"client-{stem}-{next(self._certs)}", expired=expired
        )
        return ClientCert(common_name, certfile, keyfile, self.ca_cert)

    def _pick_ports(self) -> None:
        self.port = free_port(self.host)
        if self.ca_cert is not None:
            self.tls_port = free_port(self.host)
            while self.tls_port == self.port:
                self.tls_port = free_port(self.host)

    def _write_config(self) -> None:
        lines = [f"# written by tests/support/broker.py for {self.workdir}"]
        if os.geteuid() == 0:
            # Stay root: mosquitto would otherwise switch to the `mosquitto` user,
            # who cannot read pytest's 0700 tmp dirs.  (It logs a warning about it.)
            lines.append("user root")
        lines += [
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence true",
            f"persistence_location {self.persistence_dir}/",
            "persistence_file mosquitto.db",
            "autosave_on_changes false",
            f"autosave_interval {self.autosave_interval}",
            "log_dest stderr",
            "log_type all",
            "log_timestamp true",
            "connection_messages true",
            "set_tcp_nodelay true",
        ]
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        shipped, shipped_listener = production_conf()
        if self.production:
            lines += [f"{k} {shipped[k]}" for k in PRODUCTION_GLOBAL]
        client_id = []
        if self.username_as_clientid:
            client_id = [f"{PRODUCTION_CLIENT_ID} {shipped_listener[PRODUCTION_CLIENT_ID]}"]
        lines += ["", f"listener {self.port} {self.host}", *client_id]
        if self.tls_port is not None:
            lines += [
                "",
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.ca_cert}",
                f"certfile {self.server_cert}",
                f"keyfile {self.server_key}",
                *(f"{k} {shipped_listener[k]}" for k in PRODUCTION_TLS),
                *client_id,
            ]
        if self.extra_config:
            lines += ["", self.extra_config]
        self.config_path.write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------------ addresses

    @property
    def plain_url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str | None:
        return None if self.tls_port is None else f"mqtts://{self.host}:{self.tls_port}"

    @property
    def url(self) -> str:
        """``mqtts://`` to the TLS listener when there is one, else ``mqtt://``."""
        return self.tls_url or self.plain_url

    @property
    def persistence_file(self) -> Path:
        return self.persistence_dir / "mosquitto.db"

    # ------------------------------------------------------------------ life cycle

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running and self._proc else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, what: str) -> BrokerError:
        return BrokerError(
            f"mosquitto {self.version} on {self.host}:{self.port}"
            f"{f' (tls {self.tls_port})' if self.tls_port else ''}: {what}\n"
            f"config {self.config_path}\n--- last lines of {self.log_path} ---\n"
            f"{self.log_tail()}"
        )

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start (or restart) the broker; return once every listener accepts TCP.

        The first start moves to fresh ports if another process took the chosen
        ones; later starts keep their ports (clients reconnect to the same URL) and
        retry until ``timeout`` if the port is still busy.
        """
        if self.is_running:
            raise BrokerError(f"broker on port {self.port} is already running")
        deadline = time.monotonic() + timeout
        for attempt in itertools.count(1):
            self._write_config()
            try:
                self._spawn_and_wait(deadline)
            except _PortInUse as e:
                if not self._started_once:
                    if attempt >= PORT_ATTEMPTS:
                        raise self._fail(f"no free port after {attempt} tries") from e
                    self._pick_ports()
                    continue
                if time.monotonic() > deadline:
                    raise self._fail(f"port still in use after {timeout} s") from e
                time.sleep(0.05)  # the same port must come free (e.g. a stray process)
                continue
            self._started_once = True
            return

    def _spawn_and_wait(self, deadline: float) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"=== tests/support/broker.py: starting {self.binary} ===\n".encode())
            log.flush()
            offset = log.tell()
            in_main = threading.current_thread() is threading.main_thread()
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=_die_with_parent if in_main else None,  # noqa: PLW1509
            )
        _LIVE.add(self)
        ports = [self.port] + ([self.tls_port] if self.tls_port is not None else [])
        while True:
            code = self._proc.poll()
            if code is not None:
                new_log = self.log_path.read_bytes()[offset:].decode(errors="replace")
                self._proc = None
                if "Address already in use" in new_log:
                    raise _PortInUse(f"port {ports} in use")
                raise self._fail(f"exited with code {code} while starting")
            if self._is_up(offset) and all(port_accepts(self.host, p) for p in ports):
                return
            if time.monotonic() > deadline:
                self._terminate(grace=1.0)
                raise self._fail("did not accept connections in time")
            time.sleep(0.005)

    def _is_up(self, offset: int) -> bool:
        # "mosquitto version X running" is logged after every listener is bound, so a
        # stranger who grabbed our port cannot pass for our broker.
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return b" running" in f.read()

    def _terminate(self, grace: float) -> bool:
        """SIGTERM, wait ``grace`` s, then SIGKILL.  True when SIGTERM was enough."""
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return True
        proc.terminate()
        # mosquitto blocks signals while it waits in epoll (up to 100 ms at a time);
        # a connection wakes it so that it acts on SIGTERM now.
        port_accepts(self.host, self.port, timeout=0.05)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False
        return True

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Clean stop (SIGTERM): mosquitto writes its persistence file and exits.

        Killed after ``timeout`` s, and then BrokerError: the database may be stale.
        """
        if not self._terminate(timeout):
            raise self._fail(f"ignored SIGTERM for {timeout} s and was killed")

    def kill(self) -> None:
        """Crash it (SIGKILL): nothing is saved beyond the last autosave."""
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Teardown: stop however it takes, never raise."""
        self._terminate(STOP_TIMEOUT)

    def __enter__(self) -> Broker:
        if not self.is_running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- fixtures


class MakeBroker(Protocol):
    def __call__(
        self,
        *,
        tls: bool = False,
        acl: bool | str = False,
        passwords: Mapping[str, str] | None = None,
        allow_anonymous: bool | None = None,
        username_as_clientid: bool | None = None,
        autosave_interval: int = 1,
        extra_config: str = "",
        start: bool = True,
    ) -> Broker: ...


@pytest.fixture(scope="session")
def mosquitto_binary() -> str:
    """The mosquitto binary; fails (never skips) the test when it is missing."""
    return require_mosquitto()


@pytest.fixture
def make_broker(mosquitto_binary: str, tmp_path: Path) -> Iterator[MakeBroker]:
    """``make_broker(tls=False, acl=False, passwords=None, ...)``: a started Broker
    (the arguments are ``Broker.create``'s).

    Every broker made is stopped at teardown (SIGTERM, SIGKILL after a few seconds),
    whether the test passed or not.
    """
    made: list[Broker] = []

    def make(
        *,
        tls: bool = False,
        acl: bool | str = False,
        passwords: Mapping[str, str] | None = None,
        allow_anonymous: bool | None = None,
        username_as_clientid: bool | None = None,
        autosave_interval: int = 1,
        extra_config: str = "",
        start: bool = True,
    ) -> Broker:
        b = Broker.create(
            tmp_path / f"mosquitto-{next(_SEQ)}",
            tls=tls,
            acl=acl,
            passwords=passwords,
            allow_anonymous=allow_anonymous,
            username_as_clientid=username_as_clientid,
            autosave_interval=autosave_interval,
            extra_config=extra_config,
            binary=mosquitto_binary,
        )
        made.append(b)
        if start:
            try:
                b.start()
            except BrokerError as e:
                pytest.fail(str(e), pytrace=False)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture
def broker(make_broker: MakeBroker) -> Broker:
    """A started plain broker: anonymous MQTT on ``broker.host:broker.port``."""
    return make_broker()
