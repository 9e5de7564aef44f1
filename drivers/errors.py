"""Typed errors of the hardware edge.

Every failure a driver can meet has its own type, and every message says what a
technician can check. Nothing below the service raises a bare ``Exception``.
"""

from __future__ import annotations

from lockerd.errors import LockerdError


class DriverError(LockerdError):
    """Base of every error raised by ``drivers``."""


class FrameError(DriverError):
    """Bytes that are not a valid frame of the protocol (bad checksum, bad length, ...).

    Decoders never raise this for garbage on the line (they skip it and count it);
    it is raised by ``decode_*`` functions given one complete frame that is wrong.
    """


class EncodeError(DriverError, ValueError):
    """A request that cannot be put on the wire (address or channel out of range)."""


class BusError(DriverError):
    """A transaction on a bus failed."""

    def __init__(self, message: str, *, bus: str = "", board: str = "") -> None:
        super().__init__(message)
        self.bus = bus
        self.board = board


class PortUnavailable(BusError):
    """The serial port or TCP gateway cannot be opened or was lost (unplugged adapter)."""


class PortBusy(PortUnavailable):
    """Another process holds the serial port (only the daemon may own a bus)."""


class BusClosed(BusError):
    """The bus was closed while the request waited."""


class ReplyTimeout(BusError):
    """The board did not answer within the request's timeout (after all read attempts)."""


class BoardOffline(BusError):
    """The board is marked offline; the request was refused without using the wire.

    An offline board is probed again at its probe interval, so it comes back by
    itself when it answers; meanwhile it costs the other boards no bus time.
    """


class UnlockUnconfirmed(BusError):
    """An unlock was sent but its acknowledgement did not arrive.

    The lock may or may not have pulsed. Unlocks are never retried blindly: read
    the door state and decide.
    """


class UnlockNotSent(BusError):
    """An unlock was not sent: the path to the board was not proven alive first.

    Nothing was pulsed; it is safe to try again.
    """
