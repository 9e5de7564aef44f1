"""One daemon per state directory.

Two daemons on one store would both drive the doors, fight for the MQTT client id,
and the second would unlink the first one's API socket. :class:`StateLock` holds an
exclusive ``flock`` on the state directory itself for as long as the daemon runs
(the kernel drops it when the process dies, even by SIGKILL, so nothing stale ever
blocks a start; and a directory, unlike a lock file, cannot be deleted from under
a running daemon by a clean-up script); ``lockerd.pid`` in it says who holds it.
:func:`claim_socket` refuses to take over a socket path another process still
answers on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path
from types import TracebackType

from lockerd.errors import LockerdError


class AlreadyRunning(LockerdError):
    """Another lockerd holds this state directory (or answers on this socket)."""


class StateLock:
    """An exclusive ``flock`` on the state directory, held for the daemon's life."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / "lockerd.pid"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = _read_pid(self.path)
            who = f"pid {holder}" if holder else "another process"
            raise AlreadyRunning(
                f"lockerd is already running ({who}) on the state directory "
                f"{self.dir}; stop it first (systemctl stop lockerd)"
            ) from None
        self._fd = fd
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(self.path)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)  # (closing drops the lock)
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip() or 0) or None
    return None


def claim_socket(path: str | Path) -> None:
    """Raise :class:`AlreadyRunning` if a process answers on ``path``; a socket file
    that nobody answers on is a stale one, left to be replaced."""
    p = Path(path)
    if not p.is_socket():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(p))
        except OSError:
            return  # refused or gone: stale
    raise AlreadyRunning(
        f"another process answers on the socket {p}; lockerd is already running "
        "(a second daemon would take the socket from it)"
    )


__all__ = ["AlreadyRunning", "StateLock", "claim_socket"]
