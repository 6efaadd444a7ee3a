"""One configured stream's capture side: its source, ring buffer, windows, clock and input level.

The inference thread looks after each stream between model calls: it takes the windows that are due, keeps the
clock in step (re-anchored when capture resumes after an outage, and when a live source's samples run ahead of the
wall clock: a source delivering faster than real time would otherwise date its events in the future), measures the
level, and reports corrupt audio the ring replaced (rate-limited: the capture side never logs).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from clapd.daemon.events import StreamClock
from clapd.daemon.logs import Throttle
from clapd.daemon.records import Window
from clapd.daemon.ring import SAMPLE_LIMIT, Overrun, RingBuffer
from clapd.daemon.sources import Source, SourceStatus
from clapd.daemon.windows import StreamWindows, WindowCounts

logger = logging.getLogger(__name__)

SILENCE_DBFS = -120.0  # the level reported for digital silence
CEILING_DBFS = 20 * math.log10(SAMPLE_LIMIT)  # +60 dBFS: no level above what the ring lets through
ENDED_STATES = ("finished", "failed")  # a source in one of these delivers no more audio
AHEAD_TOLERANCE_SECONDS = 1.0  # a live stream's newest sample may be dated this far past the wall clock


@dataclass(frozen=True, slots=True)
class StreamStats:
    """One stream's health for metrics and status lines."""

    name: str
    source: SourceStatus
    windows: WindowCounts
    level_dbfs: float  # RMS level of the last second of audio
    nonfinite_samples: int = 0  # samples replaced by 0 on entering the ring: NaN, infinite or beyond SAMPLE_LIMIT
    clock_reanchors: int = 0  # times the clock was re-anchored because the source ran ahead of the wall clock


@dataclass(slots=True)
class Stream:
    name: str
    ring: RingBuffer
    source: Source
    windows: StreamWindows
    clock: StreamClock
    level_dbfs: float = SILENCE_DBFS  # SILENCE_DBFS until measured
    level_measured: bool = False  # a level was measured on audio this stream received: only then is it published
    _was_running: bool = field(default=True, repr=False)  # a return to "running" re-anchors the clock
    _reanchors: int = field(default=0, repr=False)  # re-anchored because the source ran ahead of the wall clock
    _nonfinite_seen: int = field(default=0, repr=False)  # the ring's count when last reported
    _ahead_log: Throttle = field(default_factory=Throttle, repr=False)
    _nonfinite_log: Throttle = field(default_factory=Throttle, repr=False)

    def due_windows(self) -> list[Window]:
        self._report_nonfinite()
        return self.windows.due()

    def keep_clock(self, utc_now: Callable[[], datetime]) -> None:
        """Re-anchor the clock (newest sample = now) when capture resumes after an outage (no samples came for the
        time away), or when a live source's newest sample would be dated past the wall clock by more than
        AHEAD_TOLERANCE_SECONDS (it delivers faster than real time: no sample can have been captured in the future)."""
        running = self.source.status().state == "running"
        if running and not self._was_running:
            self.clock.reanchor(self.ring.total_written, utc_now())
            logger.info("%s: capture resumed; its clock is re-anchored", self.name)
        elif not self.windows.lossless:
            now = utc_now()
            ahead = (self.clock.datetime_at(self.ring.total_written) - now).total_seconds()
            if ahead > AHEAD_TOLERANCE_SECONDS:
                self.clock.reanchor(self.ring.total_written, now)
                self._reanchors += 1
                if reported := self._ahead_log.add():
                    logger.warning(
                        "%s: the source delivers audio faster than real time (%.1f s ahead of the wall clock); its "
                        "clock was re-anchored to now %d times (%d in all)",
                        self.name,
                        ahead,
                        reported,
                        self._reanchors,
                    )
        self._was_running = running

    def measure_level(self, samples: int) -> float | None:
        """RMS level of the newest `samples` (at most) in dBFS (full scale 1.0); kept as it was if they were
        overwritten; None until the stream has received audio to measure (no reading rather than a false one)."""
        measured = level_dbfs(self.ring, samples, math.nan)
        if not math.isnan(measured):
            self.level_dbfs, self.level_measured = measured, True
        return self.level_dbfs if self.level_measured else None

    def ended(self) -> bool:
        """The source delivers no more audio, and every full window of what it delivered has been taken."""
        return (
            self.source.status().state in ENDED_STATES
            and self.windows.next_start + self.windows.window > self.ring.total_written
        )

    def stats(self) -> StreamStats:
        return StreamStats(
            self.name,
            self.source.status(),
            self.windows.counts(),
            self.level_dbfs,
            self.ring.nonfinite_samples,
            self._reanchors,
        )

    def _report_nonfinite(self) -> None:
        count = self.ring.nonfinite_samples
        if count == self._nonfinite_seen:
            return
        new, self._nonfinite_seen = count - self._nonfinite_seen, count
        if reported := self._nonfinite_log.add(new):
            logger.warning(
                "%s: %d samples were NaN, infinite or beyond +-%g (corrupt audio) and were replaced by silence "
                "(%d in all); windows holding them are skipped",
                self.name,
                reported,
                SAMPLE_LIMIT,
                count,
            )


def level_dbfs(ring: RingBuffer, n: int, previous: float) -> float:
    """RMS level of the newest `n` samples in dBFS (full scale 1.0); `previous` if they were overwritten meanwhile."""
    n = min(n, ring.total_written - ring.oldest_available)
    if n <= 0:
        return previous
    try:
        samples = ring.read(ring.total_written - n, n)
    except Overrun:
        return previous
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    if not math.isfinite(rms):  # a ring that does not sanitize may hold NaN: no reading rather than a false one
        return previous
    return min(CEILING_DBFS, max(SILENCE_DBFS, 20 * math.log10(rms))) if rms > 0 else SILENCE_DBFS
