"""The hand-over from the spool to paho: one thread that publishes spooled messages in order, at most
`MAX_IN_FLIGHT` unacknowledged, and removes each from the spool once the broker has acknowledged it.

A message is on disk from before it is sent until after the broker has it, so QoS 1 keeps its promise (at least
once: duplicates possible, loss not) across reconnects and restarts; paho re-sends its unacknowledged messages
itself after a reconnect. Acknowledgements arrive in paho's thread and are only queued there; this thread applies
them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from paho.mqtt.client import MQTTMessageInfo
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from clapd.daemon.mqtt.connection import MqttConnection
from clapd.daemon.mqtt.spool import Spool, SpooledMessage

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 100  # messages handed to paho and not yet acknowledged
SENDER_IDLE_SECONDS = 1.0  # the sender looks at the spool at least this often
SENDER_ERROR_BACKOFF_SECONDS = 5.0
DRAIN_POLL_SECONDS = 0.01
STOP_POLL_SECONDS = 0.02
_ACCEPTED = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)  # paho keeps QoS>0 while offline


class Sender:
    def __init__(self, spool: Spool, connection: MqttConnection, *, each_round: Callable[[], None]) -> None:
        """`each_round`: called in the sender's thread after each round's acknowledgements (the announcer's
        confirmation of its removals, which polls paho's deliveries)."""
        self._spool = spool
        self._connection = connection
        self._each_round = each_round
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._acks: deque[tuple[int, ReasonCode]] = deque()  # (mid, reason) from paho's thread to the sender
        self._in_flight: dict[int, int] = {}  # paho mid -> spool id; the sender thread's alone
        self._cursor = 0  # spool id of the last message handed to paho
        self._counts_lock = threading.Lock()
        self._sent = self._rejected = 0

    @property
    def sent(self) -> int:
        """Messages the broker acknowledged (QoS 0: handed to the socket)."""
        with self._counts_lock:
            return self._sent

    @property
    def rejected(self) -> int:
        """Messages dropped because paho or the broker refused them."""
        with self._counts_lock:
            return self._rejected

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at the spool and the acknowledgements now (any thread)."""
        self._wake.set()

    def take_ack(self, mid: int, reason: ReasonCode) -> None:
        """paho's report on one publication; from paho's thread."""
        self._acks.append((mid, reason))
        self._wake.set()

    def drain(self, deadline: float) -> None:
        """While connected, give what is spooled until `deadline` to be acknowledged (a clean stop flushes)."""
        while self._connection.connected and len(self._spool) > 0 and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(DRAIN_POLL_SECONDS)

    def wait_for_acks(self, info: MQTTMessageInfo, deadline: float) -> None:
        """Until the broker has `info`'s message and everything in flight, or the deadline."""
        while time.monotonic() < deadline:
            if info.is_published() and not self._in_flight:
                return
            self._wake.set()
            self._stopping.wait(STOP_POLL_SECONDS)
        logger.warning(
            "MQTT: stopping before the broker acknowledged everything; %d messages in flight stay in the spool",
            len(self._in_flight),
        )

    def stop(self, deadline: float) -> bool:
        """End the thread (waiting until `deadline`, at least `SENDER_IDLE_SECONDS`); False if it never started."""
        thread = self._thread
        if thread is None:
            return False
        self._stopping.set()
        self._wake.set()
        thread.join(max(deadline - time.monotonic(), SENDER_IDLE_SECONDS))
        if not thread.is_alive():
            self._take_acks()
        return True

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(SENDER_IDLE_SECONDS)
            self._wake.clear()
            try:
                self._take_acks()
                self._each_round()
                if self._connection.ready:
                    self._send_spooled()
            except Exception:
                logger.exception("MQTT sender failed; retrying in %.0f s", SENDER_ERROR_BACKOFF_SECONDS)
                self._stopping.wait(SENDER_ERROR_BACKOFF_SECONDS)

    def _send_spooled(self) -> None:
        room = MAX_IN_FLIGHT - len(self._in_flight)
        if room <= 0:
            return
        for item in self._spool.peek(room, after=self._cursor):
            if not self._connection.ready or not self._hand_to_paho(item):
                return

    def _hand_to_paho(self, item: SpooledMessage) -> bool:
        """Publish one spooled message; False when it could not be handed over now (it stays spooled)."""
        message = item.message
        try:
            info = self._connection.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
        except ValueError as e:
            logger.error("MQTT: cannot publish on %r, dropped the message: %s", message.topic, e)
            self._forget(item.id, sent=False)
        else:
            if message.qos == 0:
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return False
                self._forget(item.id, sent=True)
            elif info.rc in _ACCEPTED:
                self._in_flight[info.mid] = item.id
            else:
                logger.warning("MQTT: paho did not take a message (%s); retrying later", info.rc)
                return False
        self._cursor = item.id
        return True

    def _take_acks(self) -> None:
        done: list[int] = []
        sent = rejected = 0
        while self._acks:
            mid, reason = self._acks.popleft()
            spool_id = self._in_flight.pop(mid, None)
            if spool_id is None:
                continue  # a status message, or QoS 0 (already forgotten)
            done.append(spool_id)
            if reason.is_failure:
                rejected += 1
                logger.warning("MQTT: the broker refused a message (%s); dropped it", reason)
            else:
                sent += 1
        if done:
            self._spool.remove(done)
            with self._counts_lock:
                self._sent += sent
                self._rejected += rejected

    def _forget(self, spool_id: int, *, sent: bool) -> None:
        self._spool.remove([spool_id])
        with self._counts_lock:
            if sent:
                self._sent += 1
            else:
                self._rejected += 1
