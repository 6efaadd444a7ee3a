"""A real mosquitto broker on loopback, and a subscriber that records what it receives (no mocks).

The broker can require passwords (mosquitto_passwd), apply an ACL and add a TLS listener with a throw-away CA made
by the openssl command. tests/conftest.py registers this module as a plugin, so its fixtures `broker`, `brokers`
and `subscribers` reach every test module without an import; the rest is imported by name.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest
from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

# apt installs the broker in /usr/sbin, which is not on every user's PATH.
MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "mosquitto_passwd"
START_TIMEOUT_SECONDS = 5.0
STOP_TIMEOUT_SECONDS = 5.0
POLL_SECONDS = 0.01
TLS_VERSION = "tlsv1.2"  # the oldest TLS the test listener accepts (mosquitto's tls_version is a minimum)
LOOPBACK_NAMES = ("IP:127.0.0.1", "DNS:localhost")  # subjectAltName entries of the default server certificate


class TlsFiles(NamedTuple):
    """PEM files of a throw-away CA and a server certificate it signed (unpacks as `ca, cert, key`)."""

    ca: Path
    cert: Path
    key: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_SECONDS)


class MosquittoBroker:
    """mosquitto on 127.0.0.1:`port`; stop() and start() again keep the port (and, with persistence, the state).

    Persistence keeps retained messages and the sessions of clients with clean_session off across a restart,
    which lets a test's subscriber keep its subscription while the broker is away. Passwords and the ACL apply to
    every listener; with `tls`, a second listener on `tls_port` speaks only TLS.
    """

    def __init__(
        self,
        directory: Path,
        *,
        persistence: bool = True,
        users: dict[str, str] | None = None,
        acl: str | None = None,
        tls: TlsFiles | None = None,
        extra_config: str = "",
    ) -> None:
        """`users`: name -> password; given, only they may connect. `acl`: the text of a mosquitto acl_file
        ("user NAME" / "topic read|write|readwrite FILTER" lines). `extra_config`: e.g. another listener."""
        if MOSQUITTO is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.directory = directory
        self.port = free_port()
        self.tls_port = free_port() if tls is not None else None
        self.config_file = directory / "mosquitto.conf"
        self.log_file = directory / "mosquitto.log"
        self.password_file = directory / "passwords"
        if users:
            self.set_users(users)
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if users else 'true'}",
            *([f"password_file {self.password_file}"] if users else []),
            *self._acl_lines(acl),
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {directory}/",
            # Started as root, mosquitto drops to the user "mosquitto", who cannot write to the test's directory.
            f"user {getpass.getuser()}",
            *self._tls_lines(tls),
            extra_config,
        ]
        self.config_file.write_text("\n".join(lines) + "\n")
        self._process: subprocess.Popen[bytes] | None = None

    def set_users(self, users: dict[str, str]) -> None:
        """Write the password file anew (name -> password); a running broker reads it at `reload()`."""
        for n, (name, password) in enumerate(users.items()):
            create = ["-c"] if n == 0 else []
            subprocess.run(
                [MOSQUITTO_PASSWD, *create, "-b", str(self.password_file), name, password], check=True, timeout=10
            )

    def reload(self) -> None:
        """SIGHUP: mosquitto reads its password and ACL files again; connected clients stay connected."""
        assert self._process is not None
        self._process.send_signal(signal.SIGHUP)

    def log_lines(self, containing: str) -> list[str]:
        """Lines of the broker's log (written as it goes) that contain `containing`."""
        return [line for line in self.log_file.read_text().splitlines() if containing in line]

    def _acl_lines(self, acl: str | None) -> list[str]:
        if acl is None:
            return []
        acl_file = self.directory / "acl"
        acl_file.write_text(acl)
        return [f"acl_file {acl_file}"]

    def _tls_lines(self, tls: TlsFiles | None) -> list[str]:
        if tls is None:
            return []
        return [
            f"listener {self.tls_port} 127.0.0.1",
            f"cafile {tls.ca}",
            f"certfile {tls.cert}",
            f"keyfile {tls.key}",
            f"tls_version {TLS_VERSION}",
        ]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        assert MOSQUITTO is not None and not self.running
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config_file)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._accepts():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not start on port {self.port}:\n{self.log_file.read_text()}")
            time.sleep(POLL_SECONDS)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()  # SIGTERM: mosquitto saves its persistence file and exits
        try:
            self._process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(STOP_TIMEOUT_SECONDS)
        self._process = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP the broker: connections stay open and take bytes, but nothing is answered until resumed."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._process.send_signal(signal.SIGCONT)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float = 0.0  # time.time() when the subscriber got it
    dup: bool = False  # the MQTT DUP flag: the broker sent it again


class Subscriber:
    """A paho client (MQTT 3.1.1, QoS 1) recording every message on `topic_filter`; reconnects by itself.

    `persistent`: clean_session off, so a broker with persistence keeps the subscription and queues QoS 1
    messages while this client (or the broker) is away.
    """

    def __init__(
        self,
        port: int,
        topic_filter: str,
        *,
        client_id: str,
        persistent: bool = False,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
    ) -> None:
        """`username`/`password`: for a broker with users; `ca_file`: connect with TLS, trusting this CA."""
        self._port = port
        self._filter = topic_filter
        self._client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=not persistent,
        )
        self._client.reconnect_delay_set(1, 1)
        if username is not None:
            self._client.username_pw_set(username, password)
        if ca_file is not None:
            self._client.tls_set(ca_certs=str(ca_file))
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._received: list[Received] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()

    def connect(self, timeout: float = 5.0) -> Subscriber:
        self._client.connect_async("127.0.0.1", self._port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise AssertionError(f"subscriber not subscribed to {self._filter!r} within {timeout} s")
        return self

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def received(self, topic: str | None = None) -> list[Received]:
        with self._changed:
            return [m for m in self._received if topic is None or m.topic == topic]

    def wait_for(self, condition: Callable[[list[Received]], bool], timeout: float, what: str) -> list[Received]:
        """Wait (bounded) until `condition(all received so far)` holds; return what was received."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self._received), timeout):
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; received {self._received}")
            return list(self._received)

    def _on_connect(
        self, client: Client, userdata: object, flags: ConnectFlags, reason: ReasonCode, properties: Properties | None
    ) -> None:
        if not reason.is_failure:
            client.subscribe(self._filter, qos=1)

    def _on_subscribe(self, client: Client, *args: object) -> None:
        self._subscribed.set()

    def _on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        with self._changed:
            received = Received(
                message.topic, bytes(message.payload), bool(message.retain), time.time(), bool(message.dup)
            )
            self._received.append(received)
            self._changed.notify_all()


def connack(
    port: int,
    *,
    username: str | None = None,
    password: str | None = None,
    ca_file: Path | None = None,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    timeout: float = 5.0,
) -> ReasonCode:
    """One connection attempt by a plain paho client, no retries: the reason code of the broker's CONNACK."""
    answers: list[ReasonCode] = []
    answered = threading.Event()

    def on_connect(client: Client, userdata: object, flags: ConnectFlags, reason: ReasonCode, *args: object) -> None:
        answers.append(reason)
        answered.set()

    client = Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="test-probe", protocol=protocol)
    if username is not None:
        client.username_pw_set(username, password)
    if ca_file is not None:
        client.tls_set(ca_certs=str(ca_file))
    client.on_connect = on_connect
    client.connect("127.0.0.1", port, keepalive=10)
    client.loop_start()
    try:
        if not answered.wait(timeout):
            raise AssertionError(f"no CONNACK from port {port} within {timeout} s")
    finally:
        client.disconnect()
        client.loop_stop()
    return answers[0]


def make_tls_files(directory: Path, *, names: tuple[str, ...] = LOOPBACK_NAMES) -> TlsFiles:
    """A throw-away CA and a server certificate for `names` (subjectAltName entries) in `directory` (made)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, request, cert = (
        directory / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    )
    extensions = directory / "server.ext"
    extensions.write_text(
        f"subjectAltName={','.join(names)}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=clapd test CA"],
        ["req", *ec, "-keyout", key, "-out", request, "-subj", "/CN=clapd test broker"],
        ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "1"]
        + ["-extfile", extensions],
    ]
    for command in commands:
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True, timeout=30)
    return TlsFiles(ca, cert, key)


@pytest.fixture(name="brokers")
def brokers_fixture(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """Start brokers (`brokers(users={"u": "pw"})`, options as `MosquittoBroker`'s); stopped at teardown."""
    made: list[MosquittoBroker] = []

    def make(**options: object) -> MosquittoBroker:
        directory = tmp_path / f"broker{len(made)}"
        directory.mkdir()
        broker = MosquittoBroker(directory, **options)  # type: ignore[arg-type]
        made.append(broker)
        broker.start()
        return broker

    try:
        yield make
    finally:
        for broker in made:
            broker.stop()


@pytest.fixture(name="broker")
def broker_fixture(brokers: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """A plain broker: anonymous clients, persistence on."""
    return brokers()


@pytest.fixture(name="subscribers")
def subscribers_fixture() -> Iterator[Callable[..., Subscriber]]:
    """Connect subscribers (`subscribers(port, "clapd/#", persistent=True)`, auth as `Subscriber`'s); closed at end."""
    made: list[Subscriber] = []

    def make(
        port: int,
        topic_filter: str = "#",
        *,
        persistent: bool = False,
        timeout: float = 5.0,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
    ) -> Subscriber:
        subscriber = Subscriber(
            port,
            topic_filter,
            client_id=f"test-sub-{len(made)}",
            persistent=persistent,
            username=username,
            password=password,
            ca_file=ca_file,
        )
        made.append(subscriber)
        return subscriber.connect(timeout)

    yield make
    for subscriber in made:
        subscriber.close()
