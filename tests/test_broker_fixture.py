"""The mosquitto fixtures themselves: start/stop/restart, persistence, TLS, passwords, ACL."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lockerd.config import Cloud
from tests.support import broker as broker_mod
from tests.support.broker import (
    ACL_PATH,
    PRODUCTION_CLIENT_ID,
    PRODUCTION_GLOBAL,
    PRODUCTION_TLS,
    Broker,
    BrokerError,
    ClientCert,
    MakeBroker,
    MosquittoNotFound,
    find_mosquitto,
    mosquitto_version,
    parse_mosquitto_conf,
    production_conf,
    require_mosquitto,
    version_tuple,
    write_password_file,
)

WITHIN = 5.0  # seconds: generous bound for things that do happen
REFUSED_TIMEOUT = 0.5  # aiomqtt only times out on a TLS 1.3 refusal (see test below)


def mqtt(host: str, port: int, **kwargs: Any) -> aiomqtt.Client:
    kwargs.setdefault("timeout", WITHIN)
    return aiomqtt.Client(host, port, protocol=aiomqtt.ProtocolVersion.V5, **kwargs)


def tls_params(cert: ClientCert) -> aiomqtt.TLSParameters:
    return aiomqtt.TLSParameters(
        ca_certs=str(cert.ca_certs), certfile=str(cert.certfile), keyfile=str(cert.keyfile)
    )


def hub(b: Broker, name: str) -> aiomqtt.Client:
    """A hub on the TLS listener: its cert CN is its MQTT username."""
    assert b.tls_port is not None
    return mqtt(b.host, b.tls_port, tls_context=b.make_client_cert(name).ssl_context())


async def next_message(client: aiomqtt.Client, within: float = WITHIN) -> aiomqtt.Message:
    async with asyncio.timeout(within):
        return await anext(client.messages)


def alive(b: Broker) -> bool:
    """``b.is_running``, unnarrowed: mypy would keep ``not b.is_running`` across start()."""
    return b.is_running


def session_props(expiry_s: int = 300) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = expiry_s
    return props


@asynccontextmanager
async def persistent(b: Broker, identifier: str) -> AsyncIterator[aiomqtt.Client]:
    """A client whose session (subscriptions, queued QoS 1) outlives its connection.

    aiomqtt's default clean_start (FIRST_ONLY) would wipe the session on connect.
    """
    async with mqtt(
        b.host, b.port, identifier=identifier, clean_start=False, properties=session_props()
    ) as c:
        yield c


# --------------------------------------------------------------------------- basics


def test_version_is_exposed(broker: Broker) -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", broker.version)
    assert broker.version == mosquitto_version()
    assert version_tuple(broker.version) >= (2, 0)


def test_urls_and_ports(make_broker: MakeBroker) -> None:
    plain = make_broker()
    assert plain.url == plain.plain_url == f"mqtt://127.0.0.1:{plain.port}"
    assert plain.tls_port is None
    assert plain.tls_url is None
    assert plain.port != 1883  # never the machine's own broker
    tls = make_broker(tls=True)
    assert tls.tls_port is not None
    assert tls.url == tls.tls_url == f"mqtts://127.0.0.1:{tls.tls_port}"
    assert tls.plain_url == f"mqtt://127.0.0.1:{tls.port}"
    assert tls.ca_cert is not None
    assert tls.ca_cert.exists()
    assert len({plain.port, tls.port, tls.tls_port}) == 3


async def test_plain_roundtrip(broker: Broker) -> None:
    assert broker.is_running
    async with mqtt(broker.host, broker.port) as sub, mqtt(broker.host, broker.port) as pub:
        await sub.subscribe("lockers/H1/cmd", qos=1)
        await pub.publish("lockers/H1/cmd", b"open 3", qos=1)
        msg = await next_message(sub)
    assert msg.topic.value == "lockers/H1/cmd"
    assert msg.payload == b"open 3"


async def test_restart_keeps_port_and_queued_qos1_for_persistent_session(
    make_broker: MakeBroker,
) -> None:
    # autosave off: only the save that SIGTERM triggers can carry the message over.
    b = make_broker(autosave_interval=0)
    port = b.port
    async with persistent(b, "hub-P") as sub:
        await sub.subscribe("lockers/P/cmd", qos=1)
    async with mqtt(b.host, b.port) as pub:  # the hub is offline: the broker queues it
        await pub.publish("lockers/P/cmd", b"open 7", qos=1)

    b.stop()
    assert not alive(b)
    assert b.persistence_file.stat().st_size > 0
    b.start()
    assert alive(b)
    assert b.port == port

    async with persistent(b, "hub-P") as sub:
        msg = await next_message(sub)
    assert (msg.topic.value, msg.payload, msg.qos) == ("lockers/P/cmd", b"open 7", 1)


async def test_kill_then_start_on_same_port(broker: Broker) -> None:
    port = broker.port
    broker.kill()
    assert not broker.is_running
    assert broker.pid is None
    broker.start()
    assert broker.port == port
    async with mqtt(broker.host, broker.port) as c:
        await c.publish("x", b"alive")


def test_stop_kills_a_broker_that_ignores_sigterm(broker: Broker) -> None:
    assert broker.pid is not None
    os.kill(broker.pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    with pytest.raises(BrokerError, match="ignored SIGTERM"):
        broker.stop(timeout=0.2)
    assert not broker.is_running


def test_start_moves_to_a_free_port_when_the_chosen_one_is_taken(
    make_broker: MakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_free_port = broker_mod.free_port
        ports = iter([taken])
        monkeypatch.setattr(
            broker_mod, "free_port", lambda host: next(ports, None) or real_free_port(host)
        )
        b = make_broker()
        assert b.is_running
        assert b.port != taken
        assert "Address already in use" in b.log_path.read_text()


def test_failed_start_reports_the_log_tail(make_broker: MakeBroker) -> None:
    b = make_broker(extra_config="no_such_option 1", start=False)
    with pytest.raises(BrokerError) as e:
        b.start()
    assert "no_such_option" in str(e.value)
    assert str(b.log_path) in str(e.value)
    assert not b.is_running


def test_missing_mosquitto_fails_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(broker_mod, "MOSQUITTO_FALLBACK", "/nonexistent/mosquitto")
    with pytest.raises(MosquittoNotFound, match="apt-get install mosquitto"):
        find_mosquitto()
    # What the fixtures do: a failure (not a skip) with the same hint.
    with pytest.raises(pytest.fail.Exception, match="apt-get install mosquitto"):
        require_mosquitto()


# --------------------------------------------------------------------------- passwords


@pytest.mark.parametrize("use_tool", [True, False], ids=["mosquitto_passwd", "python-hash"])
async def test_password_file(make_broker: MakeBroker, use_tool: bool) -> None:
    b = make_broker(passwords={"cloud": "s3cret"}, start=False)
    assert b.password_file is not None
    write_password_file(b.password_file, {"cloud": "s3cret", "H1": "x"}, use_tool=use_tool)
    assert b.password_file.read_text().startswith("cloud:$7$")
    b.start()

    async with mqtt(b.host, b.port, username="cloud", password="s3cret") as c:
        await c.publish("lockers/H1/cmd", b"ok", qos=1)
    with pytest.raises(aiomqtt.MqttError):
        async with mqtt(b.host, b.port, username="cloud", password="wrong"):
            pass
    with pytest.raises(aiomqtt.MqttError):  # anonymous is off once there are passwords
        async with mqtt(b.host, b.port):
            pass


# --------------------------------------------------------------------------- TLS


async def test_tls_client_cert_connects(make_broker: MakeBroker) -> None:
    b = make_broker(tls=True)
    assert b.tls_port is not None
    cert = b.make_client_cert("H1")
    async with (
        mqtt(b.host, b.tls_port, tls_params=tls_params(cert)) as sub,
        mqtt(b.host, b.tls_port, tls_context=cert.ssl_context()) as pub,
    ):
        await sub.subscribe("lockers/H1/#", qos=1)
        await pub.publish("lockers/H1/evt", b"door 4 closed", qos=1)
        msg = await next_message(sub)
    assert msg.payload == b"door 4 closed"
    assert "u'H1'" in b.log_path.read_text()  # the CN became the username


@pytest.mark.parametrize(
    ("kind", "alert"),
    [("expired", "CERTIFICATE_EXPIRED"), ("other_ca", "UNKNOWN_CA")],
)
async def test_tls_bad_client_cert_is_refused(
    make_broker: MakeBroker, kind: str, alert: str
) -> None:
    b = make_broker(tls=True)
    assert b.tls_port is not None
    cert = b.make_client_cert(
        "H1", expired=kind == "expired", signed_by_other_ca=kind == "other_ca"
    )

    # The broker's alert, read on a bare TLS socket: TLS 1.3 finishes the client's
    # side of the handshake first, so the refusal shows on the first read.
    def first_read() -> None:
        with (
            socket.create_connection((b.host, b.tls_port), timeout=WITHIN) as raw,
            cert.ssl_context().wrap_socket(raw, server_hostname=b.host) as tls,
        ):
            tls.recv(1)

    with pytest.raises(ssl.SSLError, match=alert):
        await asyncio.to_thread(first_read)

    # aiomqtt: paho logs the alert and drops the socket, but aiomqtt ignores a
    # disconnect before CONNACK, so the refusal surfaces as its timeout.
    with pytest.raises(aiomqtt.MqttError):
        async with mqtt(b.host, b.tls_port, tls_params=tls_params(cert), timeout=REFUSED_TIMEOUT):
            pass
    assert b.log_path.read_text().count("certificate verify failed") == 2
    assert b.is_running


# --------------------------------------------------------------------------- ACL


async def test_acl_hub_is_confined_to_its_own_subtree(make_broker: MakeBroker) -> None:
    """config/mosquitto-acl.conf: a hub reads its own `cmd` only and writes its own
    `reply`, `evt`, `status` and `state` only; the cloud reads and writes everything."""
    b = make_broker(tls=True, acl=True)
    async with hub(b, "A") as a, hub(b, "cloud") as cloud:
        await a.subscribe("lockers/A/#", qos=1)  # granted, but only `cmd` is delivered
        await a.subscribe("lockers/B/#", qos=1)  # mosquitto 2.0 grants it, delivers nothing
        await cloud.subscribe("lockers/#", qos=1)

        # cloud -> B is not seen by A.  The sentinel to A comes after it from the
        # same publisher, so if B's message were delivered it would arrive first.
        await cloud.publish("lockers/B/cmd", b"open 1", qos=1)
        await cloud.publish("lockers/A/cmd", b"sentinel", qos=1)
        got = await next_message(a)
        assert (got.topic.value, got.payload) == ("lockers/A/cmd", b"sentinel")

        # A -> lockers/B/evt and A -> its own cmd never reach anyone (PUBACK rc 135,
        # which aiomqtt swallows); A -> its own evt and state do.
        await a.publish("lockers/B/evt", b"forged", qos=1)
        await a.publish("lockers/A/cmd", b"open 3", qos=1)
        await a.publish("lockers/A/evt", b"door 2 open", qos=1)
        await a.publish("lockers/A/state", b"ok", qos=1)
        seen = [await next_message(cloud) for _ in range(4)]
        assert [(m.topic.value, m.payload) for m in seen] == [
            ("lockers/B/cmd", b"open 1"),  # the cloud's own publishes, echoed back
            ("lockers/A/cmd", b"sentinel"),
            ("lockers/A/evt", b"door 2 open"),
            ("lockers/A/state", b"ok"),
        ]

        # Proving absence, bounded: nothing else is on its way to A (not its own evt
        # nor state: it reads its commands only) nor to the cloud.
        await asyncio.sleep(0.2)
        assert len(a.messages) == 0
        assert len(cloud.messages) == 0
    assert "Denied PUBLISH" in b.log_path.read_text()


# --------------------------------------------------------------------------- production

HUB_A, HUB_B = "hub-aaa", "hub-bbb"
LOGINS = {HUB_A: "pw-aaa", HUB_B: "pw-bbb", "cloud": "pw-cloud"}
DURATION_S = {"h": 3600, "d": 86_400, "w": 7 * 86_400}


def test_the_shipped_broker_config_has_what_production_needs() -> None:
    """config/mosquitto-lockerd.conf, the operator's broker (docs/install.md)."""
    options, listener = production_conf()
    assert options["allow_anonymous"] == "false"
    assert Path(options["acl_file"]).name == ACL_PATH.name
    assert int(options["max_packet_size"]) == Cloud.model_fields["max_packet_kb"].default * 1024
    assert options["persistence"] == "true"
    expiration = options["persistent_client_expiration"]
    seconds = int(expiration[:-1]) * DURATION_S[expiration[-1]]
    assert seconds == Cloud.model_fields["session_expiry_s"].default  # 7 days
    assert {k: listener[k] for k in (*PRODUCTION_TLS, PRODUCTION_CLIENT_ID)} == {
        "require_certificate": "true",
        "use_identity_as_username": "true",
        "use_username_as_clientid": "true",
    }
    assert {"cafile", "certfile", "keyfile"} <= listener.keys()


def test_a_broker_with_an_acl_takes_the_shipped_settings(make_broker: MakeBroker) -> None:
    b = make_broker(tls=True, acl=True)
    options, listener = production_conf()
    written = parse_mosquitto_conf(b.config_path.read_text())
    for key in ("allow_anonymous", *PRODUCTION_GLOBAL):
        assert written.options[key] == options[key]
    assert written.listeners.keys() == {f"{b.port} {b.host}", f"{b.tls_port} {b.host}"}
    for opts in written.listeners.values():
        assert opts[PRODUCTION_CLIENT_ID] == listener[PRODUCTION_CLIENT_ID]
    tls = written.listeners[f"{b.tls_port} {b.host}"]
    assert {k: tls[k] for k in PRODUCTION_TLS} == {k: listener[k] for k in PRODUCTION_TLS}


def fleet(make_broker: MakeBroker, via: str, *, protected: bool) -> Broker:
    """A broker with the shipped ACL whose clients log in with their certificate (on the
    TLS listener) or their password (``LOGINS``, on the plain one). ``protected``: with
    ``use_username_as_clientid`` (as shipped); False shows what it protects from."""
    if via == "cert":
        return make_broker(tls=True, acl=True, username_as_clientid=protected)
    return make_broker(acl=True, passwords=LOGINS, username_as_clientid=protected)


def login(
    b: Broker, name: str, *, identifier: str | None = None, persistent: bool = False
) -> aiomqtt.Client:
    """``name``'s login, sending ``identifier`` (default ``name``) as its client id: a
    persistent session as a hub keeps it, or else clean start."""
    session: dict[str, Any] = {"clean_start": True}
    if persistent:
        session = {"clean_start": False, "properties": session_props()}
    if b.tls_port is not None:
        ctx = b.make_client_cert(name).ssl_context()
        return mqtt(b.host, b.tls_port, identifier=identifier or name, tls_context=ctx, **session)
    return mqtt(
        b.host,
        b.port,
        identifier=identifier or name,
        username=name,
        password=LOGINS[name],
        **session,
    )


def took_client_id(b: Broker, client_id: str, username: str) -> bool:
    """The broker's log says that ``username``'s login held the client id ``client_id``."""
    pattern = rf"New client connected from \S+ as {client_id} \([^)]*u'{username}'\)"
    return re.search(pattern, b.log_path.read_text()) is not None


VIAS = pytest.mark.parametrize("via", ["cert", "password"])
PROTECTED = pytest.mark.parametrize(
    "protected", [True, False], ids=["username_as_clientid", "without-it"]
)


@VIAS
@PROTECTED
async def test_another_hubs_login_cannot_wipe_a_hubs_session(
    make_broker: MakeBroker, via: str, protected: bool
) -> None:
    """hub-bbb's login sending hub-aaa's client id with clean start, while hub-aaa is
    away: as shipped it gets a session of its own (hub-bbb's), and the grant queued for
    hub-aaa is delivered when it returns. Without use_username_as_clientid it would have
    wiped hub-aaa's session, grant and subscription with it."""
    b = fleet(make_broker, via, protected=protected)
    cmd = f"lockers/{HUB_A}/cmd"
    async with login(b, HUB_A, persistent=True) as a:
        await a.subscribe(cmd, qos=1)
    async with login(b, "cloud") as cloud:  # hub-aaa is away: its session queues it
        await cloud.publish(cmd, b"grant-1", qos=1)
    async with login(b, HUB_B, identifier=HUB_A):  # CONNACK: the broker has acted on it
        pass

    async with login(b, HUB_A, persistent=True) as a:
        # Subscribing again (a no-op for a kept session) and a sentinel from the cloud
        # turn "the grant is lost" into a message too: the sentinel comes after
        # anything that hub-aaa's session kept.
        await a.subscribe(cmd, qos=1)
        async with login(b, "cloud") as cloud:
            await cloud.publish(cmd, b"sentinel", qos=1)
        first = await next_message(a)
    assert first.topic.value == cmd
    assert first.payload == (b"grant-1" if protected else b"sentinel")
    assert took_client_id(b, HUB_A, HUB_B) is not protected


@VIAS
@PROTECTED
async def test_another_hubs_login_cannot_kick_a_hub_off(
    make_broker: MakeBroker, via: str, protected: bool
) -> None:
    """hub-bbb's login sending hub-aaa's client id while hub-aaa is online: as shipped,
    hub-aaa stays connected and keeps getting its commands on the same connection.
    Without use_username_as_clientid the broker would close hub-aaa's connection (the
    MQTT session takeover), and with one hub's login anyone could do that to every hub."""
    b = fleet(make_broker, via, protected=protected)
    cmd = f"lockers/{HUB_A}/cmd"
    takeover = f"Client {HUB_A} already connected, closing old connection"
    async with login(b, HUB_A, persistent=True) as a:
        await a.subscribe(cmd, qos=1)
        # The broker closes the old connection before it sends the new one CONNACK, so
        # once the `async with` is in, a takeover has happened (or never will).
        async with login(b, HUB_B, identifier=HUB_A), login(b, "cloud") as cloud:
            await cloud.publish(cmd, b"after", qos=1)
            if protected:
                got = await next_message(a)  # aiomqtt never reconnects: the same connection
                assert (got.topic.value, got.payload) == (cmd, b"after")
                await a.publish(f"lockers/{HUB_A}/evt", b"still here", qos=1)  # its PUBACK
            else:
                with pytest.raises(aiomqtt.MqttError):  # "Disconnected during message iteration"
                    await next_message(a)
    assert (takeover in b.log_path.read_text()) is not protected
    assert took_client_id(b, HUB_A, HUB_B) is not protected
