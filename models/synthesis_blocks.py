"""Signal building blocks of `clapd.models.synthetic_methods`: lengths, fades, zero-phase filters, FFT
convolution, impulse trains, rhythms. Numpy only; every random draw comes from the generator passed in."""

from __future__ import annotations

import numpy as np

from clapd.models.synthetic import SAMPLE_RATE

PEAK = 0.9  # full scale, as synthetic's generators
FADE_S = 0.005  # s
NYQUIST = SAMPLE_RATE / 2


# --- building blocks ------------------------------------------------------------------------------------------------


def to_samples(seconds: float) -> int:
    return int(round(seconds * SAMPLE_RATE))


def time_axis(n: int) -> np.ndarray:
    return np.arange(n) / SAMPLE_RATE


def finish(x: np.ndarray, n: int) -> np.ndarray:
    """Exactly `n` samples, fades at both ends, peak `PEAK`, float32."""
    x = np.asarray(x, dtype=np.float64)[:n]
    x = np.pad(x, (0, n - len(x)))
    fade = min(to_samples(FADE_S), n // 2)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        x[:fade] *= ramp
        x[n - fade :] *= ramp[::-1]
    top = float(np.max(np.abs(x))) if n else 0.0
    return (x * (PEAK / top) if top > 0 else x).astype(np.float32)


def zero_phase_filter(
    x: np.ndarray, gain: np.ndarray | None = None, lo: float = 0.0, hi: float = NYQUIST
) -> np.ndarray:
    """`x` through a zero-phase filter: `gain` over np.fft.rfftfreq(len(x)) and/or a 2nd-order band [lo, hi]."""
    f = np.fft.rfftfreq(len(x), 1.0 / SAMPLE_RATE)
    g = np.ones_like(f) if gain is None else gain
    fs = np.maximum(f, 1e-3)
    if lo > 0:
        g = g / np.sqrt(1.0 + (lo / fs) ** 4)
    if hi < NYQUIST:
        g = g / np.sqrt(1.0 + (fs / hi) ** 4)
    return np.fft.irfft(np.fft.rfft(x) * g, len(x))


def peak_gains(n: int, centres: np.ndarray, widths: np.ndarray, gains: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """A gain curve over np.fft.rfftfreq(n) with Gaussian peaks (formants, body resonances)."""
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)[:, None]
    return floor + (gains * np.exp(-0.5 * ((f - centres) / widths) ** 2)).sum(axis=1)


def convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Linear convolution through the FFT, cut to len(x)."""
    size = 1 << (len(x) + len(h) - 2).bit_length()  # a power of two: numpy's FFT is slow on large prime factors
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: len(x)]


def impulse_train(n: int, times: np.ndarray, amps: np.ndarray) -> np.ndarray:
    out = np.zeros(n)
    idx = np.round(np.asarray(times) * SAMPLE_RATE).astype(int)
    keep = (idx >= 0) & (idx < n)
    np.add.at(out, idx[keep], np.asarray(amps)[keep])
    return out


def smooth_random(rng: np.random.Generator, n: int, rate_hz: float) -> np.ndarray:
    knots = int(n / SAMPLE_RATE * rate_hz) + 2
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), rng.standard_normal(knots))


def grouped_onsets(rng: np.random.Generator, seconds: float, group: tuple[int, int], step: float, pause: float):
    """Event onsets in groups of `group` events `step` s apart (+-20 %), groups `pause` s apart (+-50 %)."""
    times, t = [], float(rng.uniform(0.01, 0.15))
    while t < seconds:
        for _ in range(int(rng.integers(group[0], group[1] + 1))):
            times.append(t)
            t += step * rng.uniform(0.8, 1.2)
        t += pause * rng.uniform(0.5, 1.5)
    return np.array([x for x in times if x < seconds])


def cadence(n: int, on_s: float, off_s: float, lead_s: float) -> np.ndarray:
    """1 during `on_s` of every `on_s + off_s` cycle after `lead_s`, with 5 ms ramps."""
    phase = (time_axis(n) - lead_s) % (on_s + off_s)
    env = np.clip(phase / FADE_S, 0, 1) * np.clip((on_s - phase) / FADE_S, 0, 1)
    env[: to_samples(lead_s)] = 0.0
    return env


def accumulate_cycles(freq: np.ndarray) -> np.ndarray:
    """Cycles accumulated by an instantaneous frequency curve (Hz per sample)."""
    return np.cumsum(freq) / SAMPLE_RATE
