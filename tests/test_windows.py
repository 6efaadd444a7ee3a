"""Windows over a live ring (issue 10, items 3, 6 and 9): what counts as behind, batches per call, corrupt audio
stopped at the ring's input, the level's bounds, a live clock that may not run ahead of the wall clock, and a model
output that is not finite kept away from the event tracker."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from clapd.daemon.config import DetectionConfig
from clapd.daemon.detector import DetectionSet, Detector
from clapd.daemon.events import StreamClock
from clapd.daemon.logs import Throttle
from clapd.daemon.matcher import DetectionPrompts, Matcher
from clapd.daemon.records import Window
from clapd.daemon.ring import SAMPLE_LIMIT, RingBuffer
from clapd.daemon.sources import SourceStatus
from clapd.daemon.streams import AHEAD_TOLERANCE_SECONDS, CEILING_DBFS, SILENCE_DBFS, Stream, level_dbfs
from clapd.daemon.windows import MAX_BATCH, StreamWindows

RATE = 100  # samples per second: small numbers, the same arithmetic as 48 kHz
WINDOW, HOP = 2 * RATE, RATE // 2
RING = 30 * RATE  # the daemon's ring holds 30 s


def windows_over(ring: RingBuffer, **options: object) -> StreamWindows:
    return StreamWindows("s", ring, WINDOW, HOP, WINDOW, **options)


def take_all(windows: StreamWindows, calls: int = 1000) -> list[list[int]]:
    """Every call's window starts until nothing is due."""
    batches = []
    for _ in range(calls):
        due = windows.due()
        if not due:
            break
        batches.append([w.start_sample for w in due])
    return batches


def test_bursts_the_ring_can_hold_lose_no_window_and_come_in_bounded_batches() -> None:
    """Real-time audio in 3 s bursts (6 hops at once) used to lose all but 2 windows of each burst."""
    ring = RingBuffer(RING)
    windows = windows_over(ring)
    rng = np.random.default_rng(0)
    starts = []
    for _ in range(10):
        ring.write(rng.uniform(-0.5, 0.5, 3 * RATE).astype(np.float32))
        batches = take_all(windows)
        assert all(len(batch) <= MAX_BATCH for batch in batches)
        starts += [start for batch in batches for start in batch]
    assert starts == list(range(0, 30 * RATE - WINDOW + 1, HOP))
    assert windows.counts().skipped == 0


def test_a_live_stream_truly_behind_skips_to_its_newest_audio_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="clapd.daemon.windows")
    ring = RingBuffer(RING)
    windows = windows_over(ring, max_batch=3)
    ring.write(np.zeros(28 * RATE, dtype=np.float32))  # more waiting than 3/4 of the ring
    due = windows.due()
    newest = 28 * RATE - WINDOW
    assert [w.start_sample for w in due] == [newest - 2 * HOP, newest - HOP, newest]
    waiting = newest // HOP + 1
    assert windows.counts().skipped == waiting - 3
    ring.write(np.zeros(28 * RATE, dtype=np.float32))  # behind again at once
    assert [w.start_sample for w in windows.due()] == [newest + 28 * RATE - k * HOP for k in (2, 1, 0)]
    second_gap = (28 * RATE - 3 * HOP) // HOP  # from a hop after the last window taken to the newest three
    assert windows.counts().skipped == waiting - 3 + second_gap
    lines = [r.getMessage() for r in caplog.records if "inference is behind" in r.getMessage()]
    assert len(lines) == 1, lines  # the second skip is counted, and reported with the next line (30 s later)


def test_a_ring_kept_larger_for_other_readers_does_not_let_windows_lag_further() -> None:
    ring = RingBuffer(2 * RING)  # enrolment and clips' pre-roll keep more audio than the windows need
    windows = windows_over(ring, max_batch=3, behind_at=int(0.75 * RING))
    ring.write(np.zeros(28 * RATE, dtype=np.float32))  # under 3/4 of this ring, beyond 3/4 of a windows-only ring
    assert windows.due()[-1].start_sample == 28 * RATE - WINDOW  # skipped to the newest, as with a 30 s ring
    assert windows.counts().skipped > 0


def test_a_lossless_stream_is_never_skipped() -> None:
    ring = RingBuffer(RING)
    windows = windows_over(ring, lossless=True)
    ring.write(np.zeros(RING, dtype=np.float32))
    batches = take_all(windows)
    assert [s for batch in batches for s in batch] == list(range(0, RING - WINDOW + 1, HOP))
    assert windows.counts().skipped == 0


def test_the_ring_replaces_corrupt_samples_counts_them_and_remembers_where() -> None:
    ring = RingBuffer(1000, sanitize=True)
    ring.write(np.full(995, 0.25, dtype=np.float32))
    block = np.array([0.5, np.nan, np.inf, -np.inf, 1e30, -5e3, SAMPLE_LIMIT, -0.75, 0.1, 0.2], dtype=np.float32)
    ring.write(block)  # samples 995..1004: split by the ring's end after its fifth
    ring.write(np.array([0.3, np.nan, 0.4], dtype=np.float32))
    got = ring.read(995, 13)
    expected = [0.5, 0, 0, 0, 0, 0, SAMPLE_LIMIT, -0.75, 0.1, 0.2, 0.3, 0, 0.4]
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.float32))
    assert ring.nonfinite_samples == 6
    assert not ring.replaced_within(0, 996)
    assert ring.replaced_within(995, 2) and ring.replaced_within(1000, 1) and ring.replaced_within(1006, 1)
    assert not ring.replaced_within(1001, 5) and not ring.replaced_within(1007, 1)
    raw = RingBuffer(10)  # a ring of raw frames (the microphone's callback writes it) takes what it is given
    raw.write(np.array([np.nan, 2e3], dtype=np.float32))
    assert np.isnan(raw.read(0, 1)[0]) and raw.nonfinite_samples == 0


def test_windows_holding_replaced_samples_are_skipped_and_the_rest_scored() -> None:
    ring = RingBuffer(RING, sanitize=True)
    windows = windows_over(ring)
    audio = np.full(10 * RATE, 0.1, dtype=np.float32)
    audio[5 * RATE] = np.nan  # one bad sample at 5 s
    ring.write(audio)
    starts = [s for batch in take_all(windows) for s in batch]
    held = [s for s in range(0, 10 * RATE - WINDOW + 1, HOP) if s <= 5 * RATE < s + WINDOW]
    assert held and not set(held) & set(starts)
    assert starts == [s for s in range(0, 10 * RATE - WINDOW + 1, HOP) if s not in held]
    counts = windows.counts()
    assert counts.skipped == counts.corrupt == len(held)


def test_the_level_stays_between_silence_and_the_ceiling_whatever_the_samples() -> None:
    ring = RingBuffer(RATE, sanitize=True)
    ring.write(np.full(RATE, 1e30, dtype=np.float32))
    assert level_dbfs(ring, RATE, -50.0) == SILENCE_DBFS  # all replaced by silence, not +600 dBFS
    ring.write(np.concatenate([np.full(RATE // 2, np.nan), np.full(RATE // 2, 0.1)]).astype(np.float32))
    assert level_dbfs(ring, RATE, -50.0) == pytest.approx(20 * math.log10(0.1 / math.sqrt(2)), abs=0.01)
    loud = RingBuffer(RATE)
    loud.write(np.full(RATE, 900.0, dtype=np.float32))
    assert level_dbfs(loud, RATE, -50.0) <= CEILING_DBFS
    raw = RingBuffer(RATE)
    raw.write(np.full(RATE, np.nan, dtype=np.float32))
    assert level_dbfs(raw, RATE, -50.0) == -50.0  # no reading rather than a false one (NaN read as -120 dBFS)


class StillSource:
    """A source whose thread is elsewhere: the test writes the ring itself."""

    name = "s"

    def __init__(self) -> None:
        self.state = "running"

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> SourceStatus:
        return SourceStatus("s", self.state, 0, 0, None, 0, 0)  # type: ignore[arg-type]


def test_a_live_clock_is_re_anchored_when_its_samples_run_ahead_of_the_wall_clock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="clapd.daemon.streams")
    started = datetime(2026, 1, 1, tzinfo=timezone.utc)
    now = started

    def make(lossless: bool) -> Stream:
        ring = RingBuffer(RING)
        return Stream("s", ring, StillSource(), windows_over(ring, lossless=lossless), StreamClock(started, RATE))

    live, file = make(False), make(True)
    for stream in (live, file):
        stream.ring.write(np.zeros(20 * RATE, dtype=np.float32))  # 20 s delivered within 10 s
    now = started + timedelta(seconds=10)
    for stream in (live, file):
        stream.keep_clock(lambda: now)
    assert live.clock.datetime_at(20 * RATE) == now  # the newest sample was captured now, not 10 s from now
    assert live.clock.datetime_at(0) == now - timedelta(seconds=20)
    assert file.clock.datetime_at(20 * RATE) == started + timedelta(seconds=20)  # a file's offsets are its own
    assert live.stats().clock_reanchors == 1 and file.stats().clock_reanchors == 0
    # Within the tolerance, or behind the wall clock (a source that delivers late, in bursts): left alone.
    live.ring.write(np.zeros(int(AHEAD_TOLERANCE_SECONDS * RATE), dtype=np.float32))
    live.keep_clock(lambda: now)
    now += timedelta(seconds=30)
    live.keep_clock(lambda: now)
    assert live.stats().clock_reanchors == 1
    live.ring.write(np.zeros(40 * RATE, dtype=np.float32))
    live.keep_clock(lambda: now)
    assert live.stats().clock_reanchors == 2
    assert sum("faster than real time" in r.getMessage() for r in caplog.records) == 1  # the second is held back


def test_throttle_reports_at_most_once_per_interval_with_the_count() -> None:
    now = [0.0]
    throttle = Throttle(30.0, clock=lambda: now[0])
    assert throttle.add(3) == 3
    assert [throttle.add() for _ in range(5)] == [0] * 5
    now[0] = 29.9
    assert throttle.add(2) == 0
    now[0] = 30.0
    assert throttle.add() == 8


class HalfBrokenModel:
    """An audio model that overflows (NaN) on windows whose first sample is negative, as fp16 can on absurd audio."""

    def embed(self, windows: np.ndarray) -> np.ndarray:
        out = np.tile(np.eye(4, dtype=np.float32)[0], (len(windows), 1))
        out[windows[:, 0] < 0] = np.nan
        return out


def test_a_window_the_model_cannot_embed_is_neither_scored_nor_tracked() -> None:
    """A NaN score compares false with every threshold, so it started every detection and never ended it."""
    config = DetectionConfig(prompts=["x"], threshold_on=0.9, threshold_off=0.5, smoothing_windows=1)
    prompts = DetectionPrompts("x", np.eye(4, dtype=np.float32)[1], np.zeros((0, 4), dtype=np.float32), None)
    matcher = Matcher([prompts], np.eye(4, dtype=np.float32)[:1], 100.0)
    clock = StreamClock(datetime(2026, 1, 1, tzinfo=timezone.utc), RATE)
    detector = Detector(HalfBrokenModel(), DetectionSet({"x": config}, matcher), {"s": clock}, HOP)
    windows = [
        Window("s", k * HOP, k * HOP + WINDOW, np.full(WINDOW, -0.1 if k % 2 else 0.1, np.float32)) for k in range(4)
    ]
    found = detector.process(windows)
    assert [s.start_sample for s in found.scores] == [0, 2 * HOP]
    assert found.events == [] and detector.unscored == 2
