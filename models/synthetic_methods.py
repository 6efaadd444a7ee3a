"""Other ways to make the demo classes' sounds: independent synthesis methods, some kept for evaluation only.

`clapd.models.synthetic` makes each class one way; a model trained on it alone learns that generator, not the kind
of sound (issue 15). Here every one of its eight everyday classes has three more methods that differ in *how* the
sound is made (a wavetable or a chopped air stream rather than summed harmonics, noise bursts or a struck plate
rather than a few decaying partials, a bubble population or a fluctuating spectrum rather than hiss with chirps),
with wide parameter ranges. `METHODS` says which are for training and which are HELD OUT: benchmarks measure
generalisation on the held-out ones, which no training clip is made with.

Numpy only. Every method is `(rng, seconds) -> audio` as in `synthetic`: mono float32 at 48 kHz, exactly
`round(seconds * SAMPLE_RATE)` samples, peak `PEAK` (0.9), 5 ms fades at both ends; one seed, one sound.
Rooms, microphones, codecs and other backgrounds: `clapd.models.synthetic_channel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clapd.models.synthetic import SAMPLE_RATE, Generator

PEAK = 0.9  # full scale, as synthetic's generators
FADE_S = 0.005  # s
NYQUIST = SAMPLE_RATE / 2


# --- building blocks ------------------------------------------------------------------------------------------------


def _n(seconds: float) -> int:
    return int(round(seconds * SAMPLE_RATE))


def _t(n: int) -> np.ndarray:
    return np.arange(n) / SAMPLE_RATE


def _finish(x: np.ndarray, n: int) -> np.ndarray:
    """Exactly `n` samples, fades at both ends, peak `PEAK`, float32."""
    x = np.asarray(x, dtype=np.float64)[:n]
    x = np.pad(x, (0, n - len(x)))
    fade = min(_n(FADE_S), n // 2)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        x[:fade] *= ramp
        x[n - fade :] *= ramp[::-1]
    top = float(np.max(np.abs(x))) if n else 0.0
    return (x * (PEAK / top) if top > 0 else x).astype(np.float32)


def _filter(x: np.ndarray, gain: np.ndarray | None = None, lo: float = 0.0, hi: float = NYQUIST) -> np.ndarray:
    """`x` through a zero-phase filter: `gain` over np.fft.rfftfreq(len(x)) and/or a 2nd-order band [lo, hi]."""
    f = np.fft.rfftfreq(len(x), 1.0 / SAMPLE_RATE)
    g = np.ones_like(f) if gain is None else gain
    fs = np.maximum(f, 1e-3)
    if lo > 0:
        g = g / np.sqrt(1.0 + (lo / fs) ** 4)
    if hi < NYQUIST:
        g = g / np.sqrt(1.0 + (fs / hi) ** 4)
    return np.fft.irfft(np.fft.rfft(x) * g, len(x))


def _peaks(n: int, centres: np.ndarray, widths: np.ndarray, gains: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """A gain curve over np.fft.rfftfreq(n) with Gaussian peaks (formants, body resonances)."""
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)[:, None]
    return floor + (gains * np.exp(-0.5 * ((f - centres) / widths) ** 2)).sum(axis=1)


def _convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Linear convolution through the FFT, cut to len(x)."""
    size = 1 << (len(x) + len(h) - 2).bit_length()  # a power of two: numpy's FFT is slow on large prime factors
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: len(x)]


def _impulses(n: int, times: np.ndarray, amps: np.ndarray) -> np.ndarray:
    out = np.zeros(n)
    idx = np.round(np.asarray(times) * SAMPLE_RATE).astype(int)
    keep = (idx >= 0) & (idx < n)
    np.add.at(out, idx[keep], np.asarray(amps)[keep])
    return out


def _smooth_random(rng: np.random.Generator, n: int, rate_hz: float) -> np.ndarray:
    knots = int(n / SAMPLE_RATE * rate_hz) + 2
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), rng.standard_normal(knots))


def _grouped_times(rng: np.random.Generator, seconds: float, group: tuple[int, int], step: float, pause: float):
    """Event onsets in groups of `group` events `step` s apart (+-20 %), groups `pause` s apart (+-50 %)."""
    times, t = [], float(rng.uniform(0.01, 0.15))
    while t < seconds:
        for _ in range(int(rng.integers(group[0], group[1] + 1))):
            times.append(t)
            t += step * rng.uniform(0.8, 1.2)
        t += pause * rng.uniform(0.5, 1.5)
    return np.array([x for x in times if x < seconds])


def _cadence(n: int, on_s: float, off_s: float, lead_s: float) -> np.ndarray:
    """1 during `on_s` of every `on_s + off_s` cycle after `lead_s`, with 5 ms ramps."""
    phase = (_t(n) - lead_s) % (on_s + off_s)
    env = np.clip(phase / FADE_S, 0, 1) * np.clip((on_s - phase) / FADE_S, 0, 1)
    env[: _n(lead_s)] = 0.0
    return env


def _phase(freq: np.ndarray) -> np.ndarray:
    """Cycles accumulated by an instantaneous frequency curve (Hz per sample)."""
    return np.cumsum(freq) / SAMPLE_RATE


# --- siren ----------------------------------------------------------------------------------------------------------


def siren_wavetable(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """One stored cycle of a random spectrum (even and odd harmonics) read at a piecewise-linear swept rate."""
    n = _n(seconds)
    lo = rng.uniform(400, 1000)
    hi = lo * rng.uniform(1.3, 2.6)
    period, rise = rng.uniform(0.2, 6.0), rng.uniform(0.1, 0.9)  # s; the share of a cycle spent rising
    u = (_t(n) / period + rng.uniform()) % 1.0
    shape = np.where(u < rise, u / rise, (1.0 - u) / (1.0 - rise))
    freq = lo + (hi - lo) * shape
    harmonics = np.arange(1, max(2, int(16_000 / hi)) + 1)
    table_t = np.arange(2048) / 2048
    amps = harmonics ** -rng.uniform(0.5, 2.0) * rng.uniform(0.3, 1.0, len(harmonics))
    table = amps[:, None] * np.sin(2 * np.pi * harmonics[:, None] * table_t + rng.uniform(0, 6.3, (len(amps), 1)))
    table = table.sum(axis=0)
    pos = (_phase(freq) % 1.0) * 2048
    return _finish(np.interp(pos, np.arange(2049), np.append(table, table[0])), n)


def siren_mechanical(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A rotor siren: air chopped by a spinning disc, pitch spinning up and coasting down, with rushing air."""
    n = _n(seconds)
    top = rng.uniform(500, 1400)  # Hz at full speed
    spin_up, coast = rng.uniform(0.8, 3.0), rng.uniform(1.0, 4.0)  # s
    cycle = spin_up + coast
    u = (_t(n) + rng.uniform(0, cycle)) % cycle
    speed = np.where(u < spin_up, 1 - np.exp(-3 * u / spin_up), 0.95 * np.exp(-(u - spin_up) / (0.7 * coast)))
    freq = top * np.clip(speed, 0.15, 1.0)
    sharpness = rng.uniform(2, 12)  # port width: wide (soft) to narrow (buzzy) pulses
    chopped = np.maximum(np.cos(2 * np.pi * _phase(freq)), 0.0) ** sharpness
    air = _filter(rng.standard_normal(n), lo=300, hi=6000) * rng.uniform(0.05, 0.3)
    out = (chopped - chopped.mean()) * (1 + air) * (0.3 + 0.7 * np.clip(speed, 0, 1))
    return _finish(_filter(out, lo=150, hi=rng.uniform(5000, 12000)), n)


def siren_two_tone_pulse(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A European two-tone horn: naive pulse waves alternating two pitches, low-passed, drifting by Doppler."""
    n = _n(seconds)
    low = rng.uniform(350, 700)
    ratio = rng.choice([1.19, 1.26, 1.33, 1.5]) * rng.uniform(0.98, 1.02)
    half = rng.uniform(0.3, 1.2)  # s per tone
    which = (((_t(n) + rng.uniform(0, 2 * half)) // half) % 2).astype(float)
    doppler = 1 + rng.uniform(0.0, 0.04) * np.tanh((_t(n) - rng.uniform(0, seconds)) / rng.uniform(0.5, 3.0))
    phase = _phase(low * (1 + (ratio - 1) * _filter(which, hi=40)) * doppler[::-1]) % 1.0
    pulse = (phase < rng.uniform(0.2, 0.5)).astype(float)
    swell = 1 + 0.3 * _smooth_random(rng, n, 0.5)
    return _finish(_filter(pulse - pulse.mean(), lo=200, hi=rng.uniform(3000, 8000)) * swell, n)


# --- smoke alarm ----------------------------------------------------------------------------------------------------


def _alarm_envelope(rng: np.random.Generator, n: int) -> np.ndarray:
    """T3 (three beeps, a pause) or steady intermittent beeping, timings drawn wide."""
    if rng.random() < 0.6:
        on, gap, pause = rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6), rng.uniform(1.0, 2.0)
        cycle = 3 * on + 2 * gap + pause
        phase = (_t(n) - rng.uniform(0, 0.2)) % cycle  # a beep within 0.2 s: a short sound is never all pause
        env = sum(np.clip((phase - k * (on + gap)) / 0.003, 0, 1) * np.clip((k * (on + gap) + on - phase) / 0.003, 0, 1)
                  for k in range(3))  # fmt: skip
        return np.asarray(env, dtype=float)
    return _cadence(n, rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.6), rng.uniform(0, 0.2))


def alarm_square_piezo(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A naive square wave at 2.7-4.2 kHz through a piezo disc's resonance peak."""
    n = _n(seconds)
    f = rng.uniform(2700, 4200)
    square = np.sign(np.sin(2 * np.pi * f * _t(n) * (1 + 0.003 * _smooth_random(rng, n, 1.0))))
    body = _peaks(n, np.array([f]), np.array([f * rng.uniform(0.02, 0.1)]), np.array([1.0]), floor=0.05)
    return _finish(_filter(square * _alarm_envelope(rng, n), body), n)


def alarm_ringing_resonator(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Each beep drives a high-Q resonator: a slow swell in, a pitch settling at onset, a ring-out after."""
    n = _n(seconds)
    f = rng.uniform(2800, 4000)
    gate = _alarm_envelope(rng, n)
    tau = rng.uniform(0.005, 0.04)  # s: a driven resonator swells in and rings out with one time constant
    k = _t(_n(6 * tau))
    kernel = np.exp(-k / tau)
    env = _convolve(gate, kernel / kernel.sum())
    onset = np.maximum(np.diff(gate, prepend=0), 0)
    settle = _convolve(onset, np.exp(-k / 0.02)) * rng.uniform(-0.05, 0.05)
    tone = np.sin(2 * np.pi * _phase(f * (1 + settle)))
    return _finish(np.tanh(rng.uniform(1, 4) * tone) * env, n)


def alarm_warble(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A warbling beeper: a tone frequency-modulated at 5-15 Hz, in a T3 or T4 (carbon monoxide) pattern."""
    n = _n(seconds)
    f, rate, depth = rng.uniform(2500, 3600), rng.uniform(5, 15), rng.uniform(0.03, 0.1)
    beeps, on = int(rng.choice([3, 4])), rng.uniform(0.1, 0.5)
    cycle = beeps * 2 * on + rng.uniform(1.0, 5.0)
    phase = (_t(n) - rng.uniform(0, 0.2)) % cycle  # a beep within 0.2 s
    env = ((phase < beeps * 2 * on) & ((phase % (2 * on)) < on)).astype(float)
    tone = np.sin(2 * np.pi * _phase(f * (1 + depth * np.sin(2 * np.pi * rate * _t(n)))))
    return _finish(_filter((tone + 0.2 * tone**3) * env, hi=12000), n)


# --- phone ringing --------------------------------------------------------------------------------------------------

PENTATONIC = np.array([0, 2, 4, 7, 9, 12, 14, 16])  # semitones


def phone_melody(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A ringtone: a short looping tune of marimba-like or square-lead notes, then a pause."""
    n = _n(seconds)
    base = rng.uniform(500, 1000)
    notes = base * 2 ** (rng.choice(PENTATONIC, int(rng.integers(4, 9))) / 12)
    step = 1 / rng.uniform(4, 10)
    pause = rng.uniform(0.5, 2.0)
    out = np.zeros(n)
    m = _n(step)
    k = _t(m)
    marimba = rng.random() < 0.5
    t = float(rng.uniform(0, 0.2))
    while t < seconds:
        for f in notes:
            if marimba:
                note = sum(a * np.sin(2 * np.pi * f * r * k) * np.exp(-k * r / rng.uniform(0.05, 0.2))
                           for r, a in ((1, 1.0), (3.9, 0.3), (9.2, 0.1)))  # fmt: skip
            else:
                note = np.sign(np.sin(2 * np.pi * f * k)) * np.minimum(1, (m - np.arange(m)) / (0.2 * m))
            out[_n(t) : _n(t) + m] += np.asarray(note)[: max(0, n - _n(t))]
            t += step
        t += pause
    return _finish(_filter(out, hi=9000), n)


def phone_fm_bell(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A bell made by frequency modulation (inharmonic ratio, decaying index), struck fast in bursts."""
    n = _n(seconds)
    fc, ratio = rng.uniform(600, 1600), rng.uniform(1.3, 3.6)
    m = _n(rng.uniform(0.15, 0.4))
    k = _t(m)
    decay = rng.uniform(0.05, 0.2)
    index = rng.uniform(2, 8) * np.exp(-k / decay)
    strike = np.sin(2 * np.pi * fc * k + index * np.sin(2 * np.pi * fc * ratio * k)) * np.exp(-k / (2 * decay))
    rate = rng.uniform(12, 30)
    on, off = rng.uniform(0.8, 2.0), rng.uniform(1.5, 4.0)
    gate = _cadence(n, on, off, rng.uniform(0, 0.2))
    times = np.arange(0, seconds, 1 / rate)
    amps = gate[np.minimum(_n(1) * times, n - 1).astype(int)] * rng.uniform(0.7, 1.0, len(times))
    return _finish(_convolve(_impulses(n, times, amps), strike), n)


def phone_trill(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """An electronic trill: two square-ish tones alternating 10-25 times a second, in ring cadence."""
    n = _n(seconds)
    f1 = rng.uniform(700, 1300)
    f2 = f1 * rng.uniform(1.15, 1.5)
    alternate = (np.sin(2 * np.pi * rng.uniform(10, 25) * _t(n)) > 0).astype(float)
    tone = np.tanh(rng.uniform(2, 8) * np.sin(2 * np.pi * _phase(f1 + (f2 - f1) * alternate)))
    gate = _cadence(n, rng.uniform(0.8, 2.0), rng.uniform(1.5, 4.0), rng.uniform(0, 0.2))
    return _finish(_filter(tone * gate, hi=rng.uniform(4000, 10000)), n)


# --- knocking -------------------------------------------------------------------------------------------------------


def knock_noise_burst(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Each knock a burst of noise, low-passed through a broad body resonance, decaying in 5-30 ms."""
    n = _n(seconds)
    times = _grouped_times(rng, seconds, (1, 6), rng.uniform(0.1, 0.4), rng.uniform(0.8, 3.0))
    m = _n(0.15)
    body = _peaks(m, rng.uniform([80, 300], [250, 900]), rng.uniform([30, 100], [100, 400]), np.array([1.0, 0.5]), 0.1)
    out = np.zeros(n)
    tau = rng.uniform(0.005, 0.03)
    for t in times:
        burst = _filter(rng.standard_normal(m) * np.exp(-_t(m) / tau), body, hi=rng.uniform(800, 3000))
        i = _n(t)
        out[i : i + m] += (burst * rng.uniform(0.6, 1.0))[: n - i]
    return _finish(out, n)


def knock_thump(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A fist's thump: a sine whose pitch drops fast onto 60-200 Hz, and a short click of the contact."""
    n = _n(seconds)
    times = _grouped_times(rng, seconds, (2, 5), rng.uniform(0.15, 0.45), rng.uniform(1.0, 3.0))
    m = _n(0.2)
    k = _t(m)
    f, drop, tau = rng.uniform(60, 200), rng.uniform(1.5, 3.0), rng.uniform(0.02, 0.08)
    freq = f * (1 + (drop - 1) * np.exp(-k / 0.01))
    thump = np.sin(2 * np.pi * _phase(freq)) * np.exp(-k / tau)
    click = np.diff(np.exp(-0.5 * ((k - 0.001) / rng.uniform(2e-4, 8e-4)) ** 2), prepend=0)
    stroke = thump + rng.uniform(0.1, 0.5) * click / (np.max(np.abs(click)) + 1e-12)
    return _finish(_convolve(_impulses(n, times, rng.uniform(0.6, 1.0, len(times))), stroke), n)


def knock_struck_plate(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Knocks as force pulses (half-sines 1-4 ms wide) through a panel's dense modal response, in rhythms."""
    n = _n(seconds)
    rhythm = rng.choice(["groups", "shave"])
    if rhythm == "shave":  # shave-and-a-haircut, and variants of it
        beat = rng.uniform(0.12, 0.25)
        pattern = np.array([0, 2, 3, 4, 6, 10, 12]) * beat
        times = np.concatenate([pattern + s for s in np.arange(rng.uniform(0, 0.2), seconds, 14 * beat + 1.0)])
    else:
        times = _grouped_times(rng, seconds, (2, 4), rng.uniform(0.15, 0.35), rng.uniform(1.0, 2.5))
    modes = rng.uniform(90, 2500, int(rng.integers(15, 40)))
    k = _t(_n(0.3))
    decays = rng.uniform(0.01, 0.06) * (200 / modes) ** 0.5
    panel = np.exp(-k[:, None] / decays) * np.sin(2 * np.pi * modes * k[:, None] + rng.uniform(0, 6.3, len(modes)))
    panel = (panel * modes**-0.5).sum(axis=1)
    width = _n(rng.uniform(0.001, 0.004))
    force = np.sin(np.pi * np.arange(width) / width)
    strokes = _convolve(_impulses(n, times, rng.uniform(0.5, 1.0, len(times))), force)
    return _finish(_convolve(strokes, panel), n)


# --- clock ticking --------------------------------------------------------------------------------------------------


def clock_noise_clicks(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Tick and tock as 1-5 ms bursts of noise in two different bands, 1, 2 or 4 times a second."""
    n = _n(seconds)
    interval = rng.choice([0.25, 0.5, 1.0]) * rng.uniform(0.97, 1.03)
    out = np.zeros(n)
    m = _n(0.01)
    bands = [(rng.uniform(1000, 3000), rng.uniform(5000, 12000)) for _ in range(2)]
    clicks = [_filter(rng.standard_normal(m) * np.exp(-_t(m) / rng.uniform(0.001, 0.005)), lo=lo, hi=hi)
              for lo, hi in bands]  # fmt: skip
    for i, t in enumerate(np.arange(rng.uniform(0, min(interval, 0.5)), seconds, interval)):
        j = _n(t + rng.normal(0, 0.001))
        if 0 <= j < n:
            out[j : j + m] += (clicks[i % 2] * (1.0 if i % 2 == 0 else rng.uniform(0.5, 1.0)))[: n - j]
    return _finish(out, n)


def clock_quartz_step(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A quartz wall clock: a stepper motor's pulse once a second, a soft thud and a rattle of the hand."""
    n = _n(seconds)
    m = _n(0.04)
    k = _t(m)
    step = np.sign(np.sin(2 * np.pi * rng.uniform(150, 400) * k)) * np.exp(-k / rng.uniform(0.002, 0.008))
    rattle = _filter(rng.standard_normal(m), lo=rng.uniform(2000, 5000)) * np.exp(-k / 0.003) * rng.uniform(0.2, 0.8)
    tick = _filter(step + rattle, hi=rng.uniform(4000, 10000))
    times = np.arange(rng.uniform(0, 0.5), seconds, rng.uniform(0.98, 1.02))  # a tick in every 1 s sound
    return _finish(_convolve(_impulses(n, times, rng.uniform(0.9, 1.0, len(times))), tick), n)


def clock_escapement(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """An escapement: each tick 2-3 sharp impacts a few ms apart, rung through a wooden case, 2-5 ticks a second."""
    n = _n(seconds)
    interval = 1 / rng.choice([2.0, 2.5, 3.0, 4.0, 5.0])
    ticks = np.arange(rng.uniform(0, interval), seconds, interval)
    times, amps = [], []
    for i, t in enumerate(ticks):
        for j in range(int(rng.integers(2, 4))):
            times.append(t + j * rng.uniform(0.003, 0.015))
            amps.append(rng.uniform(0.3, 1.0) * (1.0 if i % 2 else rng.uniform(0.6, 0.9)))
    m = _n(0.002)
    click = np.diff(np.exp(-0.5 * ((_t(m) - 0.0005) / rng.uniform(5e-5, 2e-4)) ** 2), prepend=0)
    k = _t(_n(0.05))
    case = _filter(rng.standard_normal(len(k)) * np.exp(-k / rng.uniform(0.003, 0.012)),
                   _peaks(len(k), rng.uniform(500, 4000, 3), rng.uniform(50, 300, 3), np.ones(3), 0.2))  # fmt: skip
    return _finish(_convolve(_convolve(_impulses(n, np.array(times), np.array(amps)), click), case), n)


# --- running water --------------------------------------------------------------------------------------------------


def water_bubbles(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A population of bubbles: power-law radii, each ringing at its Minnaert frequency with rising pitch."""
    n = _n(seconds)
    rate = rng.uniform(100, 1000)  # bubbles a second
    count = int(rate * seconds)
    radii = (rng.pareto(rng.uniform(1.5, 3.0), count) + 1) * rng.uniform(0.5e-3, 1.5e-3)  # m
    freq = np.clip(3.26 / radii, 300, 12000)  # Hz: Minnaert's resonance
    bins = np.geomspace(300, 12000, 17)
    which = np.clip(np.digitize(freq, bins) - 1, 0, 15)
    starts = rng.uniform(0, seconds, count)
    amps = radii / radii.mean() * rng.lognormal(0, 0.4, count)
    out = np.zeros(n)
    k = _t(_n(0.06))
    rise = rng.uniform(0.5, 3.0)
    for b in range(16):  # one grain per frequency band, placed by convolution
        f0 = np.sqrt(bins[b] * bins[b + 1])
        tau = 1.0 / (0.13 * np.pi * f0) * rng.uniform(2, 5)
        grain = np.exp(-k / tau) * np.sin(2 * np.pi * f0 * (k + rise * k**2 / (2 * tau)))
        out += _convolve(_impulses(n, starts[which == b], amps[which == b]), grain)
    return _finish(out, n)


def water_granular_noise(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A fluctuating spectrum: random band gains redrawn 20-80 times a second, overlap-added noise frames."""
    n = _n(seconds)
    hop = _n(1 / rng.uniform(20, 80))
    size = 2 * hop
    frames = n // hop + 2
    f = np.fft.rfftfreq(size, 1.0 / SAMPLE_RATE)
    centre, spread = rng.uniform(800, 3000), rng.uniform(0.6, 1.5)
    envelope = np.exp(-0.5 * (np.log(np.maximum(f, 20) / centre) / spread) ** 2)
    bands = 24
    edges = np.geomspace(100, NYQUIST, bands + 1)
    band_of = np.clip(np.digitize(f, edges) - 1, 0, bands - 1)
    gains = rng.lognormal(0, rng.uniform(0.5, 1.2), (frames, bands))[:, band_of] * envelope
    spectra = gains * np.exp(2j * np.pi * rng.uniform(size=(frames, len(f))))
    grains = np.fft.irfft(spectra, size) * np.hanning(size)
    out = np.zeros(frames * hop + size)
    for i in range(frames):
        out[i * hop : i * hop + size] += grains[i]
    return _finish(out[:n] * (1 + 0.3 * _smooth_random(rng, n, 0.5)), n)


def water_pour(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Pouring into a vessel: noise through a comb filter whose pitch rises as it fills, gurgling at 3-10 Hz."""
    n = _n(seconds)
    f_start = rng.uniform(150, 500)
    pitch = f_start * (1 + rng.uniform(0.5, 2.0) * _t(n) / max(seconds, 1e-3))
    noise = _filter(rng.standard_normal(n), lo=200, hi=rng.uniform(4000, 10000))
    out = np.zeros(n)
    for k in range(1, 7):  # a comb as a sum of band-passed copies at harmonics of the column's pitch
        carrier = np.sin(2 * np.pi * _phase(k * pitch))
        out += _filter(noise * carrier, hi=rng.uniform(100, 300)) * carrier / k
    gurgle = 1 + rng.uniform(0.3, 0.8) * np.sin(2 * np.pi * rng.uniform(3, 10) * _t(n) + _smooth_random(rng, n, 2))
    return _finish(out * gurgle + rng.uniform(0.1, 0.4) * noise / (np.std(noise) + 1e-12) * np.std(out), n)


# --- engine ---------------------------------------------------------------------------------------------------------


def engine_pulse_formant(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Firing pulses (each cylinder a little different) through an exhaust's formants, rpm drifting."""
    n = _n(seconds)
    rpm, cylinders = rng.uniform(600, 3000), int(rng.choice([2, 3, 4, 6, 8]))
    fire = rpm / 60 * cylinders / 2 * (1 + 0.03 * _smooth_random(rng, n, 0.3))  # Hz
    cycles = _phase(fire)
    index = np.flatnonzero(np.diff(np.floor(cycles)) > 0)
    levels = rng.uniform(0.6, 1.0, cylinders)
    amps = levels[np.arange(len(index)) % cylinders] * rng.uniform(0.9, 1.1, len(index))
    k = _t(_n(0.08))
    formants = rng.uniform([80, 250, 600], [250, 600, 1500])
    ir = sum(np.exp(-k / rng.uniform(0.005, 0.03)) * np.sin(2 * np.pi * f * k) for f in formants)
    out = _convolve(_impulses(n, index / SAMPLE_RATE, amps), np.asarray(ir))
    return _finish(out + 0.05 * np.std(out) * _filter(rng.standard_normal(n), hi=2000), n)


def engine_electric_motor(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """An electric motor: a whine at its rotation's high order, a low hum, and brush noise at the rotation rate."""
    n = _n(seconds)
    rotation = rng.uniform(20, 60) * (1 + 0.01 * _smooth_random(rng, n, 0.5))  # rev/s
    cycles = _phase(rotation)
    whine = np.sin(2 * np.pi * int(rng.integers(8, 30)) * cycles) * rng.uniform(0.1, 0.5)
    hum = sum(np.sin(2 * np.pi * k * cycles) / k for k in (1, 2, 3))
    brush = _filter(rng.standard_normal(n), lo=1000, hi=8000) * (1 + np.cos(2 * np.pi * 2 * cycles))
    return _finish(np.asarray(hum) + whine + rng.uniform(0.05, 0.3) * brush / (np.std(brush) + 1e-12), n)


def engine_combustion_noise(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A diesel's clatter: broadband noise gated at the firing rate (each combustion a burst), over a low rumble."""
    n = _n(seconds)
    fire = rng.uniform(15, 60) * (1 + 0.02 * _smooth_random(rng, n, 0.3))
    phase = _phase(fire) % 1.0
    bursts = np.exp(-phase / rng.uniform(0.1, 0.4)) * _filter(
        rng.standard_normal(n), lo=100, hi=rng.uniform(2000, 5000)
    )
    rumble = _filter(rng.standard_normal(n), lo=20, hi=rng.uniform(80, 200))
    out = bursts / (np.std(bursts) + 1e-12) + rng.uniform(0.5, 1.5) * rumble / (np.std(rumble) + 1e-12)
    return _finish(out, n)


# --- glass breaking -------------------------------------------------------------------------------------------------


def _shard_times(rng: np.random.Generator, seconds: float, count: tuple[int, int]) -> tuple[float, np.ndarray]:
    t0 = float(rng.uniform(0, min(0.1, seconds / 4)))
    times = t0 + rng.exponential(rng.uniform(0.05, 0.4), int(rng.integers(*count)))
    return t0, times[times < seconds]


def glass_noise_shards(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A crack of broadband noise, then grains of narrow-band high noise (shards), thinning out."""
    n = _n(seconds)
    t0, times = _shard_times(rng, seconds, (30, 120))
    out = np.zeros(n)
    m = _n(0.03)
    crack = _filter(rng.standard_normal(_n(0.08)) * np.exp(-_t(_n(0.08)) / rng.uniform(0.005, 0.02)), lo=800)
    out[_n(t0) : _n(t0) + len(crack)] += crack[: n - _n(t0)]
    for t in times:
        gain = _peaks(m, rng.uniform(3000, 14000, 2), rng.uniform(100, 800, 2), np.ones(2))
        grain = _filter(rng.standard_normal(m) * np.exp(-_t(m) / rng.uniform(0.002, 0.01)), gain)
        i = _n(t)
        out[i : i + m] += (grain * rng.uniform(0.2, 1.0) * np.exp(-(t - t0) / 0.5))[: n - i]
    return _finish(out, n)


def glass_fm_tinkle(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Shards as frequency-modulated tinkles (inharmonic ratios, falling index) after a band-passed crash."""
    n = _n(seconds)
    t0, times = _shard_times(rng, seconds, (15, 60))
    out = np.zeros(n)
    crash = _filter(rng.standard_normal(_n(0.2)) * np.exp(-_t(_n(0.2)) / rng.uniform(0.02, 0.06)), lo=1500)
    out[_n(t0) : _n(t0) + len(crash)] += 2 * crash[: n - _n(t0)]
    for t in times:
        m = _n(rng.uniform(0.03, 0.2))
        k = _t(m)
        fc, ratio, tau = rng.uniform(2000, 10000), rng.uniform(1.1, 4.3), rng.uniform(0.01, 0.06)
        grain = np.sin(2 * np.pi * fc * k + rng.uniform(1, 5) * np.exp(-k / tau) * np.sin(2 * np.pi * fc * ratio * k))
        i = _n(t)
        out[i : i + m] += (grain * np.exp(-k / tau) * rng.uniform(0.1, 0.6))[: n - i]
    return _finish(out, n)


def glass_shatter_cloud(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A pane shattering: a low impact thud, then a dense cloud of micro-clicks rung through bright glass modes."""
    n = _n(seconds)
    t0, times = _shard_times(rng, seconds, (200, 800))
    k = _t(_n(0.1))
    thud = np.sin(2 * np.pi * _phase(rng.uniform(80, 200) * (1 + np.exp(-k / 0.01)))) * np.exp(-k / 0.03)
    modes = rng.uniform(2500, 16000, 20)
    ir = (np.exp(-k[:, None] / rng.uniform(0.003, 0.03, 20)) * np.sin(2 * np.pi * modes * k[:, None])).sum(axis=1)
    clicks = _impulses(n, times, rng.uniform(0.1, 1.0, len(times)) * np.exp(-(times - t0) / rng.uniform(0.2, 0.6)))
    out = _convolve(clicks, ir)
    out = out / (np.max(np.abs(out)) + 1e-12)
    i = _n(t0)
    out[i : i + len(thud)] += (rng.uniform(0.3, 0.8) * thud)[: n - i]
    return _finish(out, n)


# --- the registry ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Method:
    """One way to make one class's sound."""

    name: str
    class_name: str  # a clapd.models.synthetic.CLASSES key
    make: Generator
    held_out: bool  # True: evaluation only, never in training data


def _methods(class_name: str, train: tuple[Generator, ...], held_out: tuple[Generator, ...]) -> list[Method]:
    return [Method(g.__name__, class_name, g, False) for g in train] + [
        Method(g.__name__, class_name, g, True) for g in held_out
    ]


METHODS: tuple[Method, ...] = tuple(
    m
    for group in (
        _methods("siren", (siren_wavetable, siren_mechanical), (siren_two_tone_pulse,)),
        _methods("smoke_alarm", (alarm_square_piezo, alarm_ringing_resonator), (alarm_warble,)),
        _methods("phone_ringing", (phone_melody, phone_fm_bell), (phone_trill,)),
        _methods("knocking", (knock_noise_burst, knock_thump), (knock_struck_plate,)),
        _methods("clock_ticking", (clock_noise_clicks, clock_quartz_step), (clock_escapement,)),
        _methods("running_water", (water_bubbles, water_granular_noise), (water_pour,)),
        _methods("engine_hum", (engine_pulse_formant, engine_electric_motor), (engine_combustion_noise,)),
        _methods("glass_breaking", (glass_noise_shards, glass_fm_tinkle), (glass_shatter_cloud,)),
    )
    for m in group
)
METHOD_CLASSES = tuple(dict.fromkeys(m.class_name for m in METHODS))  # the eight classes with methods, in order


def methods_of(class_name: str, *, held_out: bool) -> list[Method]:
    """The training (or held-out) methods of a class; empty for a class without any (dog barking, speech)."""
    return [m for m in METHODS if m.class_name == class_name and m.held_out == held_out]
