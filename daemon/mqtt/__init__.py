"""clapd over MQTT (paho-mqtt 2.x): the output, the control channel, and the parts they share.

Modules, one job each:
- `payloads`: the topics and payload schemas users build on;
- `spool`: the on-disk SQLite store every event and state passes through before the network;
- `connection`: the paho client: credentials, TLS, the online/offline status and last will, back-off, counters;
- `sender`: the spool -> paho hand-over, in order, removing each message once the broker acknowledged it;
- `discovery`: Home Assistant discovery messages, what was announced, and the announcer that keeps them current;
- `control`: the control channel (`clapd.daemon.control.ControlChannel`) on `{prefix}/control/...`;
- `output`: `MqttOutput`, the `clapd.daemon.output.Output` the daemon publishes through.

Threads: the daemon's outputs' thread calls `MqttOutput.publish_*`, which only append to the spool (levels excepted:
live only); paho's network thread connects, reconnects, takes acknowledgements, control requests and Home
Assistant's status, and announces on every connect; the sender thread (`mqtt-sender`) hands spooled messages to paho.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clapd.daemon.config import MqttConfig
from clapd.daemon.mqtt.connection import MqttConnection
from clapd.daemon.mqtt.control import MqttControlChannel
from clapd.daemon.mqtt.discovery import ANNOUNCED_FILE, Announcer, DiscoverySettings
from clapd.daemon.mqtt.output import MqttOutput
from clapd.daemon.mqtt.payloads import Topics, node_id_for, topic_prefix_for
from clapd.daemon.mqtt.sender import Sender
from clapd.daemon.mqtt.spool import SPOOL_FILE, Spool
from clapd.daemon.mqtt.states import StateRefresher

__all__ = ["MqttControlChannel", "MqttLink", "MqttOutput", "build_mqtt"]


@dataclass(frozen=True, slots=True)
class MqttLink:
    """One broker connection's two faces; `output.start()` and `output.stop()` run both."""

    output: MqttOutput
    control: MqttControlChannel | None  # None unless `mqtt.control.enabled`


def build_mqtt(
    config: MqttConfig,
    state_dir: Path,
    *,
    client_id_default: str,
    hostname: str | None = None,
    reconnect_min_seconds: int = 1,
    reconnect_max_seconds: int = 60,
    anomaly_events: Sequence[tuple[str, str]] = (),
) -> MqttLink:
    """The MQTT output and control channel on one connection, not started; opens the spool (`SPOOL_FILE` in
    `state_dir`, messages of earlier runs included) and raises RuntimeError when it cannot.

    `client_id_default`: the client id unless `mqtt.client_id` is set; `hostname`: the node id unless
    `mqtt.client_id` is set (default: this machine's), in the default topic prefix `clapd/{node id}` and the Home
    Assistant device's name; `reconnect_*_seconds`: the first and the longest wait between connection attempts
    (doubling in between); `anomaly_events`: (stream, event name) of the streams with anomaly monitoring, announced
    to Home Assistant with their score sensors.
    """
    client_id = config.client_id or client_id_default
    node = node_id_for(config.client_id, socket.gethostname() if hostname is None else hostname)
    topics = Topics(topic_prefix_for(config.topic_prefix, node))
    spool = Spool(state_dir / SPOOL_FILE, config.queue_max_events)
    reconnect = (reconnect_min_seconds, reconnect_max_seconds)
    connection = MqttConnection(
        config, client_id, topics=topics, reconnect_seconds=reconnect, spooled=lambda: len(spool)
    )
    settings = DiscoverySettings.from_config(config, client_id=client_id, node=node, topics=topics)
    settings = dataclasses.replace(settings, anomaly_events=tuple(anomaly_events))
    announcer = Announcer(settings, connection, state_dir / ANNOUNCED_FILE, enabled=config.home_assistant.enabled)
    states = StateRefresher(spool, connection, config.qos, config.state_refresh_seconds)

    def each_round() -> None:  # in the sender's thread
        announcer.confirm()
        states.refresh()

    sender = Sender(spool, connection, each_round=each_round)
    connection.when_acknowledged(sender.take_ack)
    connection.when_connected(sender.wake)
    connection.when_connected(announcer.publish)
    if config.home_assistant.enabled:
        connection.subscribe(config.home_assistant.status_topic, announcer.on_home_assistant_status)
    output = MqttOutput(config, topics, connection, spool, sender, announcer, states)
    control = MqttControlChannel(connection, topics) if config.control.enabled else None
    return MqttLink(output, control)
