"""`MqttOutput`: detection events and states to the broker through the spool, levels live, Home Assistant discovery.

The `publish_*` methods run in the daemon's outputs' thread and never touch the network: events and states are
appended to the spool (the sender hands them to paho); a level, and a window's top scores (at most one per
`scores_interval_seconds` of each stream's audio), go to paho only while connected, since stale ones are worthless.
`start` and `stop` run the connection and the sender together.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from paho.mqtt.client import MQTT_ERR_SUCCESS as OK

from clapd.daemon.config import DetectionConfig, MqttConfig
from clapd.daemon.mqtt.connection import ConnectionState, MqttConnection
from clapd.daemon.mqtt.discovery import Announcer
from clapd.daemon.mqtt.payloads import (
    STATE_OFF,
    STATE_ON,
    AnomalyPayload,
    EventPayload,
    ScoresTopicPayload,
    Topics,
    level_payload,
)
from clapd.daemon.mqtt.sender import Sender
from clapd.daemon.mqtt.spool import OutgoingMessage, Spool
from clapd.daemon.mqtt.states import StateRefresher
from clapd.daemon.output import Output, OutputStats
from clapd.daemon.records import AnomalyReading, DetectionEvent, LevelReading, Scores, StateChange

logger = logging.getLogger(__name__)

DRAIN_SHARE = 0.75  # of stop()'s timeout spent flushing the spool before saying "offline"


class MqttOutput(Output):
    """Made by `clapd.daemon.mqtt.build_mqtt`, which wires the parts together."""

    name = "mqtt"

    def __init__(
        self,
        config: MqttConfig,
        topics: Topics,
        connection: MqttConnection,
        spool: Spool,
        sender: Sender,
        announcer: Announcer,
        states: StateRefresher,
    ) -> None:
        self._qos = config.qos
        self._scores_interval = config.scores_interval_seconds  # s of each stream's audio; 0: no scores
        self._scores_top_k = config.scores_top_k
        self._next_scores: dict[str, int] = {}  # stream -> first sample of the next window whose scores may go
        self._scores_dropped = 0  # scores messages not sent: no session, or refused by paho
        self.wants_scores = config.scores_interval_seconds > 0
        self._topics = topics
        self._connection = connection
        self._spool = spool
        self._sender = sender
        self._announcer = announcer
        self._states = states

    def start(self) -> None:
        """Connect in the background; a broker that is down now is retried with back-off, never raised."""
        if self._connection.state is not ConnectionState.CREATED:
            raise RuntimeError(
                "an MqttOutput starts once; build a new one (on the same state directory) to start again"
            )
        self._connection.start()
        self._sender.start()

    def publish_event(self, event: DetectionEvent) -> None:
        """Spooled, not retained; ValueError for a name that cannot be a topic level (before spooling)."""
        payload = EventPayload.from_event(event).to_json()
        topic = self._topics.event(event.stream, event.detection)
        self._spool_message(OutgoingMessage(topic, payload, self._qos, retain=False))

    def publish_state(self, change: StateChange) -> None:
        """Spooled, retained: "ON" from an event's start to its end."""
        topic = self._topics.state(change.stream, change.detection)
        payload = (STATE_ON if change.on else STATE_OFF).encode()
        self._spool_message(OutgoingMessage(topic, payload, self._qos, retain=True))
        self._states.record(change.detection, topic, payload)  # and again every state_refresh_seconds

    def publish_anomaly(self, reading: AnomalyReading) -> None:
        """The stream's anomaly score: QoS 0, not retained, dropped while disconnected (like a level)."""
        if self._connection.ready:
            payload = AnomalyPayload.from_reading(reading).to_json()
            self._connection.publish(self._topics.anomaly(reading.stream), payload, qos=0, retain=False)

    def publish_level(self, reading: LevelReading) -> None:
        """The stream's input level: QoS 0, not retained, dropped while disconnected."""
        topic = self._topics.level(reading.stream)
        payload = level_payload(reading.dbfs)
        if payload is not None and self._connection.ready:
            self._connection.publish(topic, payload, qos=0, retain=False)

    def publish_scores(self, scores: Scores) -> None:
        """A window's top scores, if `scores_interval_seconds` of the stream's audio have passed since the last ones
        published (by sample position, so a file read faster than real time is thinned alike): QoS 0, not retained,
        never spooled; dropped and counted while not connected."""
        if not self.wants_scores or scores.start_sample < self._next_scores.get(scores.stream, 0):
            return
        payload = ScoresTopicPayload.from_scores(scores, self._scores_top_k).to_json()  # needs the rate: checks it
        interval = round(self._scores_interval * (scores.sample_rate or 0))  # samples
        self._next_scores[scores.stream] = scores.start_sample + interval
        topic = self._topics.scores(scores.stream)
        sent = self._connection.ready and self._connection.publish(topic, payload, qos=0, retain=False).rc == OK
        if not sent:  # anything but success (no connection, a full queue) loses it: QoS 0 is not retried
            self._scores_dropped += 1

    def announce(self, streams: Sequence[str], detections: Mapping[str, DetectionConfig]) -> None:
        """Make the Home Assistant entities those of these streams and detections (none while discovery is off).

        Published now when connected, and again on every connect and whenever Home Assistant says "online";
        entities announced before (by this run or an earlier one) and not now are removed. Only these detections'
        states are published again every `state_refresh_seconds`.
        """
        self._announcer.announce(streams, detections)
        self._states.keep_only(detections)

    def stop(self, timeout: float = 2.0) -> None:
        """Flush for part of `timeout` s, say "offline", wait for acks until `timeout`, disconnect; what is still
        spooled stays on disk for the next start.

        While the broker is unreachable, paho's network thread may take up to a second more to end. Calling
        stop() again does nothing.
        """
        if self._connection.state in (ConnectionState.CLOSING, ConnectionState.STOPPED):
            return
        deadline = time.monotonic() + timeout
        self._sender.drain(time.monotonic() + DRAIN_SHARE * timeout)
        self._connection.begin_closing()
        offline = self._connection.say_offline()
        if offline is not None:
            self._sender.wait_for_acks(offline, deadline)
        self._connection.close()
        if self._sender.stop(deadline):
            self._announcer.confirm()
        logger.info("MQTT: stopped, %d messages stay in the spool for the next start", len(self._spool))
        if self._scores_dropped:
            logger.info(
                "MQTT: %d scores messages were dropped (not connected; they are never spooled)", self._scores_dropped
            )
        self._spool.close()

    def stats(self) -> OutputStats:
        connection = self._connection.stats()
        return OutputStats(
            sent=self._sender.sent,
            dropped=self._spool.dropped + self._sender.rejected,
            queued=len(self._spool),
            connected=connection.connected,
            connects=connection.connects,
            disconnects=connection.disconnects,
            auth_failures=connection.auth_failures,
            spool_set_aside=self._spool.set_aside,
            scores_dropped=self._scores_dropped,
        )

    def _spool_message(self, message: OutgoingMessage) -> None:
        self._spool.push(message)
        self._sender.wake()
