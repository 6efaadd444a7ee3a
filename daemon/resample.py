"""Turn a device's frames into the model's audio: one channel (selected or averaged), float32, at the model's rate.

The output rate is the model bundle's (`Manifest.sample_rate`), passed in by whoever builds the sources: nothing
here assumes a rate.

Resampling is done by libsoxr (python-soxr's `ResampleStream`, quality "HQ"), which keeps its filter state
between calls, so the output does not depend on how the input was cut into blocks: it is bit-identical whatever
the block sizes (tested). A stream already at the output rate passes through untouched (no filter, no delay).

Where this runs: not in the PortAudio callback. `resample_chunk` allocates its output array on every call, and
its cost varies with the block, which is what a real-time callback must not have. The microphone's callback only
copies raw interleaved frames into a small preallocated ring (`RingBuffer` over frames x channels samples), and
the source's capture thread drains that ring through a `Conditioner` into the stream's ring. The latency
this adds is one wake-up (under one capture block); the raw ring holds seconds, so a thread delayed by a garbage
collection or a busy CPU loses nothing. File and pipe sources already run in their own threads and call the
`Conditioner` there directly.
"""

from __future__ import annotations

import numpy as np
import soxr

RESAMPLER_QUALITY = "HQ"  # libsoxr's high quality: 20-bit precision, pass band to 91% of Nyquist


class Conditioner:
    """Streaming channel selection / downmix and resampling of one source to mono float32 at `out_rate` (Hz).

    `out_rate` is keyword-only: it is the model's rate, never to be confused with the source's `in_rate`.
    """

    __slots__ = ("in_rate", "out_rate", "channels", "channel", "_resampler")

    def __init__(self, in_rate: int, channels: int, channel: int | None = None, *, out_rate: int) -> None:
        for what, rate in (("sample rate", in_rate), ("output sample rate", out_rate)):
            if rate <= 0:
                raise ValueError(f"{what} must be positive, got {rate}")
        if channels < 1:
            raise ValueError(f"need at least one channel, got {channels}")
        if channel is not None and not 0 <= channel < channels:
            raise ValueError(f"channel {channel} does not exist: the source has {channels} (numbered from 0)")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.channels = channels
        self.channel = channel
        self._resampler = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=RESAMPLER_QUALITY)
        )

    def process(self, block: np.ndarray) -> np.ndarray:
        """Frames [frames, channels] (or [frames] when mono) in, a new mono float32 array at `out_rate` out."""
        mono = self._mono(block)
        if self._resampler is None:
            return mono
        return self._resampler.resample_chunk(mono)

    def flush(self) -> np.ndarray:
        """The samples the resampler still holds; call once at the end of a continuous piece of audio."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        return self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)

    @property
    def delay_samples(self) -> float:
        """Output samples (at `out_rate`) the resampler is holding back right now."""
        return 0.0 if self._resampler is None else float(self._resampler.delay())

    def _mono(self, block: np.ndarray) -> np.ndarray:
        if block.ndim == 1:
            block = block.reshape(-1, 1)
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(f"expected frames [n, {self.channels}], got shape {block.shape}")
        if self.channel is None and self.channels > 1:
            return block.mean(axis=1, dtype=np.float32)
        # A copy: the caller may reuse its block buffer right away.
        return np.array(block[:, self.channel or 0], dtype=np.float32, order="C", copy=True)
