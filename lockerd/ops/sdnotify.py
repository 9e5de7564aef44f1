"""The systemd notify protocol (sd_notify(3)): READY, WATCHDOG, STOPPING, STATUS.

One datagram per message to the Unix socket named by ``NOTIFY_SOCKET`` (a path, or
an abstract name starting with ``@``). Without that variable (not run by systemd:
a terminal, a test) every call is a no-op. Written here rather than taken from a
package: the protocol is one ``sendto``, ``systemd-python`` needs libsystemd's
headers and a compiler on the edge box, and ``sdnotify`` is unmaintained and
blocks (ADR 0011).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Tells systemd how the daemon is (READY, WATCHDOG, STOPPING, STATUS); does
    nothing when not run by systemd."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address: str | bytes | None = None
        self._sock: socket.socket | None = None
        where = env.get("NOTIFY_SOCKET", "")
        if where.startswith("@"):  # abstract namespace
            self.address = b"\0" + where[1:].encode()
        elif where.startswith("/"):
            self.address = where
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self.watchdog_s: float | None = None  # systemd's WatchdogSec, when it watches us
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """``fields`` such as ``"READY=1"``, in one datagram; ``False`` if not sent."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            if not self._failed:  # once: a watchdog ping a second would flood the log
                self._failed = True
                log.error(  # noqa: TRY400 - a known condition, not a traceback
                    "sd_notify_failed",
                    socket=str(self.address),
                    error=str(exc),
                    hint="systemd's notify socket is unreachable: with Type=notify the "
                    "start will time out, and with WatchdogSec the service will be restarted",
                )
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
