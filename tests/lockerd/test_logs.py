"""The log set-up: JSON lines with bound context, the libraries' stdlib loggers in the
same shape, a console format in a terminal, and secrets redacted whoever logs them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from lockerd.logs import bind, bound, configure


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure(level="info", stream=stream)  # not a terminal: JSON
    structlog.contextvars.clear_contextvars()
    yield stream
    structlog.contextvars.clear_contextvars()
    configure(level="warning", json=True, stream=io.StringIO())


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_our_lines_are_json_with_the_bound_context(out: io.StringIO) -> None:
    bind(hub="hub-0042")
    with bound(compartment="A07", parcel="P-1", command="c-9"):
        structlog.get_logger("lockerd.test").warning("door_jammed", by="keypad:1")
    structlog.get_logger("lockerd.test").info("after")
    first, second = lines(out)
    assert first["event"] == "door_jammed"
    assert first["level"] == "warning"
    assert (first["hub"], first["compartment"], first["parcel"], first["command"]) == (
        "hub-0042",
        "A07",
        "P-1",
        "c-9",
    )
    assert first["timestamp"].endswith("Z")
    assert second["hub"] == "hub-0042"
    assert "compartment" not in second  # the block's context ended with it


def test_library_lines_take_the_same_shape_and_context(out: io.StringIO) -> None:
    bind(hub="hub-0042")
    with bound(bus="A"):
        # (drivers/modbus.py keeps pymodbus at CRITICAL: we use its PDUs, not its I/O)
        logging.getLogger("pymodbus.logging").critical("retrying %s", "slave 3")
        logging.getLogger("aiomqtt").error("connection lost")
    pymodbus, aiomqtt = lines(out)
    assert pymodbus["event"] == "retrying slave 3"
    assert pymodbus["logger"] == "pymodbus.logging"
    assert pymodbus["level"] == "critical"
    assert (pymodbus["hub"], pymodbus["bus"]) == ("hub-0042", "A")
    assert aiomqtt["logger"] == "aiomqtt"
    assert aiomqtt["level"] == "error"


def test_library_noise_stays_out(out: io.StringIO) -> None:
    import lockerd.drivers.modbus  # noqa: F401, PLC0415 - it quiets pymodbus

    logging.getLogger("pymodbus.logging").warning("decode failed ...")
    logging.getLogger("aiomqtt").debug("PINGREQ")
    assert out.getvalue() == ""


def test_secrets_are_redacted_whoever_logs_them(out: io.StringIO) -> None:
    structlog.get_logger("x").info("oops", code="12345678", password="hunter2", label="A01")
    logging.getLogger("lib").warning("oops", extra={"signature": "c2lnbmF0dXJl"})
    ours, lib = lines(out)
    assert ours["code"] == "[redacted]"
    assert ours["password"] == "[redacted]"
    assert ours["label"] == "A01"
    assert "12345678" not in out.getvalue()
    assert "hunter2" not in out.getvalue()
    assert lib["event"] == "oops"


def test_a_terminal_gets_the_console_format() -> None:
    tty = Tty()
    configure(level="info", stream=tty)
    try:
        structlog.get_logger("x").info("door_opened", compartment="A01")
        text = tty.getvalue()
        assert "door_opened" in text
        assert "compartment" in text
        with pytest.raises(json.JSONDecodeError):
            json.loads(text.splitlines()[0])
    finally:
        configure(level="warning", json=True, stream=io.StringIO())
