"""How audio becomes model windows: repeat-padding to the model's input, and per-stream sliding windows over a ring
buffer with bounded latency when inference falls behind. numpy only: the export's verification pads clips here too."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from clapd.daemon.records import Window
from clapd.daemon.ring import Overrun

logger = logging.getLogger(__name__)


def repeat_pad(clip: np.ndarray, window_samples: int) -> np.ndarray:
    """Fit a mono clip to the model's fixed input the way CLAP's reference does ("repeatpad").

    A shorter clip is tiled a whole number of times, then zero-padded to `window_samples`; a longer one is
    rejected, because the reference's answer there is a random crop.
    """
    if clip.ndim != 1:
        raise ValueError(f"expected a mono clip [samples], got shape {clip.shape}")
    length = clip.shape[0]
    if length == 0:
        raise ValueError("cannot pad an empty clip")
    if length > window_samples:
        raise ValueError(f"clip of {length} samples is longer than the model's window of {window_samples}")
    tiled = np.tile(clip, window_samples // length)
    return np.pad(tiled, (0, window_samples - tiled.shape[0])).astype(np.float32, copy=False)


class SampleSource(Protocol):
    """What the windower needs of a ring buffer (`clapd.daemon.ring.RingBuffer`)."""

    total_written: int

    def read(self, start_sample: int, n: int) -> np.ndarray: ...

    def mark_consumed(self, sample: int) -> None: ...


@dataclass(frozen=True, slots=True)
class WindowCounts:
    produced: int
    skipped: int  # windows never run because inference was behind or the ring had moved on


class StreamWindows:
    """Windows of `window` samples every `hop` samples, repeat-padded to the model's input length."""

    def __init__(
        self,
        stream: str,
        ring: SampleSource,
        window: int,
        hop: int,
        model_window: int,
        *,
        lossless: bool = False,
        max_backlog: int = 2,
    ) -> None:
        self.stream = stream
        self._ring = ring
        self._window, self._hop, self._model_window = window, hop, model_window
        # Live audio: when behind, keep only this many due windows, so latency stays within a few hops. A source
        # that waits for the reader (a file read as fast as possible) is never skipped: it is handed out in
        # batches of at most this many instead.
        self._lossless = lossless
        self._max_backlog = max_backlog
        self._next_start = 0
        self._produced = 0
        self._skipped = 0

    @property
    def next_start(self) -> int:
        return self._next_start

    @property
    def window(self) -> int:
        return self._window

    def due(self) -> list[Window]:
        """Every window whose audio has all been written, the oldest first; skips ahead when far behind."""
        written = self._ring.total_written
        waiting = (written - self._window - self._next_start) // self._hop + 1 if written >= self._window else 0
        if waiting > self._max_backlog and not self._lossless:
            self._skip(waiting - self._max_backlog)
        windows = []
        while self._next_start + self._window <= written and len(windows) < self._max_backlog:
            window = self._read(self._next_start)
            self._next_start += self._hop
            if window is not None:
                windows.append(window)
        self._ring.mark_consumed(self._next_start)  # a waiting lossless writer may go on
        return windows

    def counts(self) -> WindowCounts:
        return WindowCounts(self._produced, self._skipped)

    def _skip(self, windows: int) -> None:
        self._skipped += windows
        self._next_start += windows * self._hop
        logger.warning("%s: inference is behind; skipped %d windows (%d in all)", self.stream, windows, self._skipped)

    def _read(self, start: int) -> Window | None:
        try:
            samples = self._ring.read(start, self._window)
        except Overrun:  # overwritten before it was read: the ring counts the overrun
            self._skipped += 1
            return None
        self._produced += 1
        return Window(self.stream, start, start + self._window, _model_input(samples, self._model_window))


def clip_windows(stream: str, audio: np.ndarray, window: int, hop: int, model_window: int) -> list[Window]:
    """A whole recording's windows as a live stream gets them: a full window every hop from its start (audio
    shorter than one window gives one repeat-padded window of all of it)."""
    if audio.size == 0:
        raise ValueError("no audio")
    starts = range(0, max(audio.size - window, 0) + 1, hop)
    return [
        Window(
            stream, start, min(start + window, audio.size), _model_input(audio[start : start + window], model_window)
        )
        for start in starts
    ]


def _model_input(samples: np.ndarray, model_window: int) -> np.ndarray:
    padded = samples if samples.size == model_window else repeat_pad(samples, model_window)
    return padded.astype(np.float32, copy=False)
