"""`clapd run`: validate, load, warm up, then run until a signal (or until every file source has ended)."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from pathlib import Path

from clapd.daemon.config import ClapdConfig, ConfigError, load_config
from clapd.daemon.manifest import BundleError
from clapd.daemon.runner import Daemon, Publisher
from clapd.daemon.sources import SourceError

logger = logging.getLogger(__name__)

EXIT_CONFIG = 2  # bad configuration: nothing was started
EXIT_STARTUP = 1  # bundle, device or model problems at start-up


def build_publishers(config: ClapdConfig) -> list[Publisher]:
    from clapd.daemon.stdout_publisher import StdoutPublisher

    publishers: list[Publisher] = []
    mqtt = config.outputs.mqtt
    if mqtt is not None:
        from clapd.daemon.mqtt_publisher import MqttPublisher

        queue = config.state_dir / "event-queue.sqlite3"
        publishers.append(MqttPublisher(mqtt, queue, client_id_default=f"clapd-{socket.gethostname()}"[:64]))
    if config.outputs.stdout or (config.outputs.stdout is None and mqtt is None):
        publishers.append(StdoutPublisher(sys.stdout))
    return publishers


def resolve_bundle(config: ClapdConfig) -> Path:
    if config.model.bundle is not None:
        return config.model.bundle
    raise BundleError(
        "model.bundle is not set and no embedded demo bundle is installed yet: export one with "
        "`clapd export SOURCE -o DIR` and set model.bundle"
    )


def run(config_path: Path) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as e:
        print(f"{e.source}: {len(e.problems)} problem(s); nothing started", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    return run_config(config)


def run_config(config: ClapdConfig) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    daemon: Daemon | None = None
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        daemon = Daemon(config, resolve_bundle(config), build_publishers(config))
        daemon.load()
        daemon.start()
    except (BundleError, SourceError, OSError, ValueError) as e:
        print(f"clapd run: {e}", file=sys.stderr)
        if daemon is not None:
            daemon.shutdown()
        return EXIT_STARTUP
    logger.info("running: %d streams, %d detections", len(config.streams), len(config.detections))
    try:
        daemon.run(stop)
    finally:
        daemon.shutdown()
    return 0
