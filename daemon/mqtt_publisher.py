"""Detection events and states to an MQTT broker (paho-mqtt 2.x), through a queue on disk.

Threads: `publish_event` and `publish_state` (the daemon's event thread) only append to the disk queue and never
touch the network; paho's network thread connects, reconnects with exponential back-off and reports acks; one
sender thread hands queued messages to paho in order, at most `MAX_IN_FLIGHT` unacknowledged, and removes each
from disk once the broker has acknowledged it. A message is on disk from before it is sent until after the broker
has it, so QoS 1 keeps its promise (at least once: duplicates possible, loss not) across reconnects and restarts;
paho re-sends its unacknowledged messages itself after a reconnect.

Home Assistant discovery, control results and input levels bypass the disk queue and go to paho directly:
discovery is rebuilt from the current detections and re-sent on every connect (what must outlive a restart, the
entities to remove, is kept in `Announcements`' file); a control result answers a live request and must not wait
behind a backlog of queued events; a level is worthless once stale. Control requests are parsed in paho's thread
and handed to the daemon's handler, which only enqueues them.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, MQTTMessageInfo
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from clapd.daemon.config import DetectionConfig, MqttConfig, TlsConfig
from clapd.daemon.control import ControlRequest, ControlResult, take_request
from clapd.daemon.event_queue import DiskQueue, OutgoingMessage, QueuedMessage
from clapd.daemon.ha_discovery import ANNOUNCED_FILE, Announcements, DiscoverySettings, discovery_messages
from clapd.daemon.mqtt_payloads import (
    STATE_OFF,
    STATE_ON,
    STATUS_OFFLINE,
    STATUS_ONLINE,
    EventPayload,
    Topics,
    level_payload,
)
from clapd.daemon.records import DetectionEvent

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT = 100  # messages handed to paho and not yet acknowledged
PAHO_WINDOW = 20  # paho's own window on the wire: mosquitto's default receive maximum (paho ignores the broker's)
SENDER_IDLE_SECONDS = 1.0  # the sender looks at the queue at least this often
DRAIN_SHARE = 0.75  # of stop()'s timeout spent flushing the queue before saying "offline"
DRAIN_POLL_SECONDS = 0.01
SENDER_ERROR_BACKOFF_SECONDS = 5.0
STOP_POLL_SECONDS = 0.02
AUTH_REFUSALS = frozenset({134, 135})  # "Bad user name or password", "Not authorized" (paho maps 3.1.1's 4 and 5)
_ACCEPTED = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)  # paho keeps QoS>0 while offline


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """Counters since the publisher was created."""

    connected: bool  # a session with the broker is up (a refused connection never counts)
    queued: int  # messages on disk, including those sent but not yet acknowledged
    dropped: int  # messages thrown away: queue or disk full, or refused by the broker
    sent: int  # messages the broker acknowledged (QoS 0: handed to the socket)
    connects: int
    disconnects: int  # sessions lost or closed
    auth_failures: int  # connections refused for bad credentials or authorization


class MqttPublisher:
    def __init__(
        self,
        config: MqttConfig,
        queue_path: Path,
        *,
        client_id_default: str,
        reconnect_min_seconds: int = 1,
        reconnect_max_seconds: int = 60,
    ) -> None:
        self._config = config
        self._topics = Topics(config.topic_prefix)
        self._client_id = config.client_id or client_id_default
        self._reconnect_delays = (reconnect_min_seconds, reconnect_max_seconds)
        self._queue = DiskQueue(queue_path, config.queue_max_events)
        self._client: Client | None = None
        self._sender: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._closing = False  # stop() began: hand nothing new to paho
        self._connected = False
        self._problem: str | None = None  # the connection problem last logged, so each change is logged once
        self._acks: deque[tuple[int, ReasonCode]] = deque()  # (mid, reason) from paho's thread to the sender
        self._in_flight: dict[int, int] = {}  # paho mid -> queue id; the sender thread's alone
        self._cursor = 0  # queue id of the last message handed to paho
        self._counts_lock = threading.Lock()
        self._sent = self._rejected = self._connects = self._disconnects = self._auth_failures = 0
        self._discovery = DiscoverySettings.from_config(config, self._client_id)
        self._announcements = Announcements(queue_path.parent / ANNOUNCED_FILE)
        self._control_handler: Callable[[ControlRequest], None] | None = None

    def start(self) -> None:
        """Connect in the background; a broker that is down now is retried with back-off, never raised."""
        if self._client is not None or self._closing:
            raise RuntimeError("an MqttPublisher starts once; make a new one (on the same queue) to start again")
        self._client = self._make_client()
        if self._config.control.enabled and self._config.tls is None:
            logger.warning("MQTT control is on without TLS: requests and the password cross the network in clear")
        self._sender = threading.Thread(target=self._run_sender, name="mqtt-sender", daemon=True)
        self._sender.start()
        self._client.connect_async(self._config.host, self._config.port, self._config.keepalive_seconds)
        self._client.loop_start()
        logger.info(
            "MQTT: connecting to %s:%d as %r (MQTT %s, %d messages queued)",
            self._config.host,
            self._config.port,
            self._client_id,
            self._config.protocol,
            len(self._queue),
        )

    def publish_event(self, event: DetectionEvent) -> None:
        payload = EventPayload.from_event(event).to_json()
        topic = self._topics.event(event.stream, event.detection)
        self._enqueue(OutgoingMessage(topic, payload, self._config.qos, retain=False))

    def publish_state(self, stream: str, detection: str, on: bool) -> None:
        payload = (STATE_ON if on else STATE_OFF).encode()
        self._enqueue(OutgoingMessage(self._topics.state(stream, detection), payload, self._config.qos, retain=True))

    def announce(self, streams: Iterable[str], detections: Mapping[str, DetectionConfig]) -> None:
        """Make the Home Assistant entities those of these streams and detections (none while discovery is off).

        Published now when connected, and again on every connect and whenever Home Assistant says "online";
        entities announced before (by this run or an earlier one) and not now are removed.
        """
        enabled = self._config.home_assistant.enabled
        messages = discovery_messages(self._discovery, streams, detections) if enabled else {}
        self._announcements.update(messages)
        if self._connected and not self._closing:
            self._publish_discovery()

    def set_control_handler(self, handler: Callable[[ControlRequest], None]) -> None:
        """Take valid control requests (with `mqtt.control.enabled`); `handler` runs in paho's thread: only enqueue.

        Invalid requests are answered with a `ControlResult` without reaching it.
        """
        self._control_handler = handler
        client = self._client
        if self._config.control.enabled and client is not None and self._connected:
            client.subscribe(self._topics.control_set, qos=1)

    def publish_control_result(self, result: ControlResult) -> None:
        """QoS 1, not retained, straight to paho (kept in memory, not on disk, while the broker is away)."""
        client = self._client
        if client is None or self._closing:
            logger.warning("MQTT: not running, dropped the control result for %r", result.request_id)
            return
        client.publish(self._topics.control_result, result.to_json(), qos=1, retain=False)

    def publish_level(self, stream: str, dbfs: float) -> None:
        """The stream's input level: QoS 0, not retained, dropped while disconnected."""
        topic = self._topics.level(stream)
        payload = level_payload(dbfs)
        client = self._client
        if payload is not None and client is not None and self._connected and not self._closing:
            client.publish(topic, payload, qos=0, retain=False)

    def stop(self, timeout: float = 2.0) -> None:
        """Say "offline", wait at most `timeout` s for acks, disconnect; what is still queued stays on disk.

        While the broker is unreachable, paho's network thread may take up to a second more to end. Calling
        stop() again does nothing.
        """
        if self._closing:
            return
        deadline = time.monotonic() + timeout
        self._drain(time.monotonic() + DRAIN_SHARE * timeout)
        self._closing = True
        client, sender = self._client, self._sender
        if client is not None and sender is not None:
            if self._connected:
                info = client.publish(self._topics.status, STATUS_OFFLINE, qos=1, retain=True)
                self._wait_for_acks(info, deadline)
            client.disconnect()
            client.loop_stop()
            self._stopping.set()
            self._wake.set()
            sender.join(max(deadline - time.monotonic(), SENDER_IDLE_SECONDS))
            if not sender.is_alive():
                self._take_acks()
            self._announcements.confirm()
        self._connected = False
        logger.info("MQTT: stopped, %d messages stay queued for the next start", len(self._queue))
        self._queue.close()

    def _drain(self, deadline: float) -> None:
        """While connected, give what is queued until `deadline` to be acknowledged (a clean stop flushes)."""
        while self._connected and len(self._queue) > 0 and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(DRAIN_POLL_SECONDS)

    def stats(self) -> PublisherStats:
        with self._counts_lock:
            return PublisherStats(
                connected=self._connected,
                queued=len(self._queue),
                dropped=self._queue.dropped + self._rejected,
                sent=self._sent,
                connects=self._connects,
                disconnects=self._disconnects,
                auth_failures=self._auth_failures,
            )

    # --- set-up ---

    def _make_client(self) -> Client:
        v5 = self._config.protocol == "5"
        client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
        )
        client.reconnect_delay_set(*self._reconnect_delays)
        client.max_inflight_messages_set(PAHO_WINDOW)
        client.will_set(self._topics.status, STATUS_OFFLINE, qos=1, retain=True)
        password = _read_password(self._config)
        if self._config.username is not None:
            client.username_pw_set(self._config.username, password)
        elif password is not None:
            raise RuntimeError("mqtt.password_file / mqtt.password_env is set but mqtt.username is not")
        if self._config.tls is not None:
            _configure_tls(client, self._config.tls)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        if self._config.home_assistant.enabled:
            client.message_callback_add(self._config.home_assistant.status_topic, self._on_home_assistant_status)
        if self._config.control.enabled:
            client.message_callback_add(self._topics.control_set, self._on_control_request)
        return client

    # --- paho's network thread ---

    def _on_connect(
        self, client: Client, userdata: object, flags: ConnectFlags, reason: ReasonCode, properties: Properties | None
    ) -> None:
        if reason.is_failure:
            hint = ""
            if reason.value in AUTH_REFUSALS:
                hint = " (check mqtt.username and the password)"
                with self._counts_lock:
                    self._auth_failures += 1
            self._report_problem(f"the broker refused the connection: {reason}{hint}")
            return
        if self._closing:
            return  # stop() is disconnecting; "online" now would outlive us (a clean disconnect sends no will)
        client.publish(self._topics.status, STATUS_ONLINE, qos=1, retain=True)
        with self._counts_lock:
            self._connects += 1
        self._connected = True
        self._problem = None
        logger.info(
            "MQTT: connected to %s:%d, %d messages queued", self._config.host, self._config.port, len(self._queue)
        )
        self._wake.set()
        try:
            self._subscribe(client)
            self._publish_discovery()
        except Exception:  # raised out of a callback, it would end paho's network thread
            logger.exception("MQTT: subscribing or announcing to Home Assistant failed")

    def _on_connect_fail(self, client: Client, userdata: object) -> None:
        error = sys.exc_info()[1]  # paho calls this from its `except OSError:`, so the error says why
        self._report_problem(f"cannot connect: {error}" if error is not None else "cannot connect")

    def _on_disconnect(
        self,
        client: Client,
        userdata: object,
        flags: DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self._connected:
            return  # a failed attempt, reported by the connect callbacks
        self._connected = False
        with self._counts_lock:
            self._disconnects += 1
        if not self._closing:
            logger.warning("MQTT: lost the connection to %s:%d (%s)", self._config.host, self._config.port, reason)

    def _on_publish(
        self, client: Client, userdata: object, mid: int, reason: ReasonCode, properties: Properties | None
    ) -> None:
        self._acks.append((mid, reason))
        self._wake.set()

    def _subscribe(self, client: Client) -> None:
        if self._config.home_assistant.enabled:
            client.subscribe(self._config.home_assistant.status_topic, qos=1)
        if self._config.control.enabled and self._control_handler is not None:
            client.subscribe(self._topics.control_set, qos=1)

    def _on_home_assistant_status(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        # A retained "online" is Home Assistant's past birth, not a restart: on_connect has just announced.
        if message.retain or message.payload != STATUS_ONLINE.encode():
            return
        logger.info("MQTT: Home Assistant is online; announcing the entities again")
        try:
            self._publish_discovery()
        except Exception:
            logger.exception("MQTT: announcing to Home Assistant failed")

    def _on_control_request(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        try:
            take_request(
                bytes(message.payload), bool(message.retain), self._control_handler, self.publish_control_result
            )
        except Exception:  # raised out of a callback, it would end paho's network thread
            logger.exception("MQTT control: handling a request failed")

    def _report_problem(self, problem: str) -> None:
        if problem != self._problem:
            logger.error(
                "MQTT %s:%d: %s; retrying with back-off up to %d s",
                self._config.host,
                self._config.port,
                problem,
                self._reconnect_delays[1],
            )
            self._problem = problem

    # --- Home Assistant discovery (the caller's thread, or paho's) ---

    def _publish_discovery(self) -> None:
        client = self._client
        if client is not None:
            self._announcements.publish(lambda topic, payload: client.publish(topic, payload, qos=1, retain=True))

    # --- the sender thread ---

    def _enqueue(self, message: OutgoingMessage) -> None:
        self._queue.push(message)
        self._wake.set()

    def _run_sender(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(SENDER_IDLE_SECONDS)
            self._wake.clear()
            try:
                self._take_acks()
                self._announcements.confirm()
                if self._connected and not self._closing:
                    self._send_queued()
            except Exception:
                logger.exception("MQTT sender failed; retrying in %.0f s", SENDER_ERROR_BACKOFF_SECONDS)
                self._stopping.wait(SENDER_ERROR_BACKOFF_SECONDS)

    def _send_queued(self) -> None:
        room = MAX_IN_FLIGHT - len(self._in_flight)
        if room <= 0:
            return
        for item in self._queue.peek(room, after=self._cursor):
            if not self._connected or self._closing or not self._hand_to_paho(item):
                return

    def _hand_to_paho(self, item: QueuedMessage) -> bool:
        """Publish one queued message; False when it could not be handed over now (it stays queued)."""
        assert self._client is not None
        message = item.message
        try:
            info = self._client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
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
            queue_id = self._in_flight.pop(mid, None)
            if queue_id is None:
                continue  # a status message, or QoS 0 (already forgotten)
            done.append(queue_id)
            if reason.is_failure:
                rejected += 1
                logger.warning("MQTT: the broker refused a message (%s); dropped it", reason)
            else:
                sent += 1
        if done:
            self._queue.remove(done)
            with self._counts_lock:
                self._sent += sent
                self._rejected += rejected

    def _forget(self, queue_id: int, *, sent: bool) -> None:
        self._queue.remove([queue_id])
        with self._counts_lock:
            if sent:
                self._sent += 1
            else:
                self._rejected += 1

    def _wait_for_acks(self, info: MQTTMessageInfo, deadline: float) -> None:
        """Until the broker has the "offline" and everything in flight, or the deadline."""
        while time.monotonic() < deadline:
            if info.is_published() and not self._in_flight:
                return
            self._wake.set()
            self._stopping.wait(STOP_POLL_SECONDS)
        logger.warning(
            "MQTT: stopping before the broker acknowledged everything; %d messages in flight stay queued",
            len(self._in_flight),
        )


def _read_password(config: MqttConfig) -> str | None:
    """From `password_file` (trailing newline dropped) or `password_env`; errors name the source, never the value."""
    if config.password_file is not None:
        try:
            return config.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise RuntimeError(
                f"cannot read the MQTT password file {config.password_file} (mqtt.password_file): {e.strerror}"
            ) from e
        except UnicodeDecodeError:
            # No cause attached: the decode error would quote bytes of the password.
            raise RuntimeError(f"the MQTT password file {config.password_file} is not UTF-8 text") from None
    if config.password_env is not None:
        password = os.environ.get(config.password_env)
        if password is None:
            raise RuntimeError(f"the environment variable {config.password_env} (mqtt.password_env) is not set")
        return password
    return None


def _configure_tls(client: Client, tls: TlsConfig) -> None:
    files = {"ca_certs": tls.ca_file, "certfile": tls.cert_file, "keyfile": tls.key_file}
    try:
        client.tls_set(**{name: None if path is None else str(path) for name, path in files.items()})
    except (OSError, ssl.SSLError, ValueError) as e:
        named = ", ".join(f"{name}={path}" for name, path in files.items() if path is not None) or "system CAs"
        raise RuntimeError(f"cannot set up MQTT TLS (mqtt.tls: {named}): {e}") from e
    if tls.insecure:
        client.tls_insecure_set(True)
        logger.warning("MQTT TLS: the broker's hostname is not verified (mqtt.tls.insecure); for testing only")
