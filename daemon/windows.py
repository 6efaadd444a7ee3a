"""How audio becomes model windows: repeat-padding to the model's input, and per-stream sliding windows over a ring
buffer. numpy only: the export's verification pads clips here too.

A live stream's windows are all run as long as the ring still holds their audio: a source that delivers in bursts,
or a model call that takes a while, only delays them. Only when the audio waiting for windows fills `BEHIND_SHARE`
of the ring (the rest is room for the writer while a batch is scored) is inference truly behind; then the stream
skips to its newest audio, counted and logged (at most every `REPEAT_SECONDS`). Each call hands out at most
`max_batch` windows per stream, so a stream with a backlog cannot starve the others. Windows holding samples the
ring replaced as corrupt (`RingBuffer.replaced_within`) are skipped and counted, never scored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from clapd.daemon.logs import Throttle
from clapd.daemon.records import Window
from clapd.daemon.ring import Overrun

logger = logging.getLogger(__name__)

MAX_BATCH = 4  # windows handed out per stream per call
BEHIND_SHARE = 0.75  # of the ring: audio waiting beyond this means inference is behind a live source


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

    capacity: int
    total_written: int

    def read(self, start_sample: int, n: int) -> np.ndarray: ...

    def replaced_within(self, start_sample: int, n: int) -> bool: ...

    def mark_consumed(self, sample: int) -> None: ...


@dataclass(frozen=True, slots=True)
class WindowCounts:
    produced: int  # windows handed out to be scored
    skipped: int  # windows never scored: inference was behind, the ring had moved on, or their audio was corrupt
    corrupt: int = 0  # of those skipped: windows holding samples the ring replaced (NaN, infinite, absurd)
    gated: int = 0  # of those produced: windows below the stream's level gate, scored 0 without the model


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
        max_batch: int = MAX_BATCH,
        behind_at: int | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.stream = stream
        self._ring = ring
        self._window, self._hop, self._model_window = window, hop, model_window
        # A source that waits for the reader (a file read as fast as possible) is never skipped.
        self._lossless = lossless
        self._max_batch = max_batch
        # Samples waiting from the next window's start that mean inference is behind: by default a share of the ring;
        # a ring kept larger for other readers (enrolment, clips' pre-roll) must not let windows lag further.
        self._behind_at = int(BEHIND_SHARE * ring.capacity) if behind_at is None else min(behind_at, ring.capacity)
        self._next_start = 0
        self._produced = 0
        self._skipped = 0
        self._corrupt = 0
        self._behind_log = Throttle()

    @property
    def next_start(self) -> int:
        return self._next_start

    @property
    def window(self) -> int:
        return self._window

    @property
    def lossless(self) -> bool:
        """The source waits for the reader (a file read as fast as possible): its audio is not live."""
        return self._lossless

    def due(self) -> list[Window]:
        """Up to `max_batch` windows whose audio has all been written, the oldest first; skips to the newest audio
        when a live stream's waiting audio nears what the ring holds."""
        written = self._ring.total_written
        if not self._lossless and written - self._next_start > self._behind_at:
            self._skip_to_newest(written)
        windows = []
        while self._next_start + self._window <= written and len(windows) < self._max_batch:
            window = self._read(self._next_start)
            self._next_start += self._hop
            if window is not None:
                windows.append(window)
        self._ring.mark_consumed(self._next_start)  # a waiting lossless writer may go on
        return windows

    def counts(self) -> WindowCounts:
        return WindowCounts(self._produced, self._skipped, self._corrupt)

    def _skip_to_newest(self, written: int) -> None:
        """Leave only the newest `max_batch` full windows waiting."""
        waiting = (written - self._window - self._next_start) // self._hop + 1
        if waiting > self._max_batch:
            self._next_start += (waiting - self._max_batch) * self._hop
            self._behind(waiting - self._max_batch)

    def _behind(self, windows: int) -> None:
        self._skipped += windows
        if reported := self._behind_log.add(windows):
            logger.warning(
                "%s: inference is behind; skipped %d windows to keep up (%d in all)",
                self.stream,
                reported,
                self._skipped,
            )

    def _read(self, start: int) -> Window | None:
        if self._ring.replaced_within(start, self._window):  # asked before reading: see RingBuffer.replaced_within
            self._skipped += 1
            self._corrupt += 1
            return None
        try:
            samples = self._ring.read(start, self._window)
        except Overrun:  # overwritten before it was read: the ring counts the overrun
            self._behind(1)
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
