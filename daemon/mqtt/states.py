"""The detections' retained states, published again now and then (`mqtt.state_refresh_seconds`).

A retained state downstream can end on an older value than the daemon's: a mosquitto bridge sends its broker's
retained messages again on every reconnect, queued behind its backlog, and a state change published while that
queue drains reaches the far broker first, so the older copy lands last (tests/test_fleet.py caught the centre's
state left at "ON" after the event had ended); a broker restarted without persistence forgets them altogether.
Publishing each current state again every so often heals either within that time. A refresh waits while the
broker is away or anything is still spooled: the spool's last state message is the current one anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection

from clapd.daemon.mqtt.connection import MqttConnection
from clapd.daemon.mqtt.spool import OutgoingMessage, Spool


class StateRefresher:
    """Keeps each state topic's latest payload (from the outputs' thread) and spools them all again when due (from
    the sender's thread, once per round)."""

    def __init__(self, spool: Spool, connection: MqttConnection, qos: int, interval_seconds: float) -> None:
        self._spool, self._connection, self._qos = spool, connection, qos
        self._interval = interval_seconds  # 0: never
        self._states: dict[str, tuple[str, bytes]] = {}  # topic -> (its detection, the payload last published)
        self._lock = threading.Lock()
        self._due = time.monotonic() + interval_seconds

    def record(self, detection: str, topic: str, payload: bytes) -> None:
        with self._lock:
            self._states[topic] = (detection, payload)

    def keep_only(self, detections: Collection[str]) -> None:
        """Forget the states of detections no longer configured: a removed one's is not published again."""
        with self._lock:
            self._states = {topic: kept for topic, kept in self._states.items() if kept[0] in detections}

    def refresh(self) -> None:
        """Spool every known state again if the interval has passed, the broker is there and nothing waits."""
        if self._interval <= 0 or time.monotonic() < self._due:
            return
        if not self._connection.connected or len(self._spool) > 0:
            return
        with self._lock:
            states = [(topic, payload) for topic, (_, payload) in self._states.items()]
        for topic, payload in states:
            self._spool.push(OutgoingMessage(topic, payload, self._qos, retain=True))
        self._due = time.monotonic() + self._interval
