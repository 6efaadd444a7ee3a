"""Knocking, clock ticking, running water, engines and glass breaking made other ways than `clapd.models.synthetic`
does: noise bursts, thumps and struck plates; noise clicks, stepper pulses and escapements; bubble populations,
fluctuating spectra and pouring; firing pulses, motors and combustion noise; noise shards, FM tinkles and shatter
clouds. Registered (training or held out) in `clapd.models.synthetic_methods`, whose docstring states lengths and
levels."""

from __future__ import annotations

import numpy as np

from clapd.models.synthesis_blocks import (
    NYQUIST,
    accumulate_cycles,
    convolve,
    finish,
    grouped_onsets,
    impulse_train,
    peak_gains,
    smooth_random,
    time_axis,
    to_samples,
    zero_phase_filter,
)
from clapd.models.synthetic import SAMPLE_RATE

# --- knocking -------------------------------------------------------------------------------------------------------


def knock_noise_burst(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Each knock a burst of noise, low-passed through a broad body resonance, decaying in 5-30 ms."""
    n = to_samples(seconds)
    times = grouped_onsets(rng, seconds, (1, 6), rng.uniform(0.1, 0.4), rng.uniform(0.8, 3.0))
    m = to_samples(0.15)
    body = peak_gains(
        m, rng.uniform([80, 300], [250, 900]), rng.uniform([30, 100], [100, 400]), np.array([1.0, 0.5]), 0.1
    )
    out = np.zeros(n)
    tau = rng.uniform(0.005, 0.03)
    for t in times:
        burst = zero_phase_filter(rng.standard_normal(m) * np.exp(-time_axis(m) / tau), body, hi=rng.uniform(800, 3000))
        i = to_samples(t)
        out[i : i + m] += (burst * rng.uniform(0.6, 1.0))[: n - i]
    return finish(out, n)


def knock_thump(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A fist's thump: a sine whose pitch drops fast onto 60-200 Hz, and a short click of the contact."""
    n = to_samples(seconds)
    times = grouped_onsets(rng, seconds, (2, 5), rng.uniform(0.15, 0.45), rng.uniform(1.0, 3.0))
    m = to_samples(0.2)
    k = time_axis(m)
    f, drop, tau = rng.uniform(60, 200), rng.uniform(1.5, 3.0), rng.uniform(0.02, 0.08)
    freq = f * (1 + (drop - 1) * np.exp(-k / 0.01))
    thump = np.sin(2 * np.pi * accumulate_cycles(freq)) * np.exp(-k / tau)
    click = np.diff(np.exp(-0.5 * ((k - 0.001) / rng.uniform(2e-4, 8e-4)) ** 2), prepend=0)
    stroke = thump + rng.uniform(0.1, 0.5) * click / (np.max(np.abs(click)) + 1e-12)
    return finish(convolve(impulse_train(n, times, rng.uniform(0.6, 1.0, len(times))), stroke), n)


def knock_struck_plate(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Knocks as force pulses (half-sines 1-4 ms wide) through a panel's dense modal response, in rhythms."""
    n = to_samples(seconds)
    rhythm = rng.choice(["groups", "shave"])
    if rhythm == "shave":  # shave-and-a-haircut, and variants of it
        beat = rng.uniform(0.12, 0.25)
        pattern = np.array([0, 2, 3, 4, 6, 10, 12]) * beat
        times = np.concatenate([pattern + s for s in np.arange(rng.uniform(0, 0.2), seconds, 14 * beat + 1.0)])
    else:
        times = grouped_onsets(rng, seconds, (2, 4), rng.uniform(0.15, 0.35), rng.uniform(1.0, 2.5))
    modes = rng.uniform(90, 2500, int(rng.integers(15, 40)))
    k = time_axis(to_samples(0.3))
    decays = rng.uniform(0.01, 0.06) * (200 / modes) ** 0.5
    panel = np.exp(-k[:, None] / decays) * np.sin(2 * np.pi * modes * k[:, None] + rng.uniform(0, 6.3, len(modes)))
    panel = (panel * modes**-0.5).sum(axis=1)
    width = to_samples(rng.uniform(0.001, 0.004))
    force = np.sin(np.pi * np.arange(width) / width)
    strokes = convolve(impulse_train(n, times, rng.uniform(0.5, 1.0, len(times))), force)
    return finish(convolve(strokes, panel), n)


# --- clock ticking --------------------------------------------------------------------------------------------------


def clock_noise_clicks(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Tick and tock as 1-5 ms bursts of noise in two different bands, 1, 2 or 4 times a second."""
    n = to_samples(seconds)
    interval = rng.choice([0.25, 0.5, 1.0]) * rng.uniform(0.97, 1.03)
    out = np.zeros(n)
    m = to_samples(0.01)
    bands = [(rng.uniform(1000, 3000), rng.uniform(5000, 12000)) for _ in range(2)]
    clicks = []
    for lo, hi in bands:
        burst = rng.standard_normal(m) * np.exp(-time_axis(m) / rng.uniform(0.001, 0.005))
        clicks.append(zero_phase_filter(burst, lo=lo, hi=hi))
    for i, t in enumerate(np.arange(rng.uniform(0, min(interval, 0.5)), seconds, interval)):
        j = to_samples(t + rng.normal(0, 0.001))
        if 0 <= j < n:
            out[j : j + m] += (clicks[i % 2] * (1.0 if i % 2 == 0 else rng.uniform(0.5, 1.0)))[: n - j]
    return finish(out, n)


def clock_quartz_step(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A quartz wall clock: a stepper motor's pulse once a second, a soft thud and a rattle of the hand."""
    n = to_samples(seconds)
    m = to_samples(0.04)
    k = time_axis(m)
    step = np.sign(np.sin(2 * np.pi * rng.uniform(150, 400) * k)) * np.exp(-k / rng.uniform(0.002, 0.008))
    rattle = (
        zero_phase_filter(rng.standard_normal(m), lo=rng.uniform(2000, 5000))
        * np.exp(-k / 0.003)
        * rng.uniform(0.2, 0.8)
    )
    tick = zero_phase_filter(step + rattle, hi=rng.uniform(4000, 10000))
    times = np.arange(rng.uniform(0, 0.5), seconds, rng.uniform(0.98, 1.02))  # a tick in every 1 s sound
    return finish(convolve(impulse_train(n, times, rng.uniform(0.9, 1.0, len(times))), tick), n)


def clock_escapement(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """An escapement: each tick 2-3 sharp impacts a few ms apart, rung through a wooden case, 2-5 ticks a second."""
    n = to_samples(seconds)
    interval = 1 / rng.choice([2.0, 2.5, 3.0, 4.0, 5.0])
    ticks = np.arange(rng.uniform(0, interval), seconds, interval)
    times, amps = [], []
    for i, t in enumerate(ticks):
        for j in range(int(rng.integers(2, 4))):
            times.append(t + j * rng.uniform(0.003, 0.015))
            amps.append(rng.uniform(0.3, 1.0) * (1.0 if i % 2 else rng.uniform(0.6, 0.9)))
    m = to_samples(0.002)
    click = np.diff(np.exp(-0.5 * ((time_axis(m) - 0.0005) / rng.uniform(5e-5, 2e-4)) ** 2), prepend=0)
    k = time_axis(to_samples(0.05))
    case = zero_phase_filter(rng.standard_normal(len(k)) * np.exp(-k / rng.uniform(0.003, 0.012)),
                   peak_gains(len(k), rng.uniform(500, 4000, 3), rng.uniform(50, 300, 3), np.ones(3), 0.2))  # fmt: skip
    return finish(convolve(convolve(impulse_train(n, np.array(times), np.array(amps)), click), case), n)


# --- running water --------------------------------------------------------------------------------------------------


def water_bubbles(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A population of bubbles: power-law radii, each ringing at its Minnaert frequency with rising pitch."""
    n = to_samples(seconds)
    rate = rng.uniform(100, 1000)  # bubbles a second
    count = int(rate * seconds)
    radii = (rng.pareto(rng.uniform(1.5, 3.0), count) + 1) * rng.uniform(0.5e-3, 1.5e-3)  # m
    freq = np.clip(3.26 / radii, 300, 12000)  # Hz: Minnaert's resonance
    bins = np.geomspace(300, 12000, 17)
    which = np.clip(np.digitize(freq, bins) - 1, 0, 15)
    starts = rng.uniform(0, seconds, count)
    amps = radii / radii.mean() * rng.lognormal(0, 0.4, count)
    out = np.zeros(n)
    k = time_axis(to_samples(0.06))
    rise = rng.uniform(0.5, 3.0)
    for b in range(16):  # one grain per frequency band, placed by convolution
        f0 = np.sqrt(bins[b] * bins[b + 1])
        tau = 1.0 / (0.13 * np.pi * f0) * rng.uniform(2, 5)
        grain = np.exp(-k / tau) * np.sin(2 * np.pi * f0 * (k + rise * k**2 / (2 * tau)))
        out += convolve(impulse_train(n, starts[which == b], amps[which == b]), grain)
    return finish(out, n)


def water_granular_noise(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A fluctuating spectrum: random band gains redrawn 20-80 times a second, overlap-added noise frames."""
    n = to_samples(seconds)
    hop = to_samples(1 / rng.uniform(20, 80))
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
    return finish(out[:n] * (1 + 0.3 * smooth_random(rng, n, 0.5)), n)


def water_pour(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Pouring into a vessel: noise through a comb filter whose pitch rises as it fills, gurgling at 3-10 Hz."""
    n = to_samples(seconds)
    f_start = rng.uniform(150, 500)
    pitch = f_start * (1 + rng.uniform(0.5, 2.0) * time_axis(n) / max(seconds, 1e-3))
    noise = zero_phase_filter(rng.standard_normal(n), lo=200, hi=rng.uniform(4000, 10000))
    out = np.zeros(n)
    for k in range(1, 7):  # a comb as a sum of band-passed copies at harmonics of the column's pitch
        carrier = np.sin(2 * np.pi * accumulate_cycles(k * pitch))
        out += zero_phase_filter(noise * carrier, hi=rng.uniform(100, 300)) * carrier / k
    gurgle = 1 + rng.uniform(0.3, 0.8) * np.sin(
        2 * np.pi * rng.uniform(3, 10) * time_axis(n) + smooth_random(rng, n, 2)
    )
    return finish(out * gurgle + rng.uniform(0.1, 0.4) * noise / (np.std(noise) + 1e-12) * np.std(out), n)


# --- engine ---------------------------------------------------------------------------------------------------------


def engine_pulse_formant(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Firing pulses (each cylinder a little different) through an exhaust's formants, rpm drifting."""
    n = to_samples(seconds)
    rpm, cylinders = rng.uniform(600, 3000), int(rng.choice([2, 3, 4, 6, 8]))
    fire = rpm / 60 * cylinders / 2 * (1 + 0.03 * smooth_random(rng, n, 0.3))  # Hz
    cycles = accumulate_cycles(fire)
    index = np.flatnonzero(np.diff(np.floor(cycles)) > 0)
    levels = rng.uniform(0.6, 1.0, cylinders)
    amps = levels[np.arange(len(index)) % cylinders] * rng.uniform(0.9, 1.1, len(index))
    k = time_axis(to_samples(0.08))
    formants = rng.uniform([80, 250, 600], [250, 600, 1500])
    ir = sum(np.exp(-k / rng.uniform(0.005, 0.03)) * np.sin(2 * np.pi * f * k) for f in formants)
    out = convolve(impulse_train(n, index / SAMPLE_RATE, amps), np.asarray(ir))
    return finish(out + 0.05 * np.std(out) * zero_phase_filter(rng.standard_normal(n), hi=2000), n)


def engine_electric_motor(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """An electric motor: a whine at its rotation's high order, a low hum, and brush noise at the rotation rate."""
    n = to_samples(seconds)
    rotation = rng.uniform(20, 60) * (1 + 0.01 * smooth_random(rng, n, 0.5))  # rev/s
    cycles = accumulate_cycles(rotation)
    whine = np.sin(2 * np.pi * int(rng.integers(8, 30)) * cycles) * rng.uniform(0.1, 0.5)
    hum = sum(np.sin(2 * np.pi * k * cycles) / k for k in (1, 2, 3))
    brush = zero_phase_filter(rng.standard_normal(n), lo=1000, hi=8000) * (1 + np.cos(2 * np.pi * 2 * cycles))
    return finish(np.asarray(hum) + whine + rng.uniform(0.05, 0.3) * brush / (np.std(brush) + 1e-12), n)


def engine_combustion_noise(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A diesel's clatter: broadband noise gated at the firing rate (each combustion a burst), over a low rumble."""
    n = to_samples(seconds)
    fire = rng.uniform(15, 60) * (1 + 0.02 * smooth_random(rng, n, 0.3))
    phase = accumulate_cycles(fire) % 1.0
    bursts = np.exp(-phase / rng.uniform(0.1, 0.4)) * zero_phase_filter(
        rng.standard_normal(n), lo=100, hi=rng.uniform(2000, 5000)
    )
    rumble = zero_phase_filter(rng.standard_normal(n), lo=20, hi=rng.uniform(80, 200))
    out = bursts / (np.std(bursts) + 1e-12) + rng.uniform(0.5, 1.5) * rumble / (np.std(rumble) + 1e-12)
    return finish(out, n)


# --- glass breaking -------------------------------------------------------------------------------------------------


def _shard_times(rng: np.random.Generator, seconds: float, count: tuple[int, int]) -> tuple[float, np.ndarray]:
    t0 = float(rng.uniform(0, min(0.1, seconds / 4)))
    times = t0 + rng.exponential(rng.uniform(0.05, 0.4), int(rng.integers(*count)))
    return t0, times[times < seconds]


def glass_noise_shards(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A crack of broadband noise, then grains of narrow-band high noise (shards), thinning out."""
    n = to_samples(seconds)
    t0, times = _shard_times(rng, seconds, (30, 120))
    out = np.zeros(n)
    m = to_samples(0.03)
    crack = zero_phase_filter(
        rng.standard_normal(to_samples(0.08)) * np.exp(-time_axis(to_samples(0.08)) / rng.uniform(0.005, 0.02)), lo=800
    )
    out[to_samples(t0) : to_samples(t0) + len(crack)] += crack[: n - to_samples(t0)]
    for t in times:
        gain = peak_gains(m, rng.uniform(3000, 14000, 2), rng.uniform(100, 800, 2), np.ones(2))
        grain = zero_phase_filter(rng.standard_normal(m) * np.exp(-time_axis(m) / rng.uniform(0.002, 0.01)), gain)
        i = to_samples(t)
        out[i : i + m] += (grain * rng.uniform(0.2, 1.0) * np.exp(-(t - t0) / 0.5))[: n - i]
    return finish(out, n)


def glass_fm_tinkle(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Shards as frequency-modulated tinkles (inharmonic ratios, falling index) after a band-passed crash."""
    n = to_samples(seconds)
    t0, times = _shard_times(rng, seconds, (15, 60))
    out = np.zeros(n)
    crash = zero_phase_filter(
        rng.standard_normal(to_samples(0.2)) * np.exp(-time_axis(to_samples(0.2)) / rng.uniform(0.02, 0.06)), lo=1500
    )
    out[to_samples(t0) : to_samples(t0) + len(crash)] += 2 * crash[: n - to_samples(t0)]
    for t in times:
        m = to_samples(rng.uniform(0.03, 0.2))
        k = time_axis(m)
        fc, ratio, tau = rng.uniform(2000, 10000), rng.uniform(1.1, 4.3), rng.uniform(0.01, 0.06)
        grain = np.sin(2 * np.pi * fc * k + rng.uniform(1, 5) * np.exp(-k / tau) * np.sin(2 * np.pi * fc * ratio * k))
        i = to_samples(t)
        out[i : i + m] += (grain * np.exp(-k / tau) * rng.uniform(0.1, 0.6))[: n - i]
    return finish(out, n)


def glass_shatter_cloud(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A pane shattering: a low impact thud, then a dense cloud of micro-clicks rung through bright glass modes."""
    n = to_samples(seconds)
    t0, times = _shard_times(rng, seconds, (200, 800))
    k = time_axis(to_samples(0.1))
    thud = np.sin(2 * np.pi * accumulate_cycles(rng.uniform(80, 200) * (1 + np.exp(-k / 0.01)))) * np.exp(-k / 0.03)
    modes = rng.uniform(2500, 16000, 20)
    ir = (np.exp(-k[:, None] / rng.uniform(0.003, 0.03, 20)) * np.sin(2 * np.pi * modes * k[:, None])).sum(axis=1)
    clicks = impulse_train(n, times, rng.uniform(0.1, 1.0, len(times)) * np.exp(-(times - t0) / rng.uniform(0.2, 0.6)))
    out = convolve(clicks, ir)
    out = out / (np.max(np.abs(out)) + 1e-12)
    i = to_samples(t0)
    out[i : i + len(thud)] += (rng.uniform(0.3, 0.8) * thud)[: n - i]
    return finish(out, n)
