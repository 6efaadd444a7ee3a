"""The control channel over MQTT: requests from `{prefix}/control/set`, results to `{prefix}/control/result`.

Requests are parsed in paho's thread (`clapd.daemon.control.take_request`): a malformed or retained one is answered
at once, a valid one goes to the daemon's handler, which only enqueues it. Results bypass the spool and go to paho
directly: a result answers a live request and must not wait behind a backlog of spooled events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from paho.mqtt.client import MQTTMessage

from clapd.daemon.control import ControlRequest, ControlResult, take_request
from clapd.daemon.mqtt.connection import ConnectionState, MqttConnection
from clapd.daemon.mqtt.payloads import Topics

logger = logging.getLogger(__name__)


class MqttControlChannel:
    """A `clapd.daemon.control.ControlChannel` on the output's connection: it lives and dies with that output."""

    def __init__(self, connection: MqttConnection, topics: Topics) -> None:
        self._connection = connection
        self._topics = topics
        self._handler: Callable[[ControlRequest], None] | None = None

    def listen(self, handler: Callable[[ControlRequest], None]) -> None:
        """Subscribe (now if connected, and on every connect) and hand valid requests to `handler`, which runs in
        paho's thread and must only enqueue. Invalid requests are answered without reaching it."""
        subscribed = self._handler is not None
        self._handler = handler
        if not subscribed:
            self._connection.subscribe(self._topics.control_set, self._on_request)

    def answer(self, result: ControlResult) -> None:
        """QoS 1, not retained, straight to paho (kept in memory, not on disk, while the broker is away)."""
        if self._connection.state is not ConnectionState.RUNNING:
            logger.warning("MQTT: not running, dropped the control result for %r", result.request_id)
            return
        self._connection.publish(self._topics.control_result, result.to_json(), qos=1, retain=False)

    def _on_request(self, message: MQTTMessage) -> None:
        try:
            take_request(bytes(message.payload), bool(message.retain), self._handler, self.answer)
        except Exception:  # raised out of a callback, it would end paho's network thread
            logger.exception("MQTT control: handling a request failed")
