"""Other ways to make the demo classes' sounds: independent synthesis methods, some kept for evaluation only.

`clapd.models.synthetic` makes each class one way; a model trained on it alone learns that generator, not the kind
of sound (issue 15). Here every one of its eight everyday classes has three more methods that differ in *how* the
sound is made (a wavetable or a chopped air stream rather than summed harmonics, noise bursts or a struck plate
rather than a few decaying partials, a bubble population or a fluctuating spectrum rather than hiss with chirps),
with wide parameter ranges. `METHODS` says which are for training and which are HELD OUT: benchmarks measure
generalisation on the held-out ones, which no training clip is made with.

Numpy only. Every method is `(rng, seconds) -> audio` as in `synthetic`: mono float32 at 48 kHz, exactly
`round(seconds * SAMPLE_RATE)` samples, peak `PEAK` (0.9), 5 ms fades at both ends; one seed, one sound.
The sirens, alarms and phones are here, the rest in `clapd.models.synthetic_impacts`, both built from
`clapd.models.synthesis_blocks`. Rooms, microphones, codecs and other backgrounds: `clapd.models.synthetic_channel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clapd.models.synthesis_blocks import (
    PEAK,
    accumulate_cycles,
    cadence,
    convolve,
    finish,
    impulse_train,
    peak_gains,
    smooth_random,
    time_axis,
    to_samples,
    zero_phase_filter,
)
from clapd.models.synthetic import Generator
from clapd.models.synthetic_impacts import (
    clock_escapement,
    clock_noise_clicks,
    clock_quartz_step,
    engine_combustion_noise,
    engine_electric_motor,
    engine_pulse_formant,
    glass_fm_tinkle,
    glass_noise_shards,
    glass_shatter_cloud,
    knock_noise_burst,
    knock_struck_plate,
    knock_thump,
    water_bubbles,
    water_granular_noise,
    water_pour,
)

__all__ = ["METHODS", "METHOD_CLASSES", "PEAK", "Method", "methods_of"]


# --- siren ----------------------------------------------------------------------------------------------------------


def siren_wavetable(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """One stored cycle of a random spectrum (even and odd harmonics) read at a piecewise-linear swept rate."""
    n = to_samples(seconds)
    lo = rng.uniform(400, 1000)
    hi = lo * rng.uniform(1.3, 2.6)
    period, rise = rng.uniform(0.2, 6.0), rng.uniform(0.1, 0.9)  # s; the share of a cycle spent rising
    u = (time_axis(n) / period + rng.uniform()) % 1.0
    shape = np.where(u < rise, u / rise, (1.0 - u) / (1.0 - rise))
    freq = lo + (hi - lo) * shape
    harmonics = np.arange(1, max(2, int(16_000 / hi)) + 1)
    table_t = np.arange(2048) / 2048
    amps = harmonics ** -rng.uniform(0.5, 2.0) * rng.uniform(0.3, 1.0, len(harmonics))
    table = amps[:, None] * np.sin(2 * np.pi * harmonics[:, None] * table_t + rng.uniform(0, 6.3, (len(amps), 1)))
    table = table.sum(axis=0)
    pos = (accumulate_cycles(freq) % 1.0) * 2048
    return finish(np.interp(pos, np.arange(2049), np.append(table, table[0])), n)


def siren_mechanical(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A rotor siren: air chopped by a spinning disc, pitch spinning up and coasting down, with rushing air."""
    n = to_samples(seconds)
    top = rng.uniform(500, 1400)  # Hz at full speed
    spin_up, coast = rng.uniform(0.8, 3.0), rng.uniform(1.0, 4.0)  # s
    cycle = spin_up + coast
    u = (time_axis(n) + rng.uniform(0, cycle)) % cycle
    speed = np.where(u < spin_up, 1 - np.exp(-3 * u / spin_up), 0.95 * np.exp(-(u - spin_up) / (0.7 * coast)))
    freq = top * np.clip(speed, 0.15, 1.0)
    sharpness = rng.uniform(2, 12)  # port width: wide (soft) to narrow (buzzy) pulses
    chopped = np.maximum(np.cos(2 * np.pi * accumulate_cycles(freq)), 0.0) ** sharpness
    air = zero_phase_filter(rng.standard_normal(n), lo=300, hi=6000) * rng.uniform(0.05, 0.3)
    out = (chopped - chopped.mean()) * (1 + air) * (0.3 + 0.7 * np.clip(speed, 0, 1))
    return finish(zero_phase_filter(out, lo=150, hi=rng.uniform(5000, 12000)), n)


def siren_two_tone_pulse(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A European two-tone horn: naive pulse waves alternating two pitches, low-passed, drifting by Doppler."""
    n = to_samples(seconds)
    low = rng.uniform(350, 700)
    ratio = rng.choice([1.19, 1.26, 1.33, 1.5]) * rng.uniform(0.98, 1.02)
    half = rng.uniform(0.3, 1.2)  # s per tone
    which = (((time_axis(n) + rng.uniform(0, 2 * half)) // half) % 2).astype(float)
    doppler = 1 + rng.uniform(0.0, 0.04) * np.tanh((time_axis(n) - rng.uniform(0, seconds)) / rng.uniform(0.5, 3.0))
    phase = accumulate_cycles(low * (1 + (ratio - 1) * zero_phase_filter(which, hi=40)) * doppler[::-1]) % 1.0
    pulse = (phase < rng.uniform(0.2, 0.5)).astype(float)
    swell = 1 + 0.3 * smooth_random(rng, n, 0.5)
    return finish(zero_phase_filter(pulse - pulse.mean(), lo=200, hi=rng.uniform(3000, 8000)) * swell, n)


# --- smoke alarm ----------------------------------------------------------------------------------------------------


def _alarm_envelope(rng: np.random.Generator, n: int) -> np.ndarray:
    """T3 (three beeps, a pause) or steady intermittent beeping, timings drawn wide."""
    if rng.random() < 0.6:
        on, gap, pause = rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6), rng.uniform(1.0, 2.0)
        cycle = 3 * on + 2 * gap + pause
        phase = (time_axis(n) - rng.uniform(0, 0.2)) % cycle  # a beep within 0.2 s: a short sound is never all pause
        env = sum(np.clip((phase - k * (on + gap)) / 0.003, 0, 1) * np.clip((k * (on + gap) + on - phase) / 0.003, 0, 1)
                  for k in range(3))  # fmt: skip
        return np.asarray(env, dtype=float)
    return cadence(n, rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.6), rng.uniform(0, 0.2))


def alarm_square_piezo(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A naive square wave at 2.7-4.2 kHz through a piezo disc's resonance peak."""
    n = to_samples(seconds)
    f = rng.uniform(2700, 4200)
    square = np.sign(np.sin(2 * np.pi * f * time_axis(n) * (1 + 0.003 * smooth_random(rng, n, 1.0))))
    body = peak_gains(n, np.array([f]), np.array([f * rng.uniform(0.02, 0.1)]), np.array([1.0]), floor=0.05)
    return finish(zero_phase_filter(square * _alarm_envelope(rng, n), body), n)


def alarm_ringing_resonator(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Each beep drives a high-Q resonator: a slow swell in, a pitch settling at onset, a ring-out after."""
    n = to_samples(seconds)
    f = rng.uniform(2800, 4000)
    gate = _alarm_envelope(rng, n)
    tau = rng.uniform(0.005, 0.04)  # s: a driven resonator swells in and rings out with one time constant
    k = time_axis(to_samples(6 * tau))
    kernel = np.exp(-k / tau)
    env = convolve(gate, kernel / kernel.sum())
    onset = np.maximum(np.diff(gate, prepend=0), 0)
    settle = convolve(onset, np.exp(-k / 0.02)) * rng.uniform(-0.05, 0.05)
    tone = np.sin(2 * np.pi * accumulate_cycles(f * (1 + settle)))
    return finish(np.tanh(rng.uniform(1, 4) * tone) * env, n)


def alarm_warble(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A warbling beeper: a tone frequency-modulated at 5-15 Hz, in a T3 or T4 (carbon monoxide) pattern."""
    n = to_samples(seconds)
    f, rate, depth = rng.uniform(2500, 3600), rng.uniform(5, 15), rng.uniform(0.03, 0.1)
    beeps, on = int(rng.choice([3, 4])), rng.uniform(0.1, 0.5)
    cycle = beeps * 2 * on + rng.uniform(1.0, 5.0)
    phase = (time_axis(n) - rng.uniform(0, 0.2)) % cycle  # a beep within 0.2 s
    env = ((phase < beeps * 2 * on) & ((phase % (2 * on)) < on)).astype(float)
    tone = np.sin(2 * np.pi * accumulate_cycles(f * (1 + depth * np.sin(2 * np.pi * rate * time_axis(n)))))
    return finish(zero_phase_filter((tone + 0.2 * tone**3) * env, hi=12000), n)


# --- phone ringing --------------------------------------------------------------------------------------------------

PENTATONIC = np.array([0, 2, 4, 7, 9, 12, 14, 16])  # semitones


def phone_melody(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A ringtone: a short looping tune of marimba-like or square-lead notes, then a pause."""
    n = to_samples(seconds)
    base = rng.uniform(500, 1000)
    notes = base * 2 ** (rng.choice(PENTATONIC, int(rng.integers(4, 9))) / 12)
    step = 1 / rng.uniform(4, 10)
    pause = rng.uniform(0.5, 2.0)
    out = np.zeros(n)
    m = to_samples(step)
    k = time_axis(m)
    marimba = rng.random() < 0.5
    t = float(rng.uniform(0, 0.2))
    while t < seconds:
        for f in notes:
            if marimba:
                note = sum(a * np.sin(2 * np.pi * f * r * k) * np.exp(-k * r / rng.uniform(0.05, 0.2))
                           for r, a in ((1, 1.0), (3.9, 0.3), (9.2, 0.1)))  # fmt: skip
            else:
                note = np.sign(np.sin(2 * np.pi * f * k)) * np.minimum(1, (m - np.arange(m)) / (0.2 * m))
            out[to_samples(t) : to_samples(t) + m] += np.asarray(note)[: max(0, n - to_samples(t))]
            t += step
        t += pause
    return finish(zero_phase_filter(out, hi=9000), n)


def phone_fm_bell(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A bell made by frequency modulation (inharmonic ratio, decaying index), struck fast in bursts."""
    n = to_samples(seconds)
    fc, ratio = rng.uniform(600, 1600), rng.uniform(1.3, 3.6)
    m = to_samples(rng.uniform(0.15, 0.4))
    k = time_axis(m)
    decay = rng.uniform(0.05, 0.2)
    index = rng.uniform(2, 8) * np.exp(-k / decay)
    strike = np.sin(2 * np.pi * fc * k + index * np.sin(2 * np.pi * fc * ratio * k)) * np.exp(-k / (2 * decay))
    rate = rng.uniform(12, 30)
    on, off = rng.uniform(0.8, 2.0), rng.uniform(1.5, 4.0)
    gate = cadence(n, on, off, rng.uniform(0, 0.2))
    times = np.arange(0, seconds, 1 / rate)
    amps = gate[np.minimum(to_samples(1) * times, n - 1).astype(int)] * rng.uniform(0.7, 1.0, len(times))
    return finish(convolve(impulse_train(n, times, amps), strike), n)


def phone_trill(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """An electronic trill: two square-ish tones alternating 10-25 times a second, in ring cadence."""
    n = to_samples(seconds)
    f1 = rng.uniform(700, 1300)
    f2 = f1 * rng.uniform(1.15, 1.5)
    alternate = (np.sin(2 * np.pi * rng.uniform(10, 25) * time_axis(n)) > 0).astype(float)
    tone = np.tanh(rng.uniform(2, 8) * np.sin(2 * np.pi * accumulate_cycles(f1 + (f2 - f1) * alternate)))
    gate = cadence(n, rng.uniform(0.8, 2.0), rng.uniform(1.5, 4.0), rng.uniform(0, 0.2))
    return finish(zero_phase_filter(tone * gate, hi=rng.uniform(4000, 10000)), n)


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
