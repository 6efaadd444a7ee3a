"""Home Assistant MQTT discovery: the entities clapd announces, the record of what it announced, and the announcer
that keeps them current on the broker.

One device per daemon. Per (stream, detection) pair, a detection watching the stream:
- an `event` entity with event types `start` and `end`, fed by `{prefix}/{stream}/{detection}/event` (its JSON
  carries `event_type`);
- a `binary_sensor` with device class `sound`, fed by the retained `{prefix}/{stream}/{detection}/state` (ON/OFF).
Per stream, when levels are published, a diagnostic `sensor` for `{prefix}/{stream}/level` (dBFS). Per stream with
anomaly monitoring, the anomaly event's pair of entities (as a detection's) and a `sensor` for the score
(`{prefix}/{stream}/anomaly`). Every entity is
available while `{prefix}/status` says "online".

The payloads follow Home Assistant's documented schema (https://www.home-assistant.io/integrations/mqtt/ for the
discovery topic, payload, `device` and `origin`; /integrations/event.mqtt/, /integrations/binary_sensor.mqtt/ and
/integrations/sensor.mqtt/ for each platform): full key names, no abbreviations. Configs go to
`{discovery_prefix}/{component}/{node_id}/{object_id}/config`, retained; an empty retained payload removes an entity.
Names are `[A-Za-z0-9][A-Za-z0-9_-]*`, the very characters Home Assistant allows in an object id, so joining a stream
and a detection could be ambiguous (`a_b` + `c` and `a` + `b_c`): a short hash of the pair keeps object ids apart.

What Home Assistant shows: the device is "clapd NODE" (the Home Assistant node id if configured, else the daemon's node
id, less a leading `clapd-`); a detection's binary_sensor is named after the detection ("Dog barking": its `name:`,
else its key made readable) and its event entity "Dog barking event"; with more than one stream each name starts with
the stream's ("Kitchen: Dog barking"); the level sensor is "Input level". Home Assistant prefixes entity names with
the device's, and derives a new entity's id from both (`binary_sensor.clapd_vm_dog_barking`); `default_entity_id`
says the same explicitly (Home Assistant 2025.10 and later; earlier ones drop the key). Unique ids, config topics and
the device's identifiers are those earlier versions used (from the MQTT client id), so entities Home Assistant has
already registered stay the same entities: they keep their entity ids and take the new names.

Discovery bypasses the spool: it is rebuilt from the current detections and re-sent in full on every connect and
whenever Home Assistant says "online"; a change of detections while connected sends only the configs that changed
(added, changed, removed), so a run of control requests costs a few messages each, not all of them each. What must
outlive a restart, the entities to remove, is kept in `Announcements`' file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from paho.mqtt.client import MQTTMessage

from clapd import __version__
from clapd.daemon.config import DetectionConfig, MqttConfig
from clapd.daemon.mqtt.connection import MqttConnection
from clapd.daemon.mqtt.payloads import STATE_OFF, STATE_ON, STATUS_OFFLINE, STATUS_ONLINE, Topics, build_topic
from clapd.daemon.state_files import read_json, write_json_atomically

logger = logging.getLogger(__name__)

EVENT_TYPES = ("start", "end")  # EventPayload.event_type
EVENT_ICON = "mdi:ear-hearing"  # the binary_sensor's icon comes from its device class (sound)
LEVEL_ICON = "mdi:waveform"
ANOMALY_ICON = "mdi:chart-bell-curve"
LEVEL_EXPIRY_INTERVALS = 3  # a level sensor turns unavailable after this many missed level messages
ANNOUNCED_FILE = "ha-discovery.json"  # in the state directory, next to the spool
_NOT_IN_OBJECT_ID = re.compile(r"[^A-Za-z0-9_-]")  # Home Assistant's object id / node id character class
_NOT_IN_ENTITY_ID = re.compile(r"[^a-z0-9]+")  # runs of what Home Assistant's slugify turns into one `_`
_OWN_PREFIX = re.compile(r"^clapd[-_]", re.IGNORECASE)  # "clapd-vm" shows as "vm": the device is "clapd" already


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    """What the discovery payloads depend on besides the streams and detections."""

    discovery_prefix: str
    node_id: str  # [A-Za-z0-9_-]+: the device's id, and the topic level under each component
    device_name: str  # "clapd NODE"
    topics: Topics  # the daemon's own topics
    qos: int  # the QoS Home Assistant subscribes with
    level_interval_seconds: float  # 0: no level sensors
    anomaly_events: tuple[tuple[str, str], ...] = ()  # (stream, anomaly event name) of streams with anomaly monitoring

    @classmethod
    def from_config(cls, config: MqttConfig, *, client_id: str, node: str, topics: Topics) -> DiscoverySettings:
        """`node`: the daemon's node id (`clapd.daemon.mqtt.payloads.node_id_for`), named in the device's name."""
        ha = config.home_assistant
        return cls(
            discovery_prefix=ha.discovery_prefix,
            node_id=ha.node_id or node_id_from(client_id),  # as before: the unique ids and config topics stay
            device_name=device_name(ha.node_id or node),
            topics=topics,
            qos=config.qos,
            level_interval_seconds=config.level_interval_seconds,
        )


def node_id_from(client_id: str) -> str:
    """A client id made fit for a topic level Home Assistant accepts (a hostname may hold dots)."""
    return _NOT_IN_OBJECT_ID.sub("_", client_id)[:64] or "clapd"


def discovery_messages(
    settings: DiscoverySettings, streams: Iterable[str], detections: Mapping[str, DetectionConfig]
) -> dict[str, bytes]:
    """Config topic -> JSON payload for every entity of these streams and detections."""
    streams = list(streams)
    messages: dict[str, bytes] = {}
    for stream in streams:
        # One stream: names say what was heard; more: where, too.
        where = f"{readable(stream)}: " if len(streams) > 1 else ""
        for key, detection in detections.items():
            if detection.streams is None or stream in detection.streams:
                name = where + (detection.name or readable(key))
                messages.update(_pair_entities(settings, stream, key, name))
        for monitored, event in settings.anomaly_events:
            if monitored == stream:  # an anomaly is a detection of its own, and its score a sensor
                messages.update(_pair_entities(settings, stream, event, where + readable(event)))
                sensor = _anomaly_sensor(settings, stream, f"{where}Anomaly score")
                messages[_config_topic(settings, "sensor", f"{stream}_anomaly")] = _json(sensor)
        if settings.level_interval_seconds > 0:
            sensor = _level_sensor(settings, stream, f"{where}Input level")
            messages[_config_topic(settings, "sensor", f"{stream}_level")] = _json(sensor)
    return messages


def _pair_entities(settings: DiscoverySettings, stream: str, detection: str, name: str) -> dict[str, bytes]:
    """The event entity and the binary_sensor of one (stream, detection) pair; `name`: the binary_sensor's."""
    object_id = pair_object_id(stream, detection)
    common = {
        "qos": settings.qos,
        "availability": _availability(settings),
        "device": _device(settings),
        "origin": _origin(),
    }
    event = {
        **common,
        **_names(settings, "event", f"{name} event"),
        "icon": EVENT_ICON,
        "unique_id": f"clapd:{settings.node_id}:{stream}:{detection}:event",
        "state_topic": settings.topics.event(stream, detection),
        "event_types": list(EVENT_TYPES),
    }
    sound = {
        **common,
        **_names(settings, "binary_sensor", name),
        "unique_id": f"clapd:{settings.node_id}:{stream}:{detection}:sound",
        "state_topic": settings.topics.state(stream, detection),
        "device_class": "sound",
        "payload_on": STATE_ON,
        "payload_off": STATE_OFF,
    }
    return {
        _config_topic(settings, "event", object_id): _json(event),
        _config_topic(settings, "binary_sensor", object_id): _json(sound),
    }


def _level_sensor(settings: DiscoverySettings, stream: str, name: str) -> dict[str, object]:
    return {
        **_names(settings, "sensor", name),
        "icon": LEVEL_ICON,
        "unique_id": f"clapd:{settings.node_id}:{stream}:level",
        "state_topic": settings.topics.level(stream),
        "unit_of_measurement": "dBFS",
        "state_class": "measurement",
        "suggested_display_precision": 1,
        "entity_category": "diagnostic",
        "expire_after": math.ceil(LEVEL_EXPIRY_INTERVALS * settings.level_interval_seconds),
        "qos": 0,  # published at QoS 0
        "availability": _availability(settings),
        "device": _device(settings),
        "origin": _origin(),
    }


def _anomaly_sensor(settings: DiscoverySettings, stream: str, name: str) -> dict[str, object]:
    """The stream's normalised anomaly score (`{prefix}/{stream}/anomaly`, JSON): about 1 is normal operation."""
    return {
        **_names(settings, "sensor", name),
        "icon": ANOMALY_ICON,
        "unique_id": f"clapd:{settings.node_id}:{stream}:anomaly",
        "state_topic": settings.topics.anomaly(stream),
        "value_template": "{{ value_json.score }}",
        "state_class": "measurement",
        "suggested_display_precision": 2,
        "qos": 0,  # published at QoS 0
        "availability": _availability(settings),
        "device": _device(settings),
        "origin": _origin(),
    }


def readable(key: str) -> str:
    """A config key as a name: `dog_barking` -> "Dog barking", `front-door` -> "Front door"."""
    words = " ".join(key.replace("_", " ").replace("-", " ").split())
    return words[:1].upper() + words[1:]


def device_name(node: str) -> str:
    """ "clapd NODE", without saying clapd twice: `vm` and `clapd-vm` both give "clapd vm"."""
    shown = _OWN_PREFIX.sub("", node)
    return f"clapd {shown}" if shown and shown.lower() != "clapd" else "clapd"


def entity_id(component: str, *names: str) -> str:
    """The entity id Home Assistant derives from the device's name and the entity's (its `slugify`, accents dropped
    to ASCII): `entity_id("binary_sensor", "clapd vm", "Dog barking")` -> `binary_sensor.clapd_vm_dog_barking`."""
    ascii_text = unicodedata.normalize("NFKD", " ".join(names)).encode("ascii", "ignore").decode()
    slug = _NOT_IN_ENTITY_ID.sub("_", ascii_text.lower()).strip("_")
    return f"{component}.{slug or 'clapd'}"


def _names(settings: DiscoverySettings, component: str, name: str) -> dict[str, str]:
    """The entity's name (Home Assistant shows it after the device's) and the entity id it gets when new."""
    return {"name": name, "default_entity_id": entity_id(component, settings.device_name, name)}


def pair_object_id(stream: str, detection: str) -> str:
    digest = hashlib.sha256(f"{stream}/{detection}".encode()).hexdigest()[:8]
    return f"{stream}_{detection}_{digest}"


def _config_topic(settings: DiscoverySettings, component: str, object_id: str) -> str:
    return build_topic(settings.discovery_prefix, component, settings.node_id, object_id, "config")


def _availability(settings: DiscoverySettings) -> list[dict[str, str]]:
    return [
        {
            "topic": settings.topics.status,
            "payload_available": STATUS_ONLINE,
            "payload_not_available": STATUS_OFFLINE,
        }
    ]


def _device(settings: DiscoverySettings) -> dict[str, object]:
    return {
        "identifiers": [f"clapd_{settings.node_id}"],
        "name": settings.device_name,
        "manufacturer": "clapd",
        "model": "clapd sound detection daemon",
        "sw_version": __version__,
    }


def _origin() -> dict[str, str]:
    return {"name": "clapd", "sw_version": __version__}


def _json(payload: Mapping[str, object]) -> bytes:
    return json.dumps(payload, sort_keys=True).encode()


class Delivery(Protocol):
    """What publishing returns (paho's `MQTTMessageInfo`): it raises for a message that was never sent."""

    def is_published(self) -> bool: ...


class Announcements:
    """The discovery configs announced now, and the config topics still to be emptied on the broker; thread-safe.

    Persisted (as the union of both) in a JSON file, so entities announced by an earlier run, and removals not yet
    acknowledged when the daemon stopped, are removed by the next run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # also held while publishing, so rounds never interleave
        self._current: dict[str, bytes] = {}
        self._stale: set[str] = set()
        self._removals: dict[str, Delivery] = {}  # stale topic -> its removal, sent and not yet acknowledged
        self._sent: dict[str, bytes] = {}  # config topic -> the payload last handed to paho, since the last full round
        self._saved = self._load()

    def update(self, messages: Mapping[str, bytes]) -> None:
        """Announce exactly these configs from now on; whatever was announced before and is not here goes stale."""
        with self._lock:
            self._stale = (self._stale | set(self._current) | self._saved) - set(messages)
            self._current = dict(messages)
            self._save()

    def publish(self, send: Callable[[str, bytes], Delivery], *, only_changes: bool = False) -> None:
        """Send (retained) the removals (empty payloads) first, then the configs; remember the removals' deliveries.

        `only_changes`: skip a removal still waiting for its acknowledgement and a config sent with the same payload
        since the last full round (a full round follows every connect, so what was sent before reached this broker
        session or is sent again).
        """
        with self._lock:
            if not only_changes:
                self._sent.clear()
            for topic in sorted(self._stale):
                if not (only_changes and topic in self._removals):
                    self._removals[topic] = send(topic, b"")
                    self._sent.pop(topic, None)
            for topic, payload in sorted(self._current.items()):
                if not (only_changes and self._sent.get(topic) == payload):
                    send(topic, payload)
                    self._sent[topic] = payload
                    self._removals.pop(topic, None)  # announced again since: an older removal's ack means nothing now

    def confirm(self) -> None:
        """Forget the removals the broker has acknowledged; one that paho never sent is sent again next round."""
        with self._lock:
            states = {topic: _acknowledged(delivery) for topic, delivery in self._removals.items()}
            self._removals = {topic: self._removals[topic] for topic, state in states.items() if state is None}
            self._stale -= {topic for topic, state in states.items() if state}
            self._save()

    def _load(self) -> set[str]:
        try:
            value = read_json(self.path)
        except (OSError, ValueError) as e:
            logger.warning("cannot read %s (%s): Home Assistant entities of earlier runs may be left", self.path, e)
            return set()
        topics = value.get("topics") if isinstance(value, dict) else None
        # Only plain topics: a wildcard read back from a damaged file would make paho refuse every round.
        if value is not None and not (isinstance(topics, list) and all(map(_plain_topic, topics))):
            logger.warning("%s does not hold a list of plain topics; ignoring it", self.path)
            return set()
        return set(topics or [])

    def _save(self) -> None:
        topics = set(self._current) | self._stale
        if topics == self._saved:
            return
        try:
            write_json_atomically(self.path, {"topics": sorted(topics)})
        except OSError as e:
            logger.error("cannot write %s (%s): a restart may leave stale Home Assistant entities", self.path, e)
            return
        self._saved = topics


def _plain_topic(topic: object) -> bool:
    return isinstance(topic, str) and bool(topic) and not set(topic) & {"+", "#", "\0"} and len(topic) < 65_536


def _acknowledged(delivery: Delivery) -> bool | None:
    """True: the broker has it; False: never sent (paho was offline then); None: not yet."""
    try:
        return True if delivery.is_published() else None
    except (RuntimeError, ValueError):  # paho's answer for a message it did not send (offline, queue full)
        return False


class Announcer:
    """Makes Home Assistant's entities those of the streams and detections in force: sent when `announce`d while
    connected, again on every connect (`publish`, called by the connection) and whenever Home Assistant says
    "online"; entities announced before (by this run or an earlier one) and not now are removed."""

    def __init__(self, settings: DiscoverySettings, connection: MqttConnection, path: Path, *, enabled: bool) -> None:
        """`path`: the `Announcements` file (`ANNOUNCED_FILE` in the state directory); `enabled`: announce entities
        (else remove those announced before)."""
        self._enabled = enabled
        self._settings = settings
        self._announcements = Announcements(path)
        self._connection = connection

    def announce(self, streams: Iterable[str], detections: Mapping[str, DetectionConfig]) -> None:
        """The entities of these streams and detections from now on (none while discovery is off); while connected,
        what changed since the last announcement is sent now (the rest was sent already)."""
        messages = discovery_messages(self._settings, streams, detections) if self._enabled else {}
        self._announcements.update(messages)
        if self._connection.ready:
            self.publish(only_changes=True)

    def publish(self, *, only_changes: bool = False) -> None:
        """Send the removals and the configs (retained, QoS 1) now, all of them unless `only_changes`; the
        connection must be started."""
        connection = self._connection
        self._announcements.publish(
            lambda topic, payload: connection.publish(topic, payload, qos=1, retain=True), only_changes=only_changes
        )

    def confirm(self) -> None:
        """Forget the removals the broker has acknowledged (polled: called after every round of acknowledgements)."""
        self._announcements.confirm()

    def on_home_assistant_status(self, message: MQTTMessage) -> None:
        """A message on Home Assistant's status topic, in paho's thread: "online" means it restarted."""
        # A retained "online" is Home Assistant's past birth, not a restart: the connect has just announced.
        if message.retain or message.payload != STATUS_ONLINE.encode():
            return
        logger.info("MQTT: Home Assistant is online; announcing the entities again")
        try:
            self.publish()
        except Exception:  # raised out of a callback, it would end paho's network thread
            logger.exception("MQTT: announcing to Home Assistant failed")
