"""Detection events as JSON lines on a text stream (default: stdout), for pipes and for running without a broker.

Every line is one `EventPayload`, the same schema as the MQTT event topic. States are not written: a start is ON
and an end is OFF, and one schema per line keeps consumers simple.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TextIO

from clapd.daemon.mqtt_payloads import EventPayload
from clapd.daemon.records import DetectionEvent

logger = logging.getLogger(__name__)


class StdoutPublisher:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.dropped = 0  # lines that could not be written (a closed pipe, a full disk)

    def start(self) -> None:
        pass

    def publish_event(self, event: DetectionEvent) -> None:
        line = EventPayload.from_event(event).model_dump_json() + "\n"
        stream = self._stream or sys.stdout  # looked up per call, so a redirected sys.stdout is followed
        with self._lock:
            try:
                stream.write(line)
                stream.flush()
            except (OSError, ValueError) as e:
                self.dropped += 1
                if self.dropped == 1:
                    logger.error(
                        "cannot write events to %s (%s); dropping and counting them while this lasts", stream, e
                    )

    def publish_state(self, stream: str, detection: str, on: bool) -> None:
        """Nothing to write: the state is implied by the start and end events."""

    def stop(self, timeout: float = 2.0) -> None:
        with self._lock:
            try:
                (self._stream or sys.stdout).flush()
            except (OSError, ValueError) as e:
                logger.warning("cannot flush the event stream: %s", e)
