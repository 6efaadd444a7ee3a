"""Home Assistant MQTT discovery: payloads checked against Home Assistant's documented schema, then announced,
re-announced, and removed on a real mosquitto."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import paho.mqtt.publish
import pytest
from mqtt_broker import MosquittoBroker, Received, wait_until
from pydantic import BaseModel, ConfigDict, Field, model_validator

from clapd import __version__
from clapd.daemon.config import DetectionConfig, MqttConfig, parse_config
from clapd.daemon.mqtt import MqttOutput, build_mqtt
from clapd.daemon.mqtt.discovery import (
    ANNOUNCED_FILE,
    EVENT_ICON,
    LEVEL_ICON,
    Announcements,
    DiscoverySettings,
    device_name,
    discovery_messages,
    entity_id,
    node_id_from,
    pair_object_id,
    readable,
)
from clapd.daemon.mqtt.payloads import EventPayload, Topics, node_id_for, topic_prefix_for
from clapd.daemon.records import DetectionEvent

TIMEOUT = 5.0  # seconds, for every wait on the broker
HOSTNAME = "test-host"  # the node id when no client id is configured: topics under `clapd/test-host`
PREFIX = f"clapd/{HOSTNAME}"

# --- Home Assistant's schema, written down from its documentation ---
# Discovery topic, payload, `device` and `origin`: https://www.home-assistant.io/integrations/mqtt/ ("MQTT
# Discovery"); the platforms: https://www.home-assistant.io/integrations/event.mqtt/,
# https://www.home-assistant.io/integrations/binary_sensor.mqtt/, https://www.home-assistant.io/integrations/sensor.mqtt/
# (each page's "Configuration Variables"). Home Assistant ignores unknown keys; these models forbid them, so a typo
# in a key fails here instead of being silently dropped there.

# From the discovery docs: <discovery_prefix>/<component>/[<node_id>/]<object_id>/config, ids in [a-zA-Z0-9_-].
TOPIC_MATCHER = re.compile(r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config")
# From homeassistant.core.valid_entity_id: `domain.object_id`, lowercase letters, digits and single underscores.
ENTITY_ID = re.compile(r"^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$")
ICON = re.compile(r"^[a-z0-9-]+:[a-z0-9-]+$")  # `prefix:name`, e.g. `mdi:ear-hearing`
BINARY_SENSOR_DEVICE_CLASSES = (
    "battery battery_charging carbon_monoxide cold connectivity door garage_door gas heat light lock moisture motion "
    "moving occupancy opening plug power presence problem running safety smoke sound tamper update vibration window"
).split()


class HaModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HaDevice(HaModel):
    identifiers: list[str] | str | None = None
    connections: list[list[str]] | None = None
    configuration_url: str | None = None
    hw_version: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    model_id: str | None = None
    name: str | None = None
    serial_number: str | None = None
    suggested_area: str | None = None
    sw_version: str | None = None
    via_device: str | None = None

    @model_validator(mode="after")
    def _identified(self) -> HaDevice:
        # "At least one of identifiers or connections must be present to identify the device."
        assert self.identifiers or self.connections, "a device needs identifiers or connections"
        return self


class HaOrigin(HaModel):
    name: str  # required
    sw_version: str | None = None
    support_url: str | None = None


class HaAvailability(HaModel):
    topic: str  # required
    payload_available: str = "online"
    payload_not_available: str = "offline"
    value_template: str | None = None


class HaEntity(HaModel):
    """The options every MQTT entity platform shares, plus those of a read-only (state_topic) platform."""

    availability: list[HaAvailability] | None = None
    availability_mode: Literal["all", "any", "latest"] | None = None
    availability_template: str | None = None
    availability_topic: str | None = None
    default_entity_id: str | None = None
    device: HaDevice | None = None
    enabled_by_default: bool | None = None
    encoding: str | None = None
    entity_category: Literal["config", "diagnostic"] | None = None
    entity_picture: str | None = None
    icon: str | None = None
    json_attributes_template: str | None = None
    json_attributes_topic: str | None = None
    name: str | None = None
    origin: HaOrigin | None = None
    payload_available: str | None = None
    payload_not_available: str | None = None
    qos: Literal[0, 1, 2] = 0
    state_topic: str  # required for event, binary_sensor and sensor
    unique_id: str | None = None
    value_template: str | None = None

    @model_validator(mode="after")
    def _valid(self) -> HaEntity:
        assert not (self.availability and self.availability_topic), "availability and availability_topic exclude"
        assert self.default_entity_id is None or ENTITY_ID.match(self.default_entity_id), self.default_entity_id
        assert self.icon is None or ICON.match(self.icon), self.icon
        assert self.device is None or self.unique_id, "device only works when unique_id is set"
        for topic in [self.state_topic, *(a.topic for a in self.availability or [])]:
            assert topic and "\0" not in topic and not {"+", "#"} & set(topic), f"not a plain topic: {topic!r}"
        return self


class HaEvent(HaEntity):
    device_class: Literal["button", "doorbell", "motion"] | None = None
    event_types: list[str] = Field(min_length=1)  # required: the valid `event_type` strings


class HaBinarySensor(HaEntity):
    device_class: Literal[tuple(BINARY_SENSOR_DEVICE_CLASSES)] | None = None  # type: ignore[valid-type]
    expire_after: int | None = Field(None, gt=0)
    force_update: bool | None = None
    off_delay: int | None = Field(None, gt=0)
    payload_off: str = "OFF"
    payload_on: str = "ON"


class HaSensor(HaEntity):
    device_class: str | None = None
    expire_after: int | None = Field(None, gt=0)
    force_update: bool | None = None
    last_reset_value_template: str | None = None
    options: list[str] | None = None
    state_class: Literal["measurement", "measurement_angle", "total", "total_increasing"] | None = None
    suggested_display_precision: int | None = Field(None, ge=0)
    unit_of_measurement: str | None = None


HA_PLATFORMS: dict[str, type[HaEntity]] = {"event": HaEvent, "binary_sensor": HaBinarySensor, "sensor": HaSensor}


def check_against_home_assistant(prefix: str, messages: dict[str, bytes]) -> dict[str, HaEntity]:
    """Each config as Home Assistant reads it (topic -> entity); fails on anything its docs do not allow."""
    entities: dict[str, HaEntity] = {}
    for topic, payload in messages.items():
        assert topic.startswith(prefix + "/")
        match = TOPIC_MATCHER.fullmatch(topic[len(prefix) + 1 :])
        assert match, f"not a discovery topic: {topic}"
        entity = entities[topic] = HA_PLATFORMS[match["component"]].model_validate(json.loads(payload))
        assert entity.default_entity_id is None or entity.default_entity_id.startswith(match["component"] + ".")
    unique_ids = [(topic.split("/")[1], e.unique_id) for topic, e in entities.items()]
    assert len(set(unique_ids)) == len(unique_ids), "unique ids repeat within a platform"
    # Pickers and the logbook show names: one device's entities must be told apart by name alone.
    names = [(e.device.name if e.device else None, e.name) for e in entities.values()]
    assert len(set(names)) == len(names), f"names repeat within a device: {names}"
    return entities  # default entity ids may repeat (`a_b` + `c`, `a` + `b_c`): Home Assistant then appends `_2`


# --- the payloads ---

CONFIG = {
    "streams": {"kitchen": {"type": "mic"}, "hall": {"type": "mic"}},
    "detections": {
        "smoke_alarm": {"prompts": ["a smoke alarm beeping"]},
        "doorbell": {"prompts": ["a doorbell"], "streams": ["hall"]},
    },
    "outputs": {"mqtt": {"host": "127.0.0.1", "home_assistant": {"enabled": True}}},
}


def settings(**mqtt: object) -> DiscoverySettings:
    """As `build_mqtt` makes them for client id `clapd-test` (the default for host `test-host` is `clapd-test-host`:
    a different name keeps the ids Home Assistant knows the daemon by apart from the node id in topics and names)."""
    config = MqttConfig.model_validate({"host": "127.0.0.1", "home_assistant": {"enabled": True}, **mqtt})
    node = node_id_for(config.client_id, HOSTNAME)
    topics = Topics(topic_prefix_for(config.topic_prefix, node))
    return DiscoverySettings.from_config(config, client_id=config.client_id or "clapd-test", node=node, topics=topics)


def test_payloads_follow_home_assistants_schema() -> None:
    config = parse_config(CONFIG)
    messages = discovery_messages(settings(), config.streams, config.detections)
    entities = check_against_home_assistant("homeassistant", messages)
    kinds = sorted((topic.split("/")[1], e.state_topic) for topic, e in entities.items())
    assert kinds == [
        ("binary_sensor", f"{PREFIX}/hall/doorbell/state"),
        ("binary_sensor", f"{PREFIX}/hall/smoke_alarm/state"),
        ("binary_sensor", f"{PREFIX}/kitchen/smoke_alarm/state"),
        ("event", f"{PREFIX}/hall/doorbell/event"),
        ("event", f"{PREFIX}/hall/smoke_alarm/event"),
        ("event", f"{PREFIX}/kitchen/smoke_alarm/event"),
        ("sensor", f"{PREFIX}/hall/level"),
        ("sensor", f"{PREFIX}/kitchen/level"),
    ]
    for topic, entity in entities.items():
        assert topic.split("/")[2] == "clapd-test"  # Home Assistant's node id: the client id, as it always was
        assert entity.availability == [HaAvailability(topic=f"{PREFIX}/status")]
        assert entity.origin == HaOrigin(name="clapd", sw_version=__version__)
        assert entity.device is not None and entity.device.identifiers == ["clapd_clapd-test"]
        assert entity.device.sw_version == __version__ and entity.device.name and entity.device.model
    sound = entities[f"homeassistant/binary_sensor/clapd-test/{pair_object_id('hall', 'doorbell')}/config"]
    assert isinstance(sound, HaBinarySensor) and sound.device_class == "sound"
    assert (sound.payload_on, sound.payload_off) == ("ON", "OFF")  # what publish_state sends
    assert sound.unique_id == "clapd:clapd-test:hall:doorbell:sound"


def test_event_payloads_are_what_the_event_entity_accepts() -> None:
    config = parse_config(CONFIG)
    messages = discovery_messages(settings(), ["kitchen"], config.detections)
    (event,) = [e for e in check_against_home_assistant("homeassistant", messages).values() if isinstance(e, HaEvent)]
    for kind in ("start", "end"):
        sent = json.loads(EventPayload.from_event(make_event(kind)).to_json())
        # Home Assistant's MQTT event entity: the JSON's `event_type` must be one of `event_types`; the rest of
        # the object becomes the event's attributes.
        assert sent.pop("event_type") == kind and kind in event.event_types
        assert sent["kind"] == kind


def test_object_ids_never_collide_and_ids_are_topic_safe() -> None:
    assert pair_object_id("a_b", "c") != pair_object_id("a", "b_c")
    assert pair_object_id("kitchen", "smoke") == pair_object_id("kitchen", "smoke")  # stable across runs
    assert node_id_from("clapd-host.example.org") == "clapd-host_example_org"
    detections = {"c": DetectionConfig(prompts=["x"]), "b_c": DetectionConfig(prompts=["y"])}
    messages = discovery_messages(settings(), ["a_b", "a"], detections)
    assert len(messages) == 2 * 4 + 2
    check_against_home_assistant("homeassistant", messages)


def test_options_change_the_topics() -> None:
    custom = settings(
        topic_prefix="home/clapd",
        qos=2,
        level_interval_seconds=0,
        home_assistant={"enabled": True, "discovery_prefix": "ha/disc", "node_id": "attic"},
    )
    messages = discovery_messages(custom, ["kitchen"], {"clap": DetectionConfig(prompts=["a clap"])})
    entities = check_against_home_assistant("ha/disc", messages)
    assert len(entities) == 2  # no level sensor when levels are not published
    for topic, entity in entities.items():
        assert topic.startswith(("ha/disc/event/attic/", "ha/disc/binary_sensor/attic/"))
        assert entity.state_topic.startswith("home/clapd/kitchen/clap/") and entity.qos == 2
        assert entity.availability == [HaAvailability(topic="home/clapd/status")]


def test_names_icons_and_entity_ids_read_well() -> None:
    """One stream: names say what was heard, the event entity's apart from the binary_sensor's; the device is named
    once "clapd" (not "clapd clapd-..."), and new entity ids follow from the device's and the entity's names."""
    config = parse_config(CONFIG)
    messages = discovery_messages(settings(), ["kitchen"], config.detections)
    entities = {
        (t.split("/")[1], e.name): e for t, e in check_against_home_assistant("homeassistant", messages).items()
    }
    assert sorted(entities) == [
        ("binary_sensor", "Smoke alarm"),
        ("event", "Smoke alarm event"),
        ("sensor", "Input level"),
    ]
    sound, event, level = (entities[k] for k in sorted(entities))
    assert (sound.icon, event.icon, level.icon) == (None, EVENT_ICON, LEVEL_ICON)  # sound: from its device class
    assert {e.device.name for e in entities.values() if e.device} == {"clapd test-host"}
    assert [e.default_entity_id for e in (sound, event, level)] == [
        "binary_sensor.clapd_test_host_smoke_alarm",
        "event.clapd_test_host_smoke_alarm_event",
        "sensor.clapd_test_host_input_level",
    ]


def test_names_with_many_streams_say_where_and_a_detection_may_name_itself() -> None:
    detections = {
        "smoke_alarm": DetectionConfig(prompts=["a smoke alarm"]),
        "glass": DetectionConfig(prompts=["glass breaking"], name="Glasbruch in der Küche", streams=["hall"]),
    }
    messages = discovery_messages(settings(), ["kitchen", "hall"], detections)
    entities = check_against_home_assistant("homeassistant", messages).values()
    assert sorted(e.name or "" for e in entities) == [
        "Hall: Glasbruch in der Küche",
        "Hall: Glasbruch in der Küche event",
        "Hall: Input level",
        "Hall: Smoke alarm",
        "Hall: Smoke alarm event",
        "Kitchen: Input level",
        "Kitchen: Smoke alarm",
        "Kitchen: Smoke alarm event",
    ]
    glass = [e for e in entities if e.name == "Hall: Glasbruch in der Küche"]
    assert [e.default_entity_id for e in glass] == ["binary_sensor.clapd_test_host_hall_glasbruch_in_der_kuche"]


def test_an_existing_install_keeps_its_entities() -> None:
    """Unique ids, config topics and the device's identifiers are what earlier versions sent (from the client id),
    so Home Assistant updates the entities it has (new names, same entity ids) instead of making new ones."""
    config = parse_config(CONFIG)
    messages = discovery_messages(settings(), ["kitchen"], config.detections)
    entities = check_against_home_assistant("homeassistant", messages)
    object_id = pair_object_id("kitchen", "smoke_alarm")
    assert {topic: e.unique_id for topic, e in entities.items()} == {
        f"homeassistant/event/clapd-test/{object_id}/config": "clapd:clapd-test:kitchen:smoke_alarm:event",
        f"homeassistant/binary_sensor/clapd-test/{object_id}/config": "clapd:clapd-test:kitchen:smoke_alarm:sound",
        "homeassistant/sensor/clapd-test/kitchen_level/config": "clapd:clapd-test:kitchen:level",
    }
    assert all(e.device and e.device.identifiers == ["clapd_clapd-test"] for e in entities.values())


@pytest.mark.parametrize(
    ("mqtt", "device"),
    [
        ({}, "clapd test-host"),  # the host name
        ({"client_id": "clapd-kitchen"}, "clapd kitchen"),  # a configured client id, "clapd" said once
        ({"client_id": "garage"}, "clapd garage"),
        ({"home_assistant": {"enabled": True, "node_id": "attic"}}, "clapd attic"),
    ],
)
def test_the_device_is_named_after_the_node(mqtt: dict, device: str) -> None:
    messages = discovery_messages(settings(**mqtt), ["kitchen"], {"clap": DetectionConfig(prompts=["a clap"])})
    entities = check_against_home_assistant("homeassistant", messages).values()
    assert {e.device.name for e in entities if e.device} == {device}


def test_readable_names() -> None:
    assert readable("dog_barking") == "Dog barking"
    assert readable("front-door__2") == "Front door 2"
    assert readable("TV_noise") == "TV noise"
    assert (device_name("vm"), device_name("clapd-vm"), device_name("CLAPD_x"), device_name("clapd")) == (
        "clapd vm",
        "clapd vm",
        "clapd x",
        "clapd",
    )
    assert entity_id("event", "clapd vm", "Kitchen: Dog barking event") == "event.clapd_vm_kitchen_dog_barking_event"
    assert entity_id("sensor", "clapd", "日本") == "sensor.clapd"


@pytest.mark.parametrize("name", ["", " Dog", "Dog ", "Dog\nbarking", "x" * 101])
def test_a_detection_name_is_one_trimmed_line(name: str) -> None:
    with pytest.raises(ValueError):
        DetectionConfig(prompts=["a dog"], name=name)


def make_event(kind: str) -> DetectionEvent:
    return DetectionEvent(
        event_id="e1",
        kind=kind,  # type: ignore[arg-type]
        stream="kitchen",
        detection="smoke_alarm",
        start_sample=0,
        end_sample=48_000 if kind == "end" else None,
        start_utc="2025-01-01T00:00:00+00:00",
        end_utc="2025-01-01T00:00:01+00:00" if kind == "end" else None,
        peak_score=0.8,
        mean_score=0.7,
        sample_rate=48_000,
    )


@pytest.mark.parametrize("content", ["{broken", '{"topics": "a"}', '{"topics": ["homeassistant/+/x/config"]}', "[]"])
def test_a_damaged_record_is_ignored(tmp_path: Path, content: str) -> None:
    (tmp_path / ANNOUNCED_FILE).write_text(content)
    announcements = Announcements(tmp_path / ANNOUNCED_FILE)
    announcements.update({"homeassistant/event/n/o/config": b"{}"})
    sent: list[str] = []
    announcements.publish(lambda topic, payload: sent.append(topic))  # type: ignore[arg-type,func-returns-value]
    assert sent == ["homeassistant/event/n/o/config"]
    assert announced_file(tmp_path) == set(sent)


# --- on the broker ---

DETECTIONS = {name: DetectionConfig(prompts=[name]) for name in ("smoke", "glass", "dog")}


@pytest.fixture
def outputs(tmp_path: Path) -> Iterator[Callable[..., MqttOutput]]:
    """`outputs(port, **mqtt fields)`: Home Assistant discovery on, state in tmp_path; stopped at teardown."""
    made: list[MqttOutput] = []

    def make(port: int, **fields: object) -> MqttOutput:
        fields.setdefault("home_assistant", {"enabled": True})
        config = MqttConfig.model_validate({"host": "127.0.0.1", "port": port, "level_interval_seconds": 0, **fields})
        output = build_mqtt(config, tmp_path, client_id_default="clapd-test", hostname=HOSTNAME).output
        made.append(output)
        return output

    yield make
    for output in made:
        output.stop(timeout=0.5)


def configs(got: list[Received]) -> dict[str, bytes]:
    """The last payload per discovery config topic."""
    return {m.topic: m.payload for m in got if m.topic.endswith("/config")}


def topics_of(detections: dict[str, DetectionConfig], streams: tuple[str, ...] = ("kitchen",)) -> set[str]:
    return set(discovery_messages(settings(level_interval_seconds=0), streams, detections))


def announced_file(tmp_path: Path) -> set[str]:
    return set(json.loads((tmp_path / ANNOUNCED_FILE).read_text())["topics"])


def test_announced_retained_and_again_when_home_assistant_comes_online(
    broker: MosquittoBroker, outputs, subscribers
) -> None:
    live = subscribers(broker.port, "homeassistant/#")
    output = outputs(broker.port)
    output.announce(["kitchen"], DETECTIONS)  # before the connection: sent once connected
    output.start()
    got = live.wait_for(lambda got: len(configs(got)) == 6, TIMEOUT, "six configs")
    check_against_home_assistant("homeassistant", configs(got))
    late = subscribers(broker.port, "homeassistant/#")
    retained = late.wait_for(lambda got: len(got) == 6, TIMEOUT, "six retained configs")
    assert all(m.retain for m in retained) and configs(retained) == configs(got)

    count = len(live.received())
    paho.mqtt.publish.single("homeassistant/status", "offline", hostname="127.0.0.1", port=broker.port)
    paho.mqtt.publish.single("homeassistant/status", "online", hostname="127.0.0.1", port=broker.port)
    again = live.wait_for(lambda got: len(got) >= count + 2 + 6, TIMEOUT, "the configs again")
    assert configs(again[count:]) == configs(got)


def retained_configs(port: int, subscribers) -> dict[str, bytes]:
    """What a newcomer gets: the retained discovery configs."""
    late = subscribers(port, "homeassistant/#")
    time.sleep(0.3)  # retained messages arrive right after the subscription
    got = late.received()
    assert all(m.retain for m in got)
    return configs(got)


def test_a_dropped_detection_loses_its_entities(broker: MosquittoBroker, outputs, subscribers, tmp_path: Path) -> None:
    live = subscribers(broker.port, "homeassistant/#")
    output = outputs(broker.port)
    output.start()
    wait_until(lambda: output.stats().connected, TIMEOUT, "the connection")
    output.announce(["kitchen"], DETECTIONS)
    live.wait_for(lambda got: len(configs(got)) == 6, TIMEOUT, "six configs")
    kept = {n: d for n, d in DETECTIONS.items() if n != "glass"}
    output.announce(["kitchen"], kept)
    gone = topics_of(DETECTIONS) - topics_of(kept)
    assert len(gone) == 2
    live.wait_for(lambda got: all(configs(got).get(t) == b"" for t in gone), TIMEOUT, "empty configs")
    assert set(retained_configs(broker.port, subscribers)) == topics_of(kept)
    wait_until(lambda: announced_file(tmp_path) == topics_of(kept), TIMEOUT, "the file to forget the removed")


def test_entities_of_an_earlier_run_are_removed(broker: MosquittoBroker, outputs, subscribers, tmp_path: Path) -> None:
    first = outputs(broker.port)
    first.announce(["kitchen", "hall"], DETECTIONS)
    first.start()
    subscribers(broker.port, "homeassistant/#").wait_for(lambda got: len(got) == 12, TIMEOUT, "twelve configs")
    first.stop()
    assert announced_file(tmp_path) == topics_of(DETECTIONS, ("kitchen", "hall"))

    second = outputs(broker.port)  # the same state directory: a restart with the hall stream and dog gone
    kept = {n: d for n, d in DETECTIONS.items() if n != "dog"}
    second.announce(["kitchen"], kept)
    second.start()
    wait_until(lambda: announced_file(tmp_path) == topics_of(kept), TIMEOUT, "the removals to be acknowledged")
    assert set(retained_configs(broker.port, subscribers)) == topics_of(kept)


def test_turning_discovery_off_removes_what_was_announced(
    broker: MosquittoBroker, outputs, subscribers, tmp_path: Path
) -> None:
    first = outputs(broker.port)
    first.announce(["kitchen"], DETECTIONS)
    first.start()
    subscribers(broker.port, "homeassistant/#").wait_for(lambda got: len(got) == 6, TIMEOUT, "six configs")
    first.stop()

    second = outputs(broker.port, home_assistant={"enabled": False})
    second.announce(["kitchen"], DETECTIONS)
    second.start()
    wait_until(lambda: announced_file(tmp_path) == set(), TIMEOUT, "every removal to be acknowledged")
    assert retained_configs(broker.port, subscribers) == {}


def test_no_discovery_when_off(broker: MosquittoBroker, outputs, subscribers, tmp_path: Path) -> None:
    live = subscribers(broker.port, "#")
    output = outputs(broker.port, home_assistant={"enabled": False})
    output.announce(["kitchen"], DETECTIONS)
    output.start()
    live.wait_for(lambda got: any(m.topic == f"{PREFIX}/status" for m in got), TIMEOUT, "online")
    paho.mqtt.publish.single("homeassistant/status", "online", hostname="127.0.0.1", port=broker.port)
    time.sleep(0.3)
    assert [m.topic for m in live.received()] == [f"{PREFIX}/status", "homeassistant/status"]
    assert not (tmp_path / ANNOUNCED_FILE).exists()


# --- only what changed, while connected (issue 10, item 5) ---


class Acknowledged:
    """Stands in for paho's delivery of a message the broker acknowledged at once."""

    def is_published(self) -> bool:
        return True


def test_a_change_sends_only_what_changed(tmp_path: Path) -> None:
    announcements = Announcements(tmp_path / ANNOUNCED_FILE)
    sent: list[tuple[str, bytes]] = []

    def send(topic: str, payload: bytes) -> Acknowledged:
        sent.append((topic, payload))
        return Acknowledged()

    def round_of(messages: dict[str, bytes], *, only_changes: bool = True) -> list[tuple[str, bytes]]:
        sent.clear()
        announcements.update(messages)
        announcements.publish(send, only_changes=only_changes)
        return list(sent)

    a, b, c = (f"homeassistant/event/n/{x}/config" for x in "abc")
    assert round_of({a: b"1"}, only_changes=False) == [(a, b"1")]
    assert round_of({a: b"1", b: b"2"}) == [(b, b"2")]  # added
    assert round_of({a: b"1", b: b"3"}) == [(b, b"3")]  # changed
    assert round_of({a: b"1", b: b"3"}) == []  # nothing changed
    assert round_of({b: b"3", c: b"4"}) == [(a, b""), (c, b"4")]  # removed and added
    assert round_of({b: b"3", c: b"4"}) == []  # the removal waits for its acknowledgement, not sent again
    assert round_of({b: b"3", c: b"4"}, only_changes=False) == [(a, b""), (b, b"3"), (c, b"4")]  # a connect: all
    announcements.confirm()  # the removal is acknowledged: a is forgotten
    assert round_of({b: b"3", c: b"4"}, only_changes=False) == [(b, b"3"), (c, b"4")]
    assert round_of({a: b"1", b: b"3", c: b"4"}) == [(a, b"1")]  # announced again after its removal
    assert announced_file(tmp_path) == {a, b, c}


def test_announcing_more_detections_sends_only_theirs(brokers, outputs, subscribers) -> None:
    """Detections added one at a time (as control requests add them): each announce sends its two new configs, not
    every config again; Home Assistant coming online, and a reconnect, still get them all."""
    broker: MosquittoBroker = brokers(persistence=False)  # a restart forgets the retained configs
    live = subscribers(broker.port, "homeassistant/#")
    output = outputs(broker.port)
    output.start()
    wait_until(lambda: output.stats().connected, TIMEOUT, "the connection")
    detections: dict[str, DetectionConfig] = {}
    for n in range(20):
        detections[f"d{n}"] = DetectionConfig(prompts=["x"])
        output.announce(["kitchen"], detections)
    got = live.wait_for(lambda got: len(configs(got)) == 40, TIMEOUT, "forty configs")
    time.sleep(0.3)  # anything more would come now
    assert len(live.received()) == 40 and len(got) == 40
    assert set(retained_configs(broker.port, subscribers)) == topics_of(detections)

    paho.mqtt.publish.single("homeassistant/status", "online", hostname="127.0.0.1", port=broker.port)
    live.wait_for(lambda got: len(got) == 40 + 1 + 40, TIMEOUT, "every config again for Home Assistant")
    broker.stop()
    wait_until(lambda: not output.stats().connected, TIMEOUT, "the output to notice")
    broker.start()
    # The subscriber reconnects by itself: live or retained, the configs it gets were sent after the restart.
    again = live.wait_for(lambda got: len(configs(got[81:])) == 40, 15, "every config again after the reconnect")
    assert set(configs(again[81:])) == topics_of(detections)
