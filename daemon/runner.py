"""The daemon: wires the stages and owns the threads.

capture (each source's own thread or callback) -> ring buffers -> this inference loop (due windows of every
stream, one batched model call, matching, event tracking) -> a bounded queue -> the publisher thread. The
inference loop never touches the network.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np

from clapd.daemon.config import ClapdConfig, FileSource
from clapd.daemon.events import EventTracker, StreamClock
from clapd.daemon.inference import AudioModel, TextModel, open_bundle
from clapd.daemon.matcher import Matcher, PromptCache, build_detections
from clapd.daemon.records import DetectionEvent, Scores
from clapd.daemon.ring import RingBuffer
from clapd.daemon.sources import Source, build_source
from clapd.daemon.windows import StreamWindows

logger = logging.getLogger(__name__)

RING_SECONDS = 30  # capture kept per stream: the longest window plus generous slack for a slow model call
IDLE_WAIT_SECONDS = 0.02  # how long the inference loop sleeps when no window is due
EVENT_QUEUE_SIZE = 10_000


class Publisher(Protocol):
    def start(self) -> None: ...
    def stop(self, timeout: float = 2.0) -> None: ...
    def publish_event(self, event: DetectionEvent) -> None: ...
    def publish_state(self, stream: str, detection: str, on: bool) -> None: ...


@dataclass(slots=True)
class _Stream:
    name: str
    ring: RingBuffer
    source: Source
    windows: StreamWindows
    clock: StreamClock
    was_running: bool = True  # the source's state at the last look: a return to "running" re-anchors the clock


class Daemon:
    def __init__(
        self,
        config: ClapdConfig,
        bundle_dir: Path,
        publishers: list[Publisher],
        *,
        utc_now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self._config = config
        self._bundle_dir = bundle_dir
        self._publishers = publishers
        self._utc_now = utc_now
        self._events: queue.Queue[tuple[str, object] | None] = queue.Queue(EVENT_QUEUE_SIZE)
        self._streams: list[_Stream] = []
        self._publisher_thread: threading.Thread | None = None
        self.windows_processed = 0
        self.events_published = 0

    def load(self) -> None:
        """Models, prompts and warm-up: everything that can fail before audio is opened."""
        manifest = open_bundle(self._bundle_dir)
        self._manifest = manifest
        self._audio = AudioModel(self._bundle_dir, manifest, self._config.model)
        text = TextModel(self._bundle_dir, manifest, self._config.model)
        cache = PromptCache(text, self._config.state_dir / "prompt-cache", manifest.text.sha256)
        detections = build_detections(self._config.detections, cache)
        background = cache.embed(list(self._config.background_prompts))
        self._matcher = Matcher(detections, background, manifest.logit_scale)
        self._audio.warm_up()
        logger.info("model ready: %s %s on %s", manifest.source, self._audio.precision, self._audio.providers[0])

    def start(self) -> None:
        rate = self._manifest.sample_rate
        windows = self._config.windows
        window, hop = int(windows.window_seconds * rate), int(windows.hop_seconds * rate)
        for name, source_config in self._config.streams.items():
            ring = RingBuffer(RING_SECONDS * rate)
            source = build_source(name, source_config, ring)
            lossless = isinstance(source_config, FileSource) and not source_config.realtime
            stream_windows = StreamWindows(name, ring, window, hop, self._manifest.window_samples, lossless=lossless)
            self._streams.append(_Stream(name, ring, source, stream_windows, StreamClock(self._utc_now(), rate)))
        clocks = {s.name: s.clock for s in self._streams}
        self._tracker = EventTracker(self._config.detections, clocks, hop)
        for publisher in self._publishers:
            publisher.start()
        self._publisher_thread = threading.Thread(target=self._publish_loop, name="publisher", daemon=True)
        self._publisher_thread.start()
        for stream in self._streams:
            for detection in self._config.detections:
                self._queue_state(stream.name, detection, on=False)  # clears a stale ON left by a crash
            stream.source.start()

    def run(self, stop: threading.Event) -> None:
        """The inference loop, until `stop` is set or every (finite) source has ended and been processed."""
        while not stop.is_set():
            self._reanchor_after_outages()
            due = [w for s in self._streams for w in s.windows.due()]
            if due:
                self._infer(due)
            elif self._all_sources_done():
                break
            else:
                stop.wait(IDLE_WAIT_SECONDS)

    def shutdown(self, timeout: float = 2.0) -> None:
        for stream in self._streams:
            stream.source.stop()
            for event in self._tracker.close(stream.name, stream.ring.total_written):
                self._queue_event(event)
        self._events.put(None)
        if self._publisher_thread is not None:
            self._publisher_thread.join(timeout)
        for publisher in self._publishers:
            publisher.stop(timeout)

    def _infer(self, windows: list) -> None:
        started = time.perf_counter()
        embeddings = self._audio.embed(np.stack([w.samples for w in windows]))
        span = int(self._config.windows.window_seconds * self._manifest.sample_rate)
        for window, embedding in zip(windows, embeddings, strict=True):
            values = self._matcher.score(window.stream, embedding)
            scores = Scores(window.stream, window.start_sample, window.start_sample + span, values)
            for event in self._tracker.feed(scores):
                self._queue_event(event)
        self.windows_processed += len(windows)
        logger.debug("%d windows in %.0f ms", len(windows), 1000 * (time.perf_counter() - started))

    def _reanchor_after_outages(self) -> None:
        """Audio resumes after an outage with no samples for the time away: anchor its clock anew."""
        for stream in self._streams:
            running = stream.source.status().state == "running"
            if running and not stream.was_running:
                stream.clock.reanchor(stream.ring.total_written, self._utc_now())
                logger.info("%s: capture resumed; its clock is re-anchored", stream.name)
            stream.was_running = running

    def _all_sources_done(self) -> bool:
        """Every source has ended (files without loop) and every full window of their audio has been run."""
        return all(
            s.source.status().state in ("finished", "failed")
            and s.windows.next_start + s.windows.window > s.ring.total_written
            for s in self._streams
        )

    def _queue_event(self, event: DetectionEvent) -> None:
        self._put(("event", event))
        self._queue_state(event.stream, event.detection, on=event.kind == "start")

    def _queue_state(self, stream: str, detection: str, *, on: bool) -> None:
        self._put(("state", (stream, detection, on)))

    def _put(self, item: tuple[str, object]) -> None:
        try:
            self._events.put_nowait(item)
        except queue.Full:  # publishers persist to disk: a full queue means the disk itself is stuck
            logger.error("event queue full: dropping %s", item[0])

    def _publish_loop(self) -> None:
        while (item := self._events.get()) is not None:
            kind, payload = item
            for publisher in self._publishers:
                try:
                    if kind == "event":
                        publisher.publish_event(payload)  # type: ignore[arg-type]
                        self.events_published += 1
                    else:
                        publisher.publish_state(*payload)  # type: ignore[misc]
                except Exception:
                    logger.exception("publisher %s failed on a %s", type(publisher).__name__, kind)
