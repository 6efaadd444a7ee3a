"""One control request to a running daemon, and its result: `clapd enrol`, `clapd false-alarm`, `clapd forget-example`.

The client logs in as the daemon does (`connection.log_in`: the config's user name, password source and TLS), with a
client id of its own (never the daemon's: the broker would close the daemon's session for it), subscribes to
`{prefix}/control/result`, publishes the request once subscribed (QoS 1, not retained, with a fresh `request_id`)
and waits, bounded, for the result that carries that id. The prefix is the daemon's (`topic_prefix_for`): the same
config on the daemon's host, or a config with `mqtt.topic_prefix` (or `mqtt.client_id`) set, finds it.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from clapd.daemon.config import ConfigError, MqttConfig, load_config
from clapd.daemon.control import ControlResult
from clapd.daemon.mqtt.connection import MqttSetupError, log_in
from clapd.daemon.mqtt.payloads import Topics, node_id_for, topic_prefix_for

DEFAULT_TIMEOUT_SECONDS = 30.0  # an enrolment embeds its example before it answers
EXIT_REFUSED = 1  # refused, or no result: nothing may have changed
EXIT_CONFIG = 2  # the config cannot be used to reach the daemon


class NoResult(RuntimeError):
    """No result came: the broker refused or could not be reached, or the daemon did not answer in time."""


def send_request(
    config: MqttConfig, fields: dict[str, Any], timeout: float, *, hostname: str | None = None
) -> ControlResult:
    """Publish `fields` (a request without `request_id`) to the daemon's control topic and return its result;
    `NoResult` says why there is none within `timeout` s, `MqttSetupError` which credentials cannot be used."""
    node = node_id_for(config.client_id, socket.gethostname() if hostname is None else hostname)
    topics = Topics(topic_prefix_for(config.topic_prefix, node))
    request_id = uuid.uuid4().hex
    exchange = _Exchange(topics, request_id, json.dumps({"request_id": request_id, **fields}).encode())
    v5 = config.protocol == "5"
    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"clapd-cli-{request_id[:16]}",
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else True,
    )
    log_in(client, config)
    client.on_connect = exchange.on_connect
    client.on_connect_fail = exchange.on_connect_fail
    client.on_subscribe = exchange.on_subscribe
    client.on_message = exchange.on_message
    client.connect_async(config.host, config.port, config.keepalive_seconds)
    client.loop_start()
    try:
        if not exchange.done.wait(timeout):
            seen = f" ({exchange.problem})" if exchange.problem else ""
            raise NoResult(
                f"no result on {topics.control_result} within {timeout:g} s{seen}: is clapd running there with "
                f"mqtt.control.enabled, on {config.host}:{config.port}?"
            )
    finally:
        client.disconnect()
        client.loop_stop()
    if exchange.result is None:
        raise NoResult(exchange.problem or "no result")
    return exchange.result


class _Exchange:
    """paho's callbacks for one request (run in paho's thread): subscribe, publish, wait for the answer."""

    def __init__(self, topics: Topics, request_id: str, payload: bytes) -> None:
        self._topics = topics
        self._request_id = request_id
        self._payload = payload
        self.done = threading.Event()
        self.result: ControlResult | None = None
        self.problem: str | None = None

    def on_connect(
        self, client: Client, userdata: object, flags: ConnectFlags, reason: ReasonCode, properties: Properties | None
    ) -> None:
        if reason.is_failure:
            self._fail(f"the broker refused the connection: {reason}")
        elif self.result is None:
            client.subscribe(self._topics.control_result, qos=1)

    def on_connect_fail(self, client: Client, userdata: object) -> None:
        error = sys.exc_info()[1]  # paho calls this from its `except OSError:`
        self.problem = f"cannot connect: {error}" if error is not None else "cannot connect"

    def on_subscribe(
        self, client: Client, userdata: object, mid: int, reasons: list[ReasonCode], properties: Properties | None
    ) -> None:
        if any(reason.is_failure for reason in reasons):
            self._fail(f"the broker refused the subscription to {self._topics.control_result}")
        elif self.result is None:  # a reconnect subscribes again: the request goes out once per session at most
            client.publish(self._topics.control_set, self._payload, qos=1, retain=False)

    def on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        try:
            result = ControlResult.model_validate_json(message.payload)
        except ValidationError:
            return  # not a result this client understands: not ours
        if result.request_id == self._request_id:
            self.result = result
            self.done.set()

    def _fail(self, problem: str) -> None:
        self.problem = problem
        self.done.set()


def run_request(command: str, config_path: Path, fields: dict[str, Any], timeout: float) -> int:
    """The command line's side: the result as one JSON line on stdout; refusals and failures on stderr too."""
    try:
        config = load_config(config_path)
    except ConfigError as e:
        print(f"{e.source}: {len(e.problems)} problem(s)", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    mqtt = config.outputs.mqtt
    if mqtt is None or not mqtt.control.enabled:
        print(f"clapd {command}: {config_path} has no outputs.mqtt with control.enabled: true", file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = send_request(mqtt, fields, timeout)
    except MqttSetupError as e:
        print(f"clapd {command}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except NoResult as e:
        print(f"clapd {command}: {e} (a request that reached the daemon may still be applied)", file=sys.stderr)
        return EXIT_REFUSED
    print(result.to_json().decode())
    if not result.ok:
        for error in result.errors:
            print(f"clapd {command}: refused: {error}", file=sys.stderr)
        return EXIT_REFUSED
    return 0
