"""The daemon: wires the stages and owns the threads.

capture (each source's own thread or callback) -> ring buffers -> this inference loop (due windows of every
stream, one batched model call, matching, event tracking) -> a bounded queue -> the publisher thread. The
inference loop never touches the network.
"""

from __future__ import annotations

import ctypes
import logging
import math
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np

from clapd.daemon.config import ClapdConfig, DetectionConfig, FileSource
from clapd.daemon.events import EventTracker, StreamClock
from clapd.daemon.inference import AudioModel, LazyTextModel, open_bundle
from clapd.daemon.matcher import Matcher, PromptCache, build_detections
from clapd.daemon.records import DetectionEvent, Scores
from clapd.daemon.ring import Overrun, RingBuffer
from clapd.daemon.sources import Source, SourceStatus, build_source
from clapd.daemon.windows import StreamWindows, WindowCounts

logger = logging.getLogger(__name__)

RING_SECONDS = 30  # capture kept per stream: the longest window plus generous slack for a slow model call
IDLE_WAIT_SECONDS = 0.02  # how long the inference loop sleeps when no window is due
EVENT_QUEUE_SIZE = 10_000
PUBLISH_JOIN_SHARE = 0.5  # of the stop time left given to handing queued events to the publishers
LEVEL_SECONDS = 1.0  # each stream's input level is measured over, and this often
SILENCE_DBFS = -120.0  # the level reported for digital silence


class Publisher(Protocol):
    def start(self) -> None: ...
    def stop(self, timeout: float = 2.0) -> None: ...
    def publish_event(self, event: DetectionEvent) -> None: ...
    def publish_state(self, stream: str, detection: str, on: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class PreparedDetections:
    """Detections with their prompts embedded, ready to be swapped in between two model calls."""

    configs: dict[str, DetectionConfig]
    matcher: Matcher


@dataclass(frozen=True, slots=True)
class StreamStats:
    """One stream's health for metrics and status lines."""

    name: str
    source: SourceStatus
    windows: WindowCounts
    level_dbfs: float  # RMS level of the last second of audio


@dataclass(slots=True)
class _Stream:
    name: str
    ring: RingBuffer
    source: Source
    windows: StreamWindows
    clock: StreamClock
    was_running: bool = True  # the source's state at the last look: a return to "running" re-anchors the clock
    level_dbfs: float = SILENCE_DBFS


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
        self._tracker: EventTracker | None = None
        self._prepare_lock = threading.Lock()  # one prompt embedding at a time (start-up, reloads, control)
        self._pending_lock = threading.Lock()
        self._pending: PreparedDetections | None = None  # swapped in by the inference thread before its next call
        mqtt = config.outputs.mqtt
        self._level_interval = mqtt.level_interval_seconds if mqtt is not None else 0.0
        self._next_level = self._next_publish_level = 0.0
        self.windows_processed = 0
        self.events_published = 0
        self.events_by_kind: Counter[tuple[str, str, str]] = Counter()  # (stream, detection, kind) -> events
        self.on_inference: Callable[[float, int], None] | None = None  # (seconds, windows) after each model call

    @property
    def detections(self) -> dict[str, DetectionConfig]:
        """The detections in force (or about to be: a swap takes effect before the next model call)."""
        with self._pending_lock:
            return dict((self._pending or self._active).configs)

    def load(self) -> None:
        """Models, prompts and warm-up: everything that can fail before audio is opened."""
        manifest = open_bundle(self._bundle_dir)
        self._manifest = manifest
        self._audio = AudioModel(self._bundle_dir, manifest, self._config.model)
        self._text = LazyTextModel(self._bundle_dir, manifest, self._config.model)
        self._prompts = PromptCache(self._text, self._config.state_dir / "prompt-cache", manifest.text.sha256)
        self._active = self.prepare(self._config.detections, self._config.background_prompts)
        self._matcher = self._active.matcher
        self._audio.warm_up()
        logger.info("model ready: %s %s on %s", manifest.source, self._audio.precision, self._audio.providers[0])

    def prepare(self, detections: Mapping[str, DetectionConfig], background: list[str]) -> PreparedDetections:
        """Embed the prompts (from the cache, or with the text model, loaded for this and released after).

        Any thread may call this while the daemon runs: audio keeps flowing meanwhile.
        """
        with self._prepare_lock:
            try:
                built = build_detections(dict(detections), self._prompts)
                matcher = Matcher(built, self._prompts.embed(list(background)), self._manifest.logit_scale)
            finally:
                if self._text.release():
                    _return_freed_memory()
        return PreparedDetections(dict(detections), matcher)

    def swap(self, prepared: PreparedDetections) -> None:
        """Use these detections from the next model call on: events of removed or changed ones end there."""
        with self._pending_lock:
            self._pending = prepared

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
        self._tracker = EventTracker(self._active.configs, clocks, hop)
        for publisher in self._publishers:
            publisher.start()
        self._publisher_thread = threading.Thread(target=self._publish_loop, name="publisher", daemon=True)
        self._publisher_thread.start()
        for stream in self._streams:
            for detection in self._active.configs:
                self._queue_state(stream.name, detection, on=False)  # clears a stale ON left by a crash
            stream.source.start()

    def run(self, stop: threading.Event, heartbeat: Callable[[], None] | None = None) -> None:
        """The inference loop, until `stop` is set or every (finite) source has ended and been processed.

        `heartbeat` is called on every turn (the systemd watchdog): a hung model call stops the pings.
        """
        while not stop.is_set():
            if heartbeat is not None:
                heartbeat()
            self._take_pending()
            self._reanchor_after_outages()
            self._measure_levels()
            due = [w for s in self._streams for w in s.windows.due()]
            if due:
                self._infer(due)
            elif self._all_sources_done():
                break
            else:
                stop.wait(IDLE_WAIT_SECONDS)

    def shutdown(self, timeout: float = 2.0, *, close_events: bool = True) -> None:
        """Stop the sources, end open events (unless the inference loop may still be running: `close_events`
        False), hand everything queued to the publishers and stop them, all within about `timeout` s."""
        deadline = time.monotonic() + timeout
        for stream in self._streams:
            stream.source.stop()
            if close_events and self._tracker is not None:
                for event in self._tracker.close(stream.name, stream.ring.total_written):
                    self._queue_event(event)
        self._put(None)
        if self._publisher_thread is not None:
            self._publisher_thread.join(PUBLISH_JOIN_SHARE * max(0.0, deadline - time.monotonic()))
        for publisher in self._publishers:
            publisher.stop(max(0.1, deadline - time.monotonic()))

    def stream_stats(self) -> list[StreamStats]:
        return [StreamStats(s.name, s.source.status(), s.windows.counts(), s.level_dbfs) for s in self._streams]

    def _take_pending(self) -> None:
        with self._pending_lock:
            prepared, self._pending = self._pending, None
            if prepared is not None:
                self._active = prepared
        if prepared is None:
            return
        assert self._tracker is not None, "start() first"
        before = set(self._tracker.pairs)
        ends = {s.name: s.ring.total_written for s in self._streams}
        for event in self._tracker.update(prepared.configs, ends):
            self._queue_event(event)
        self._matcher = prepared.matcher
        for stream, detection in sorted(set(self._tracker.pairs) - before):
            self._queue_state(stream, detection, on=False)
        logger.info("detections in force: %s", ", ".join(prepared.configs))

    def _measure_levels(self) -> None:
        now = time.monotonic()
        if now < self._next_level:
            return
        self._next_level = now + LEVEL_SECONDS
        for stream in self._streams:
            stream.level_dbfs = _level_dbfs(
                stream.ring, int(LEVEL_SECONDS * self._manifest.sample_rate), stream.level_dbfs
            )
        if self._level_interval > 0 and now >= self._next_publish_level:
            self._next_publish_level = now + self._level_interval
            for stream in self._streams:
                self._put(("level", (stream.name, stream.level_dbfs)))

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
        seconds = time.perf_counter() - started
        if self.on_inference is not None:
            self.on_inference(seconds, len(windows))
        logger.debug("%d windows in %.0f ms", len(windows), 1000 * seconds)

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
        self.events_by_kind[(event.stream, event.detection, event.kind)] += 1
        self._put(("event", event))
        self._queue_state(event.stream, event.detection, on=event.kind == "start")

    def _queue_state(self, stream: str, detection: str, *, on: bool) -> None:
        self._put(("state", (stream, detection, on)))

    def _put(self, item: tuple[str, object] | None) -> None:
        try:
            self._events.put_nowait(item)
        except queue.Full:  # publishers persist to disk: a full queue means the disk itself is stuck
            logger.error("event queue full: dropping %s", "the end marker" if item is None else item[0])

    def _publish_loop(self) -> None:
        while (item := self._events.get()) is not None:
            kind, payload = item
            for publisher in self._publishers:
                try:
                    if kind == "event":
                        publisher.publish_event(payload)  # type: ignore[arg-type]
                        self.events_published += 1
                    elif kind == "state":
                        publisher.publish_state(*payload)  # type: ignore[misc]
                    elif hasattr(publisher, "publish_level"):
                        publisher.publish_level(*payload)  # type: ignore[misc]
                except Exception:
                    logger.exception("publisher %s failed on a %s", type(publisher).__name__, kind)


def _level_dbfs(ring: RingBuffer, n: int, previous: float) -> float:
    """RMS level of the newest `n` samples in dBFS (full scale 1.0); `previous` if they were overwritten meanwhile."""
    n = min(n, ring.total_written - ring.oldest_available)
    if n <= 0:
        return previous
    try:
        samples = ring.read(ring.total_written - n, n)
    except Overrun:
        return previous
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return max(SILENCE_DBFS, 20 * math.log10(rms)) if rms > 0 else SILENCE_DBFS


def _return_freed_memory() -> None:
    """Give the heap that the text model used back to the system: glibc keeps freed memory in the process (the
    full-size model's ~500 MB stayed resident), malloc_trim returns it. Elsewhere there is nothing to do."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
