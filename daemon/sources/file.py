"""A sound file (wav, flac, ogg: whatever libsndfile reads) played into a stream's ring.

Paced (`realtime: true`) it behaves like a live source: a block is written once the clock says its last sample has
been "heard", so the daemon sees the file at its real speed. The clock is passed in, so tests can run it fast.
Unpaced it is read as fast as the reader takes it and never faster: before each write the source waits until the
ring has room that the reader has released (`RingBuffer.mark_consumed`), so no sample of the file is ever lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from clapd.daemon.config import FileSource
from clapd.daemon.resample import Conditioner
from clapd.daemon.ring import RingBuffer
from clapd.daemon.sources import Backoff, SourceError, SourceStatus, StatusTracker

logger = logging.getLogger(__name__)

BLOCK_SECONDS = 0.1  # audio read and written per step
PACE_POLL_SECONDS = 0.05  # longest real sleep while waiting for the clock (a fast test clock needs short ones)
SPACE_POLL_SECONDS = 0.1  # longest wait for ring space before checking for stop()
JOIN_SECONDS = 5.0  # how long stop() waits for the thread


class FileInput:
    """Plays one file into a ring at `sample_rate` (Hz, the model's): paced by `clock` (seconds, monotonic) or
    lossless as fast as possible."""

    def __init__(
        self,
        name: str,
        config: FileSource,
        ring: RingBuffer,
        sample_rate: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self.ring = ring
        self.sample_rate = sample_rate
        self.finished = threading.Event()  # set when the file has ended (never, when looping)
        self._config = config
        self._clock = clock
        self._backoff = backoff or Backoff(1.0, 30.0)
        self._status = StatusTracker(name)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._position = 0  # frames of the file read so far in this pass
        self._delivered = 0  # samples at sample_rate written to the ring
        self._t0 = 0.0
        self._conditioner: Conditioner | None = None

    def start(self) -> None:
        rate, channels = self._probe(self._config.path)
        self._conditioner = Conditioner(rate, channels, self._config.channel, out_rate=self.sample_rate)
        block_out = int(BLOCK_SECONDS * self.sample_rate) + 1024  # one block plus what the resampler may release late
        if self.ring.capacity < 4 * block_out:
            raise SourceError(f"{self.name}: the ring ({self.ring.capacity} samples) is too small for file blocks")
        self._t0 = self._clock()
        self._status.set_state("running")
        self._thread = threading.Thread(target=self._run, name=f"clapd-file-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN_SECONDS)
        if self._status.state not in ("finished", "failed"):
            self._status.set_state("stopped")

    def status(self) -> SourceStatus:
        return self._status.snapshot(self.ring.overruns, self._delivered)

    def _probe(self, path: Path) -> tuple[int, int]:
        """The file's (sample rate in Hz, channels), or a `SourceError` saying what is wrong with it."""
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, OSError) as e:
            raise SourceError(f"{self.name}: cannot read sound file {path}: {e}") from e
        if info.frames == 0:
            raise SourceError(f"{self.name}: sound file {path} holds no audio")
        channel = self._config.channel
        if channel is not None and channel >= info.channels:
            raise SourceError(f"{self.name}: channel {channel} requested, {path} has {info.channels} (from 0)")
        return int(info.samplerate), int(info.channels)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._play()
                return
            except Exception as e:
                logger.exception("%s: reading %s failed at frame %d", self.name, self._config.path, self._position)
                self._status.outage(str(e))
                if self._stop.wait(self._backoff.next_delay()):
                    return
                self._status.restarted()

    def _play(self) -> None:
        assert self._conditioner is not None
        with sf.SoundFile(str(self._config.path)) as f:
            f.seek(self._position)
            self._status.set_state("running")
            frames_per_block = max(1, int(BLOCK_SECONDS * f.samplerate))
            while not self._stop.is_set():
                frames = f.read(frames_per_block, dtype="float32", always_2d=True)
                if frames.shape[0] == 0:
                    if not self._config.loop:
                        self._finish()
                        return
                    f.seek(0)
                    self._position = 0
                    continue
                self._position += frames.shape[0]
                self._deliver(self._conditioner.process(frames))

    def _finish(self) -> None:
        assert self._conditioner is not None
        self._deliver(self._conditioner.flush())
        if not self._stop.is_set():
            logger.info("%s: %s ended after %d samples", self.name, self._config.path, self._delivered)
            self._status.set_state("finished")
            self.finished.set()

    def _deliver(self, samples: np.ndarray) -> None:
        n = samples.shape[0]
        if n == 0:
            return
        if self._config.realtime:
            self._wait_for_clock((self._delivered + n) / self.sample_rate)
        else:
            while not self.ring.wait_for_space(n, SPACE_POLL_SECONDS):
                if self._stop.is_set():
                    return
        if not self._stop.is_set():
            self.ring.write(samples)
            self._delivered += n

    def _wait_for_clock(self, stream_seconds: float) -> None:
        while not self._stop.is_set():
            behind = stream_seconds - (self._clock() - self._t0)
            if behind <= 0:
                return
            self._stop.wait(min(behind, PACE_POLL_SECONDS))
