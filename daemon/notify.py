"""systemd's sd_notify protocol: readiness, status, reload, stop and watchdog messages to the service manager.

The protocol (sd_notify(3), sd_watchdog_enabled(3)) is one datagram of newline-separated KEY=VALUE lines sent to
the AF_UNIX socket named by $NOTIFY_SOCKET: a path, or an abstract name written with a leading '@'. Without
$NOTIFY_SOCKET (not started by systemd, or not Type=notify) every call does nothing. A failed send is logged,
never raised: the daemon must keep listening even when the manager's socket is gone.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS = 1.0  # a send blocks only while the manager's queue is full; never stall the loop longer


class Notifier:
    """Messages to systemd. Thread-safe; `watchdog()` is cheap enough to call on every loop iteration."""

    def __init__(
        self,
        address: str | None,
        watchdog_usec: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`address`: the socket, as in $NOTIFY_SOCKET ('@' for the abstract namespace); None: disabled.
        `watchdog_usec`: the manager's watchdog timeout in microseconds; None: no watchdog."""
        self._address = _socket_address(address) if address else None
        self._interval = watchdog_usec / 1e6 if watchdog_usec and self._address else None
        self._clock = clock
        self._last_ping: float | None = None
        self._ping_lock = threading.Lock()
        self._send_lock = threading.Lock()  # guards `_failing`; sendto itself is atomic per datagram
        self._failing = False
        self._socket: socket.socket | None = None
        if self._address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.settimeout(SEND_TIMEOUT_SECONDS)

    @classmethod
    def from_environment(
        cls,
        environ: Mapping[str, str] | None = None,
        pid: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> Notifier:
        """The notifier systemd asked for: $NOTIFY_SOCKET, and $WATCHDOG_USEC when $WATCHDOG_PID is unset or ours."""
        env = os.environ if environ is None else environ
        usec = _watchdog_usec(env, os.getpid() if pid is None else pid)
        return cls(env.get("NOTIFY_SOCKET") or None, usec, clock=clock)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """The manager's watchdog timeout in seconds (pings go out every half of it); None: no watchdog."""
        return self._interval

    def ready(self, status: str | None = None) -> None:
        """Start-up (or a reload) is complete."""
        self._send("READY=1", status)

    def status(self, text: str) -> None:
        """A one-line status for `systemctl status`."""
        self._send(None, text)

    def reloading(self, status: str | None = None) -> None:
        """A reload starts; `ready()` must follow. MONOTONIC_USEC lets the manager tie the two to this reload."""
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}", status)

    def stopping(self, status: str | None = None) -> None:
        """Shutdown has begun."""
        self._send("STOPPING=1", status)

    def extend_timeout(self, seconds: float) -> None:
        """Ask for `seconds` more before the start, reload or stop in progress times out (e.g. an engine build)."""
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}", None)

    def watchdog(self) -> None:
        """Keep-alive, sent at most once per half the watchdog interval; other calls return at once."""
        if self._interval is None or not self._ping_lock.acquire(blocking=False):
            return  # no watchdog, or another thread is pinging right now
        try:
            now = self._clock()
            if self._last_ping is None or now - self._last_ping >= self._interval / 2:
                if self._send("WATCHDOG=1", None):
                    self._last_ping = now
        finally:
            self._ping_lock.release()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()

    def _send(self, message: str | None, status: str | None) -> bool:
        if self._socket is None:
            return False
        lines = [message] if message else []
        if status is not None:
            lines.append("STATUS=" + " ".join(status.split()))  # one line: a newline would start a new field
        with self._send_lock:
            try:
                self._socket.sendto("\n".join(lines).encode(), self._address)
            except OSError as e:
                if not self._failing:  # once per outage, not once per watchdog ping
                    logger.warning("cannot notify systemd at %r: %s", self._address, e)
                self._failing = True
                return False
            if self._failing:
                logger.info("notifying systemd again")
            self._failing = False
            return True


def _socket_address(address: str) -> str | None:
    if address.startswith("@"):
        return "\0" + address[1:]  # the abstract namespace: a leading NUL instead of '@'
    if address.startswith("/"):
        return address
    logger.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract '@' name: not notifying systemd", address)
    return None


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """$WATCHDOG_USEC when it is meant for `pid`: $WATCHDOG_PID names the process the manager expects pings from."""
    usec, target = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
    if not usec:
        return None
    try:
        value = int(usec)
        if target and int(target) != pid:
            return None  # meant for another process (e.g. the one that exec'd us)
    except ValueError:
        logger.warning("WATCHDOG_USEC=%r / WATCHDOG_PID=%r are not numbers: no watchdog pings", usec, target)
        return None
    return value if value > 0 else None
