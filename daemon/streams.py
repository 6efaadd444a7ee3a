"""One configured stream's capture side: its source, ring buffer, windows, clock and input level.

The inference thread looks after each stream between model calls: it re-anchors the clock when capture resumes
after an outage, measures the level, and takes the windows that are due.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from clapd.daemon.events import StreamClock
from clapd.daemon.records import Window
from clapd.daemon.ring import Overrun, RingBuffer
from clapd.daemon.sources import Source, SourceStatus
from clapd.daemon.windows import StreamWindows, WindowCounts

logger = logging.getLogger(__name__)

SILENCE_DBFS = -120.0  # the level reported for digital silence
ENDED_STATES = ("finished", "failed")  # a source in one of these delivers no more audio


@dataclass(frozen=True, slots=True)
class StreamStats:
    """One stream's health for metrics and status lines."""

    name: str
    source: SourceStatus
    windows: WindowCounts
    level_dbfs: float  # RMS level of the last second of audio


@dataclass(slots=True)
class Stream:
    name: str
    ring: RingBuffer
    source: Source
    windows: StreamWindows
    clock: StreamClock
    level_dbfs: float = SILENCE_DBFS
    _was_running: bool = field(default=True, repr=False)  # a return to "running" re-anchors the clock

    def due_windows(self) -> list[Window]:
        return self.windows.due()

    def reanchor_if_resumed(self, utc_now: Callable[[], datetime]) -> None:
        """Audio resumes after an outage with no samples for the time away: anchor the clock anew."""
        running = self.source.status().state == "running"
        if running and not self._was_running:
            self.clock.reanchor(self.ring.total_written, utc_now())
            logger.info("%s: capture resumed; its clock is re-anchored", self.name)
        self._was_running = running

    def measure_level(self, samples: int) -> float:
        """RMS level of the newest `samples` in dBFS (full scale 1.0); kept as it was if they were overwritten."""
        self.level_dbfs = level_dbfs(self.ring, samples, self.level_dbfs)
        return self.level_dbfs

    def ended(self) -> bool:
        """The source delivers no more audio, and every full window of what it delivered has been taken."""
        return (
            self.source.status().state in ENDED_STATES
            and self.windows.next_start + self.windows.window > self.ring.total_written
        )

    def stats(self) -> StreamStats:
        return StreamStats(self.name, self.source.status(), self.windows.counts(), self.level_dbfs)


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
    return max(SILENCE_DBFS, 20 * math.log10(rms)) if rms > 0 else SILENCE_DBFS
