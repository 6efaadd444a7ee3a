"""The daemon's threads and their start/stop order.

    capture (each source's own thread or callback) -> ring buffers
    inference thread: every stream's due windows -> one `Detector.process` call -> output records
    outputs' thread:  output records, in order -> every `Output`

The inference thread never touches the network; what crosses to the outputs' thread are typed records
(`clapd.daemon.records.OutputRecord`) on a bounded queue. Detections are swapped in by the inference thread
between two model calls, whichever thread asked for the swap.

A source that is lost (a dead or stalled pipe command, a microphone gone: `SourceStatus.outages` grows) delivers no
windows, so nothing would end its stream's events: once the windows of the audio it delivered before the outage
have been taken, the inference thread ends that stream's events in progress where its audio stopped, as at stop.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime, timezone

from clapd.daemon.anomaly.monitor import AnomalyStatus
from clapd.daemon.config import DetectionConfig
from clapd.daemon.control import ControlError
from clapd.daemon.detector import DetectionSet, Detector
from clapd.daemon.enrol import Clip, ClipRequest, EventSpan, cut_clip
from clapd.daemon.output import Output, Recorder, deliver
from clapd.daemon.records import DetectionEvent, LevelReading, OutputRecord, Scores, StateChange, Window
from clapd.daemon.streams import Stream, StreamStats

logger = logging.getLogger(__name__)

IDLE_WAIT_SECONDS = 0.02  # how long the inference loop sleeps when no window is due
RECORD_QUEUE_SIZE = 10_000  # records between the inference thread and the outputs' thread
INFERENCE_JOIN_SHARE = 0.4  # of the stop time given to a model call in progress
CANCEL_JOIN_SECONDS = 1.0  # a cancelled call ends at onnxruntime's next operator: milliseconds
DELIVERY_JOIN_SHARE = 0.5  # of the stop time left given to handing queued records to the outputs
LEVEL_SECONDS = 1.0  # each stream's input level is measured over, and this often


class RunnerState(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Runner:
    """Starts, runs and stops the streams, the inference thread and the outputs around one `Detector`."""

    def __init__(
        self,
        streams: list[Stream],
        detector: Detector,
        outputs: list[Output],
        *,
        sample_rate: int,
        level_interval: float = 0.0,
        utc_now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        recorders: Sequence[Recorder] = (),
        cancel_model: Callable[[], None] = lambda: None,
    ) -> None:
        self.state = RunnerState.CREATED
        self._cancel_model = cancel_model  # ends a model call in progress when stopping cannot wait for it
        self.recorders = list(recorders)  # clips, history: fed by the inference thread, each writing on its own
        self._recorder_threads = [threading.Thread(target=r.work, name=r.name, daemon=True) for r in recorders]
        self._streams = streams
        self._detector = detector
        self._outputs = outputs
        self._sample_rate = sample_rate
        self._level_interval = level_interval  # s between published levels; 0: never
        self._utc_now = utc_now
        self._records: queue.Queue[OutputRecord | None] = queue.Queue(RECORD_QUEUE_SIZE)
        self._stop = threading.Event()
        self._pending_lock = threading.Lock()
        self._pending: DetectionSet | None = None  # swapped in by the inference thread before its next call
        self._clip_requests: list[tuple[ClipRequest, Future[Clip]]] = []  # under _pending_lock; cut between calls
        self._last_events: dict[tuple[str, str], EventSpan] = {}  # (stream, detection) -> its last event (false_alarm)
        self._events_started = 0
        self._rebaselines: list[tuple[str, float]] = []  # (stream, seconds) re-baselines asked for, under the lock
        self._reload_banks = False  # under the lock: look for banks stored by another process before the next call
        self._inference = threading.Thread(target=self._run_inference, name="inference", daemon=True)
        self._delivery = threading.Thread(target=self._deliver_records, name="outputs", daemon=True)
        self._heartbeat: Callable[[], None] = lambda: None
        self._next_level = self._next_published_level = 0.0
        self._outages_ended = {stream.name: 0 for stream in streams}  # outages whose open events have been ended
        self.crashed = False  # the inference loop died of an exception
        self.windows_processed = 0
        self.events_by_kind: Counter[tuple[str, str, str]] = Counter()  # (stream, detection, kind) -> events
        self.on_inference: Callable[[float, int], None] | None = None  # (seconds, windows) after each model call

    @property
    def detections(self) -> dict[str, DetectionConfig]:
        """The detections in force (or about to be: a swap takes effect before the next model call)."""
        with self._pending_lock:
            return self._pending.configs if self._pending is not None else self._detector.detections

    @property
    def tracked_detections(self) -> dict[str, DetectionConfig]:
        """The detections in force with their calibrated thresholds in place of `auto` (what a view draws)."""
        with self._pending_lock:
            return self._pending.tracked if self._pending is not None else self._detector.tracked

    def start(self, heartbeat: Callable[[], None] | None = None) -> None:
        """Outputs, then capture, then inference. `heartbeat` is called on every turn of the inference loop (the
        systemd watchdog): a hung model call stops the pings."""
        if self.state is not RunnerState.CREATED:
            raise RuntimeError(f"a runner starts once; this one is {self.state.value}")
        self.state = RunnerState.STARTING
        self._heartbeat = heartbeat or self._heartbeat
        for output in self._outputs:
            output.start()
        self._delivery.start()
        for thread in self._recorder_threads:
            thread.start()
        for stream, detection in self._detector.pairs:
            self._put(StateChange(stream, detection, on=False))  # clears a stale ON left by a crash
        for stream in self._streams:
            stream.source.start()
        self._inference.start()
        self.state = RunnerState.RUNNING

    def swap(self, detections: DetectionSet) -> None:
        """Use these detections from the next model call on: events of removed or changed ones end there."""
        with self._pending_lock:
            self._pending = detections

    def anomaly_status(self) -> list[AnomalyStatus]:
        """Each monitored stream's last anomaly score, bank size and bank updates (for metrics)."""
        return [anomaly.status() for anomaly in self._detector.anomalies.values()]

    def rebaseline(self, stream: str, seconds: float) -> None:
        """Learn `stream`'s normal bank anew from its next `seconds` of audio, from the next model call on;
        ValueError for a stream without anomaly monitoring."""
        if stream not in self._detector.anomalies:
            raise ValueError(f"stream {stream!r} has no anomaly monitoring")
        with self._pending_lock:
            self._rebaselines.append((stream, seconds))

    def reload_banks(self) -> None:
        """From the next model call on, streams with anomaly monitoring take a bank another process stored."""
        with self._pending_lock:
            self._reload_banks = True

    def running(self) -> bool:
        """The inference loop goes on: False once stopped, crashed, or every (finite) source has been processed."""
        return self._inference.is_alive()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop inference and capture, end open events, hand what is queued to the outputs and stop them, all
        within about `timeout` s. Calling it again does nothing."""
        if self.state in (RunnerState.STOPPING, RunnerState.STOPPED):
            return
        self.state = RunnerState.STOPPING
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._inference.is_alive():
            self._inference.join(INFERENCE_JOIN_SHARE * timeout)  # a model call in progress finishes first
        if self._inference.is_alive():  # a long call (a big batch after falling behind): its windows are dropped
            logger.warning(
                "stopping: the model call in progress is cancelled (it ran past %.1f s)", INFERENCE_JOIN_SHARE * timeout
            )
            self._cancel_model()
            self._inference.join(CANCEL_JOIN_SECONDS)
        close_events = not self._inference.is_alive()  # else the loop might still feed the tracker
        for stream in self._streams:
            stream.source.stop()
            if close_events:
                stream.keep_clock(self._utc_now)  # audio delivered since the last turn may have run ahead
                for event in self._detector.close(stream.name, stream.ring.total_written):
                    self._put_event(event)
        self._finish_recorders(close_events, deadline)
        self._put(None)
        if self._delivery.is_alive():
            self._delivery.join(DELIVERY_JOIN_SHARE * max(0.0, deadline - time.monotonic()))
        for output in self._outputs:
            output.stop(max(0.1, deadline - time.monotonic()))
        self.state = RunnerState.STOPPED

    def _finish_recorders(self, copy_audio: bool, deadline: float) -> None:
        """The last audio copied (when inference has stopped: the rings have no other reader), the rest written."""
        for recorder in self.recorders:
            if copy_audio:
                recorder.turn()
            recorder.finish()
        for thread in self._recorder_threads:
            thread.join(max(0.1, DELIVERY_JOIN_SHARE * (deadline - time.monotonic())))
        for recorder in self.recorders:
            logger.info("%s: %s", recorder.name, ", ".join(f"{k} {v}" for k, v in recorder.counters().items()))

    def stream_stats(self) -> list[StreamStats]:
        """Each stream's health, with the windows its level gate kept from the model (counted by the Detector)."""
        stats = [stream.stats() for stream in self._streams]
        gated = dict(self._detector.gated)
        return [
            dataclasses.replace(s, windows=dataclasses.replace(s.windows, gated=gated.get(s.name, 0))) for s in stats
        ]

    # --- the inference thread ---

    def _run_inference(self) -> None:
        try:
            self._infer_until_stopped()
        except Exception:
            if self.state is RunnerState.STOPPING:  # the model call cancelled by stop()
                logger.info("the model call in progress was cancelled at stop")
                return
            logger.exception("the inference loop failed; stopping")  # systemd restarts us (Restart=on-failure)
            self.crashed = True

    def _infer_until_stopped(self) -> None:
        """Until stopped, or until every (finite) source has ended and been processed."""
        while not self._stop.is_set():
            self._heartbeat()
            self._take_pending()
            self._serve_clips()
            for recorder in self.recorders:
                recorder.turn()  # audio for clips, copied between model calls
            self._measure_levels()
            due = self._due_windows()
            for stream in self._streams:
                stream.keep_clock(self._utc_now)  # after taking the windows: the anchor is at or past all of them
            if due:
                self._infer(due)
            elif all(stream.ended() for stream in self._streams):
                return
            else:
                self._stop.wait(IDLE_WAIT_SECONDS)

    def _due_windows(self) -> list[Window]:
        """Every stream's due windows; a stream whose source had an outage, with no window left from before it,
        has its events in progress ended where its audio stopped."""
        due = []
        for stream in self._streams:
            outages = stream.source.status().outages  # read first: a source counts an outage after its last audio
            windows = stream.due_windows()
            if not windows and outages > self._outages_ended[stream.name]:
                self._outages_ended[stream.name] = outages
                for event in self._detector.close(stream.name, stream.ring.total_written):
                    logger.info("%s: %s ended by the outage of its source", stream.name, event.detection)
                    self._put_event(event)
            due.extend(windows)
        return due

    def _infer(self, windows: list) -> None:
        started = time.perf_counter()
        found = self._detector.process(windows)
        if any(output.wants_scores for output in self._outputs):
            for scores in found.scores:
                self._put(self._dated(scores))
        for event in found.events:
            self._put_event(event)
        for recorder in self.recorders:
            recorder.record(found)
        for reading in found.anomalies:
            if reading.due:
                clock = next(s.clock for s in self._streams if s.name == reading.stream)
                self._put(dataclasses.replace(reading, end_utc=clock.utc(reading.end_sample)))
        self.windows_processed += len(windows)
        seconds = time.perf_counter() - started
        if self.on_inference is not None:
            self.on_inference(seconds, len(windows))
        logger.debug("%d windows in %.0f ms", len(windows), 1000 * seconds)

    def _dated(self, scores: Scores) -> Scores:
        """The scores with their window's UTC (the clock as the events are dated), the rate and the stream's level."""
        stream = next(s for s in self._streams if s.name == scores.stream)
        return dataclasses.replace(
            scores,
            start_utc=stream.clock.utc(scores.start_sample),
            sample_rate=self._sample_rate,
            level_dbfs=stream.level_dbfs if stream.level_measured else None,
        )

    def _take_pending(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, None
            rebaselines, self._rebaselines = self._rebaselines, []
            reload_banks, self._reload_banks = self._reload_banks, False
        if reload_banks:
            for event in self._detector.reload_banks({s.name: s.ring.total_written for s in self._streams}):
                self._put_event(event)
        for stream in self._streams:
            for name, seconds in rebaselines:
                if name == stream.name:
                    for event in self._detector.rebaseline(name, seconds, stream.ring.total_written):
                        self._put_event(event)
        if pending is None:
            return
        swap = self._detector.replace(pending, {s.name: s.ring.total_written for s in self._streams})
        for event in swap.ended:
            self._put_event(event)
        for stream, detection in swap.new_pairs:
            self._put(StateChange(stream, detection, on=False))
        for recorder in self.recorders:
            recorder.detections_changed(pending.configs)
        logger.info("detections in force: %s", ", ".join(pending.configs))

    def _measure_levels(self) -> None:
        now = time.monotonic()
        if now < self._next_level:
            return
        self._next_level = now + LEVEL_SECONDS
        for stream in self._streams:
            stream.measure_level(int(LEVEL_SECONDS * self._sample_rate))
        if self._level_interval > 0 and now >= self._next_published_level:
            self._next_published_level = now + self._level_interval
            for stream in self._streams:
                if stream.level_measured:  # none before its first audio: a false -120 dBFS at every start
                    self._put(LevelReading(stream.name, stream.level_dbfs))

    def clip(self, request: ClipRequest, timeout: float) -> Clip:
        """A copy of a stream's audio (`clapd.daemon.enrol`), cut by the inference thread, the rings' one reader,
        between two model calls; `ControlError` with the reason when there is none, or none within `timeout` s."""
        if not self.running():
            raise ControlError(["(daemon): the inference loop has stopped: no audio to take"])
        future: Future[Clip] = Future()
        with self._pending_lock:
            self._clip_requests.append((request, future))
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()  # not cut yet: the inference thread skips it
            raise ControlError([f"(daemon): the inference thread did not cut the audio within {timeout:g} s"]) from None

    def _serve_clips(self) -> None:
        with self._pending_lock:
            requests, self._clip_requests = self._clip_requests, []
        streams = {stream.name: stream for stream in self._streams}
        for request, future in requests:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(cut_clip(request, streams, self._last_events))
                except Exception as e:  # ControlError, the reason there is no such audio, goes to the requester
                    future.set_exception(e)

    def _remember(self, event: DetectionEvent) -> None:
        """Each (stream, detection)'s last event, for a false alarm's audio."""
        key = (event.stream, event.detection)
        if event.kind == "start":
            self._events_started += 1
            self._last_events[key] = EventSpan(
                event.event_id, event.stream, event.detection, event.start_sample, None, self._events_started
            )
        elif (last := self._last_events.get(key)) is not None and last.event_id == event.event_id:
            self._last_events[key] = dataclasses.replace(last, end_sample=event.end_sample)

    def _put_event(self, event: DetectionEvent) -> None:
        for recorder in self.recorders:
            event = recorder.on_event(event)  # an end gets its clip's path
        self._remember(event)
        self.events_by_kind[(event.stream, event.detection, event.kind)] += 1
        self._put(event)
        self._put(StateChange(event.stream, event.detection, on=event.kind == "start"))

    def _put(self, record: OutputRecord | None) -> None:
        try:
            self._records.put_nowait(record)
        except queue.Full:  # outputs spool to disk: a full queue means the disk itself is stuck
            logger.error("output record queue full: dropping %s", type(record).__name__)

    # --- the outputs' thread ---

    def _deliver_records(self) -> None:
        while (record := self._records.get()) is not None:
            for output in self._outputs:
                if isinstance(record, Scores) and not output.wants_scores:
                    continue
                try:
                    deliver(output, record)
                except Exception:
                    logger.exception("output %s failed on a %s", output.name, type(record).__name__)
