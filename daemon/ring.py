"""A per-stream ring of float32 samples: one writer (a capture callback or thread), one reader.

Positions are absolute sample indices since the stream started (64-bit Python ints, so they never wrap); the ring
keeps the newest `capacity` of them. The writer never waits and never allocates: what the reader has not copied in
time is overwritten, and the reader is told exactly how much it lost (`Overrun`).

The race between the two is settled seqlock style, without a lock. Before copying a block the writer publishes
how far it is about to write (`_claimed`), and after copying how far it has written (`total_written`). A reader
checks the committed count before copying (are the samples there yet?) and the claimed count after copying (were
any of them overwritten while it copied?), so a torn copy is always detected, never returned.

A writer that must not lose anything (a file read as fast as possible) waits for the reader instead: the reader
says how far it no longer needs samples (`mark_consumed`) and such a writer calls `wait_for_space` before writing.
A live capture never waits: the world does not pause for a slow reader.

A stream's ring (`sanitize=True`) is where audio enters the stream, so it is where corrupt audio stops: samples that
are NaN, infinite or beyond `SAMPLE_LIMIT` (full scale is 1.0) are replaced by 0 before they are committed, counted
(`nonfinite_samples`), and remembered, so the windows holding them can be skipped (`replaced_within`). Checking a
block costs a min and a max over it (no allocation); only a corrupt block takes the slow path. The same goes for the
record of replaced stretches: appended by the writer, read by the reader without a lock (a reference swap prunes it).
"""

from __future__ import annotations

import threading

import numpy as np

SAMPLE_LIMIT = 1e3  # |sample| beyond this is corrupt audio, not sound: 60 dB above full scale (1.0)
REPLACED_MERGE_SHARE = 1 / 256  # of the ring: replaced stretches closer than this are remembered as one


class Overrun(Exception):
    """The writer overwrote part of the requested samples before (or while) they were copied."""

    def __init__(self, start_sample: int, lost: int, oldest_available: int) -> None:
        super().__init__(
            f"samples [{start_sample}, {start_sample + lost}) were overwritten; oldest available is {oldest_available}"
        )
        self.start_sample = start_sample
        self.lost = lost  # samples of the request that are gone
        self.oldest_available = oldest_available


class NotYetWritten(Exception):
    """The requested samples reach past what the writer has committed."""

    def __init__(self, end_sample: int, total_written: int) -> None:
        super().__init__(f"asked for samples up to {end_sample}, only {total_written} written")
        self.missing = end_sample - total_written


class RingBuffer:
    """Preallocated float32 ring with an absolute sample counter."""

    __slots__ = (
        "capacity",
        "_buffer",
        "_claimed",
        "total_written",
        "_consumed",
        "_space",
        "overruns",
        "lost_samples",
        "_sanitize",
        "nonfinite_samples",
        "_replaced",
        "_merge_gap",
    )

    def __init__(self, capacity_samples: int, *, sanitize: bool = False) -> None:
        """`sanitize`: replace corrupt samples by 0 as they are written (a stream's ring; not a ring of raw frames)."""
        if capacity_samples < 1:
            raise ValueError(f"capacity must be at least one sample, got {capacity_samples}")
        self.capacity = capacity_samples
        self._buffer = np.zeros(capacity_samples, dtype=np.float32)
        self._claimed = 0  # the writer may be overwriting samples below _claimed - capacity
        self.total_written = 0  # samples [0, total_written) have been committed
        self._consumed = 0  # the reader no longer needs samples below this
        self._space = threading.Condition(threading.Lock())
        self.overruns = 0  # reads that found part of their samples overwritten
        self.lost_samples = 0  # samples those reads lost
        self._sanitize = sanitize
        self.nonfinite_samples = 0  # samples replaced by 0: NaN, infinite or beyond SAMPLE_LIMIT
        self._replaced: list[tuple[int, int]] = []  # [start, end) stretches holding replaced samples, oldest first
        self._merge_gap = max(1, int(capacity_samples * REPLACED_MERGE_SHARE))

    @property
    def oldest_available(self) -> int:
        """Index of the oldest sample that is still intact."""
        return max(0, self._claimed - self.capacity)

    def write(self, block: np.ndarray) -> None:
        """Append a 1-D block; called from a capture callback, so no allocation, no logging, no waiting (a sanitizing
        ring allocates on corrupt audio only, and is written by a capture thread)."""
        n = block.shape[0]
        if n == 0:
            return
        start = self.total_written
        if n > self.capacity:
            # Only the newest `capacity` samples can survive; the rest count as written and lost at once.
            block = block[n - self.capacity :]
            start += n - self.capacity
        k = block.shape[0]
        self._claimed = start + k
        i = start % self.capacity
        first = min(k, self.capacity - i)
        self._buffer[i : i + first] = block[:first]
        if first < k:
            self._buffer[: k - first] = block[first:]
        if self._sanitize and not -SAMPLE_LIMIT <= block.min() <= block.max() <= SAMPLE_LIMIT:  # False for a NaN
            self._replace_corrupt(start, i, first, k)
        self.total_written = start + k

    def _replace_corrupt(self, start: int, i: int, first: int, k: int) -> None:
        """The slow path, for corrupt audio only: zero the bad samples of the block just copied to buffer index `i`
        (`first` samples there, the rest of the `k` at 0), count them, and remember where they were."""
        lo = hi = -1
        for segment, at in ((self._buffer[i : i + first], start), (self._buffer[: k - first], start + first)):
            bad = np.flatnonzero(~(np.abs(segment) <= SAMPLE_LIMIT))
            if bad.size:
                segment[bad] = 0.0
                self.nonfinite_samples += int(bad.size)
                lo = at + int(bad[0]) if lo < 0 else lo
                hi = at + int(bad[-1]) + 1
        if lo < 0:
            return
        replaced = self._replaced
        if replaced and lo <= replaced[-1][1] + self._merge_gap:
            replaced[-1] = (replaced[-1][0], hi)
        else:  # a new list, not an edit: a reader may be going through the old one
            oldest = self._claimed - self.capacity
            self._replaced = [r for r in replaced if r[1] > oldest] + [(lo, hi)]

    def replaced_within(self, start_sample: int, n: int) -> bool:
        """Whether any of samples [start_sample, start_sample + n) was replaced by 0 as corrupt. Ask before reading
        them: what the answer rests on is only forgotten once those samples are overwritten, which the read reports."""
        end = start_sample + n
        return any(lo < end and start_sample < hi for lo, hi in self._replaced)

    def read(self, start_sample: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Copy samples [start_sample, start_sample + n); into `out[:n]` when given."""
        if n < 0 or n > self.capacity:
            raise ValueError(f"can read 0..{self.capacity} samples at once, asked for {n}")
        if start_sample < 0:
            raise ValueError(f"sample indices start at 0, got {start_sample}")
        end = start_sample + n
        if end > self.total_written:
            raise NotYetWritten(end, self.total_written)
        self._check_intact(start_sample, n)
        target = np.empty(n, dtype=np.float32) if out is None else out[:n]
        i = start_sample % self.capacity
        first = min(n, self.capacity - i)
        target[:first] = self._buffer[i : i + first]
        if first < n:
            target[first:] = self._buffer[: n - first]
        self._check_intact(start_sample, n)
        return target

    def _check_intact(self, start_sample: int, n: int) -> None:
        oldest = self.oldest_available
        if start_sample < oldest:
            lost = min(n, oldest - start_sample)
            self.overruns += 1
            self.lost_samples += lost
            raise Overrun(start_sample, lost, oldest)

    def latest_available_start(self, n: int) -> int:
        """Start index of the newest `n` committed samples."""
        if n < 0 or n > self.capacity:
            raise ValueError(f"can read 0..{self.capacity} samples at once, asked for {n}")
        if n > self.total_written:
            raise NotYetWritten(n, self.total_written)
        return self.total_written - n

    @property
    def consumed_until(self) -> int:
        return self._consumed

    def mark_consumed(self, sample: int) -> None:
        """Reader side: samples below `sample` are no longer needed (lets a waiting writer go on)."""
        with self._space:
            if sample > self._consumed:
                self._consumed = sample
                self._space.notify_all()

    def free_space(self) -> int:
        """Samples a lossless writer may write now without overwriting any the reader still needs."""
        return self.capacity - (self.total_written - self._consumed)

    def wait_for_space(self, n: int, timeout: float) -> bool:
        """Writer side, for lossless sources only: wait until `n` samples fit; False on timeout."""
        if n > self.capacity:
            raise ValueError(f"a block of {n} samples can never fit a ring of {self.capacity}")
        with self._space:
            return self._space.wait_for(lambda: self.free_space() >= n, timeout)
