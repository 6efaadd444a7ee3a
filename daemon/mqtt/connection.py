"""The session with the broker: one paho-mqtt 2.x client, its credentials and TLS, the retained online/offline status
(with "offline" as the last will), reconnection with exponential back-off, and the connection's counters.

paho's network thread runs every callback here; those of the other parts (a message on a subscribed topic, an
acknowledgement, a new session) are called from it too, so each must be quick and must not raise.

Credentials and TLS files that cannot be used raise `MqttSetupError` at `start`, naming the config key and the
reason, never the password: `clapd run` prints that one line and exits.
"""

from __future__ import annotations

import enum
import logging
import os
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, MQTTMessageInfo
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from clapd.daemon.config import MqttConfig, TlsConfig
from clapd.daemon.mqtt.payloads import STATUS_OFFLINE, STATUS_ONLINE, Topics

logger = logging.getLogger(__name__)

PAHO_WINDOW = 20  # paho's own window on the wire: mosquitto's default receive maximum (paho ignores the broker's)
AUTH_REFUSALS = frozenset({134, 135})  # "Bad user name or password", "Not authorized" (paho maps 3.1.1's 4 and 5)

MessageHandler = Callable[[MQTTMessage], None]
AckHandler = Callable[[int, ReasonCode], None]  # (paho's message id, the broker's reason)


class MqttSetupError(RuntimeError):
    """The credentials or TLS files cannot be used; the message names the config key, never the password."""


class ConnectionState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"  # connected or (re)connecting in the background
    CLOSING = "closing"  # stop began: nothing new goes to paho
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    connected: bool  # a session with the broker is up (a refused connection never counts)
    connects: int
    disconnects: int  # sessions lost or closed
    auth_failures: int  # connections refused for bad credentials or authorization


class MqttConnection:
    """Connects once started and stays connected (reconnecting with back-off) until closed; never raises for a
    broker that is away. Credentials or TLS files that cannot be used raise `MqttSetupError` at `start`."""

    def __init__(
        self,
        config: MqttConfig,
        client_id: str,
        *,
        topics: Topics,
        reconnect_seconds: tuple[int, int],
        spooled: Callable[[], int],
    ) -> None:
        """`topics`: the daemon's, whose status topic this connection keeps; `reconnect_seconds`: the first and the
        longest wait between attempts; `spooled`: how many messages wait in the spool, for the log lines."""
        self._config = config
        self._client_id = client_id
        self._reconnect_seconds = reconnect_seconds
        self._spooled = spooled
        self._topics = topics
        self._status_topic = topics.status
        self._state = ConnectionState.CREATED
        self._client: Client | None = None
        self._connected = False
        self._problem: str | None = None  # the connection problem last logged, so each change is logged once
        self._subscriptions: dict[str, MessageHandler] = {}  # topic -> handler, (re)subscribed on every connect
        self._on_session: list[Callable[[], None]] = []
        self._on_ack: AckHandler | None = None
        self._counts_lock = threading.Lock()
        self._connects = self._disconnects = self._auth_failures = 0

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def connected(self) -> bool:
        """A session with the broker is up (it may be closing)."""
        return self._connected

    @property
    def ready(self) -> bool:
        """Connected and not closing: new messages may go to paho now."""
        return self._connected and self._state is ConnectionState.RUNNING

    def when_connected(self, listener: Callable[[], None]) -> None:
        """Call `listener` (in paho's thread) on every new session, after subscribing; in the order added."""
        self._on_session.append(listener)

    def when_acknowledged(self, handler: AckHandler) -> None:
        """Hand every publication's outcome (QoS 0: handed to the socket) to `handler`, in paho's thread."""
        self._on_ack = handler

    def subscribe(self, topic: str, handler: MessageHandler) -> None:
        """Hand the messages on `topic` to `handler` (in paho's thread), subscribing now if connected and again on
        every connect. QoS 1."""
        self._subscriptions = {**self._subscriptions, topic: handler}  # a new dict: paho's thread iterates the old
        client = self._client
        if client is not None:
            client.message_callback_add(topic, _drop_client(handler))
            if self._connected:
                client.subscribe(topic, qos=1)

    def start(self) -> None:
        """Connect in the background; a broker that is down now is retried with back-off, never raised."""
        if self._state is not ConnectionState.CREATED:
            raise RuntimeError(f"an MQTT connection starts once; this one is {self._state.value}")
        self._client = self._make_client()
        if self._config.control.enabled and self._config.tls is None:
            logger.warning("MQTT control is on without TLS: requests and the password cross the network in clear")
        self._state = ConnectionState.RUNNING
        self._client.connect_async(self._config.host, self._config.port, self._config.keepalive_seconds)
        self._client.loop_start()
        logger.info(
            "MQTT: connecting to %s:%d as %r, topics under %s/ (MQTT %s, %d messages spooled)",
            self._config.host,
            self._config.port,
            self._client_id,
            self._topics.prefix,
            self._config.protocol,
            self._spooled(),
        )

    def publish(self, topic: str, payload: bytes | str, *, qos: int, retain: bool) -> MQTTMessageInfo:
        """Hand one message to paho, which keeps a QoS > 0 message while offline; raises before `start`, and
        ValueError for a topic or payload paho refuses."""
        if self._client is None:
            raise RuntimeError("the MQTT connection is not started")
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def begin_closing(self) -> None:
        """From now on nothing new goes to paho, and a session that comes up is not announced "online"."""
        if self._state is not ConnectionState.STOPPED:
            self._state = ConnectionState.CLOSING

    def say_offline(self) -> MQTTMessageInfo | None:
        """Publish the retained "offline" (a clean disconnect sends no will); None when not connected."""
        if self._client is None or not self._connected:
            return None
        return self._client.publish(self._status_topic, STATUS_OFFLINE, qos=1, retain=True)

    def close(self) -> None:
        """Disconnect and end paho's thread (up to a second more while the broker is unreachable)."""
        self.begin_closing()
        client = self._client
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self._state = ConnectionState.STOPPED
        self._connected = False

    def stats(self) -> ConnectionStats:
        with self._counts_lock:
            return ConnectionStats(self._connected, self._connects, self._disconnects, self._auth_failures)

    def _make_client(self) -> Client:
        v5 = self._config.protocol == "5"
        client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
        )
        client.reconnect_delay_set(*self._reconnect_seconds)
        client.max_inflight_messages_set(PAHO_WINDOW)
        client.will_set(self._status_topic, STATUS_OFFLINE, qos=1, retain=True)
        log_in(client, self._config)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        for topic, handler in self._subscriptions.items():
            client.message_callback_add(topic, _drop_client(handler))
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
        if self._state is not ConnectionState.RUNNING:
            return  # closing; "online" now would outlive us (a clean disconnect sends no will)
        try:
            # Subscribed before "online" goes out, on the same socket: whoever waits for "online" before sending a
            # control request finds it heard (the broker handles one client's packets in order).
            for topic in self._subscriptions:
                client.subscribe(topic, qos=1)
        except Exception:  # raised out of a callback, it would end paho's network thread
            logger.exception("MQTT: subscribing failed")
        client.publish(self._status_topic, STATUS_ONLINE, qos=1, retain=True)
        with self._counts_lock:
            self._connects += 1
        self._connected = True
        self._problem = None
        logger.info(
            "MQTT: connected to %s:%d, %d messages spooled", self._config.host, self._config.port, self._spooled()
        )
        try:
            for listener in self._on_session:
                listener()
        except Exception:  # raised out of a callback, it would end paho's network thread
            logger.exception("MQTT: announcing to Home Assistant or waking the sender failed")

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
        if self._state is ConnectionState.RUNNING:
            logger.warning("MQTT: lost the connection to %s:%d (%s)", self._config.host, self._config.port, reason)

    def _on_publish(
        self, client: Client, userdata: object, mid: int, reason: ReasonCode, properties: Properties | None
    ) -> None:
        if self._on_ack is not None:
            self._on_ack(mid, reason)

    def _report_problem(self, problem: str) -> None:
        if problem != self._problem:
            logger.error(
                "MQTT %s:%d: %s; retrying with back-off up to %d s",
                self._config.host,
                self._config.port,
                problem,
                self._reconnect_seconds[1],
            )
            self._problem = problem


def log_in(client: Client, config: MqttConfig) -> None:
    """Give `client` the config's credentials and TLS settings (the daemon's connection and `clapd enrol`'s alike);
    `MqttSetupError` names the config key of what cannot be used, never the password."""
    password = _read_password(config)
    if config.username is not None:
        client.username_pw_set(config.username, password)
    elif password is not None:
        raise MqttSetupError("mqtt.password_file / mqtt.password_env is set but mqtt.username is not")
    if config.tls is not None:
        _configure_tls(client, config.tls)


def _drop_client(handler: MessageHandler) -> Callable[[Client, object, MQTTMessage], None]:
    """paho's message callback for `handler`, which needs the message only."""
    return lambda client, userdata, message: handler(message)


def _read_password(config: MqttConfig) -> str | None:
    """From `password_file` (trailing newline dropped) or `password_env`; errors name the source, never the value."""
    if config.password_file is not None:
        try:
            return config.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise MqttSetupError(
                f"cannot read the MQTT password file {config.password_file} (mqtt.password_file): {e.strerror}"
            ) from e
        except UnicodeDecodeError:
            # No cause attached: the decode error would quote bytes of the password.
            raise MqttSetupError(
                f"the MQTT password file {config.password_file} (mqtt.password_file) is not UTF-8 text"
            ) from None
    if config.password_env is not None:
        password = os.environ.get(config.password_env)
        if password is None:
            raise MqttSetupError(f"the environment variable {config.password_env} (mqtt.password_env) is not set")
        return password
    return None


def _configure_tls(client: Client, tls: TlsConfig) -> None:
    files = {"ca_certs": tls.ca_file, "certfile": tls.cert_file, "keyfile": tls.key_file}
    try:
        client.tls_set(**{name: None if path is None else str(path) for name, path in files.items()})
    except (OSError, ssl.SSLError, ValueError) as e:
        named = ", ".join(f"{name}={path}" for name, path in files.items() if path is not None) or "system CAs"
        raise MqttSetupError(f"cannot set up MQTT TLS (mqtt.tls: {named}): {e}") from e
    if tls.insecure:
        client.tls_insecure_set(True)
        logger.warning("MQTT TLS: the broker's hostname is not verified (mqtt.tls.insecure); for testing only")
