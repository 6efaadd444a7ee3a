"""Procedural sounds with captions: training clips for a small demo model and planted sounds for pipeline tests.

Numpy only (no torch), so the daemon's tests can use it too. Every generator is `(rng, seconds) -> audio`: mono
float32 at 48 kHz, exactly `round(seconds * SAMPLE_RATE)` samples, peak-normalised, with short fades at both ends.
All randomness comes from the generator passed in, so a seed fixes the sound.

Levels, as `mix` and `make_clip` define them:
  - snr_db: the sound's mean power over its own span against the background's mean power over that same span;
  - gain_db: the mixture's peak in dBFS (peak normalisation), so a gain of at most 0 dBFS never clips.
"""

from __future__ import annotations

import io
import math
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

SAMPLE_RATE = 48_000  # Hz
FADE_S = 0.005  # s: fades at both ends of every generated sound, so cuts never click
PEAK = 0.9  # full scale: the peak every generator normalises to
SNR_RANGE_DB = (0.0, 30.0)  # make_clip's sound-to-background ratio
GAIN_RANGE_DB = (-30.0, -3.0)  # make_clip's mixture peak, dBFS
ESPEAK = shutil.which("espeak-ng")
ESPEAK_TIMEOUT_S = 30.0

Generator = Callable[[np.random.Generator, float], np.ndarray]


# --- building blocks ------------------------------------------------------------------------------------------------


def _samples(seconds: float) -> int:
    return int(round(seconds * SAMPLE_RATE))


def _time(n: int) -> np.ndarray:
    return np.arange(n) / SAMPLE_RATE


def _finish(x: np.ndarray, peak: float = PEAK) -> np.ndarray:
    """Fade both ends, normalise the peak, float32."""
    x = np.asarray(x, dtype=np.float64).copy()
    fade = min(_samples(FADE_S), len(x) // 2)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        x[:fade] *= ramp
        x[len(x) - fade :] *= ramp[::-1]
    top = np.max(np.abs(x)) if len(x) else 0.0
    return (x * (peak / top) if top > 0 else x).astype(np.float32)


def _band_gain(f: np.ndarray, lo: float, hi: float, order: int = 2) -> np.ndarray:
    """Butterworth-like band-pass magnitude."""
    f = np.maximum(f, 1e-3)
    return 1.0 / np.sqrt((1.0 + (lo / f) ** (2 * order)) * (1.0 + (f / hi) ** (2 * order)))


def _shaped_noise(rng: np.random.Generator, n: int, lo: float, hi: float, slope: float = 0.0) -> np.ndarray:
    """White noise band-passed to [lo, hi] Hz in the frequency domain; `slope` tilts the power by f**-slope."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    tilt = np.maximum(f, lo) ** (-slope / 2)
    x = np.fft.irfft(spectrum * _band_gain(f, lo, hi) * tilt, n)
    return x / (np.std(x) + 1e-12)


def _slow_noise(rng: np.random.Generator, n: int, rate_hz: float) -> np.ndarray:
    """A smooth random curve, about zero mean and unit scale, changing `rate_hz` times a second."""
    knots = int(n / SAMPLE_RATE * rate_hz) + 2
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), rng.standard_normal(knots))


def _ringing(n: int, freqs: np.ndarray, decays_s: np.ndarray, amps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exponentially decaying partials, random phases."""
    t = _time(n)[:, None]
    phases = rng.uniform(0, 2 * np.pi, len(freqs))
    return (amps * np.exp(-t / decays_s) * np.sin(2 * np.pi * freqs * t + phases)).sum(axis=1)


def _add(out: np.ndarray, x: np.ndarray, start: int) -> None:
    """Add `x` into `out` from sample `start`, cut at the end."""
    if start < len(out):
        m = min(len(x), len(out) - start)
        out[start : start + m] += x[:m]


def _gate(n: int, ons: list[tuple[float, float]], cycle_s: float, lead_s: float = 0.0) -> np.ndarray:
    """A repeating on/off envelope: (start, end) seconds within each cycle, 5 ms ramps, starting after `lead_s`."""
    phase = (_time(n) - lead_s) % cycle_s
    env = np.zeros(n)
    for a, b in ons:
        env += np.clip((phase - a) / FADE_S, 0, 1) * np.clip((b - phase) / FADE_S, 0, 1)
    env[: _samples(lead_s)] = 0.0
    return env


def _harmonics(phase: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return sum(w * np.sin((k + 1) * phase) for k, w in enumerate(weights))


def _events(
    rng: np.random.Generator,
    seconds: float,
    per_group: tuple[int, int],
    step_s: tuple[float, float],
    pause_s: tuple[float, float],
) -> list[float]:
    """Onset times of events in groups (knocks, barks): a group of k events `step_s` apart, then a pause."""
    times, t = [], rng.uniform(0.02, 0.2)
    while t < seconds:
        step = rng.uniform(*step_s)
        for _ in range(rng.integers(per_group[0], per_group[1] + 1)):
            times.append(t)
            t += step * rng.uniform(0.9, 1.1)
        t += rng.uniform(*pause_s)
    return [x for x in times if x < seconds]


# --- sounds ---------------------------------------------------------------------------------------------------------


def siren(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """An electronic siren: a slow wail, a fast yelp or a two-tone hi-lo, with odd harmonics."""
    n = _samples(seconds)
    lo = rng.uniform(500, 900)  # Hz
    style = rng.choice(["wail", "yelp", "hilo"])
    period = {"wail": rng.uniform(3.0, 6.0), "yelp": rng.uniform(0.15, 0.35), "hilo": rng.uniform(1.0, 2.0)}[style]
    u = (_time(n) / period + rng.uniform()) % 1.0
    if style == "wail":
        shape, hi = 0.5 - 0.5 * np.cos(2 * np.pi * u), lo * rng.uniform(1.6, 2.4)
    elif style == "yelp":
        shape, hi = u, lo * rng.uniform(1.6, 2.4)
    else:
        shape, hi = (u < 0.5).astype(float), lo * rng.uniform(1.25, 1.4)
    phase = 2 * np.pi * np.cumsum(lo + (hi - lo) * shape) / SAMPLE_RATE
    weights = np.zeros(7)
    weights[::2] = rng.uniform(0.0, 0.5) ** np.arange(4)  # odd harmonics: brightness 0 (pure) to square-ish
    wobble = 1.0 + 0.1 * _slow_noise(rng, n, 0.5)
    return _finish(_harmonics(phase, weights) * wobble)


def smoke_alarm(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A piezo beeper near 3 kHz in the T3 pattern: three 0.5 s beeps 0.5 s apart, then a 1.5 s pause."""
    n = _samples(seconds)
    f = rng.uniform(2900, 3300)  # Hz
    s = rng.uniform(0.95, 1.05)  # timing tolerance
    env = _gate(n, [(0.0, 0.5 * s), (1.0 * s, 1.5 * s), (2.0 * s, 2.5 * s)], 4.0 * s, rng.uniform(0.0, 0.2))
    drift = 1.0 + 0.002 * _slow_noise(rng, n, 2.0)
    phase = 2 * np.pi * np.cumsum(f * drift) / SAMPLE_RATE
    weights = np.array([1.0, rng.uniform(0.02, 0.2), rng.uniform(0.05, 0.3)])
    return _finish(_harmonics(phase, weights) * env)


PHONE_TONES = {"us": (440.0, 480.0), "uk": (400.0, 450.0)}  # Hz: the ring's dual tones
PHONE_CADENCE = {"us": ([(0.0, 2.0)], 6.0), "uk": ([(0.0, 0.4), (0.6, 1.0)], 3.0)}  # on spans in a cycle, s


def phone_ringing(rng: np.random.Generator, seconds: float, style: str | None = None) -> np.ndarray:
    """A ringing phone: the US (440+480 Hz) or UK (400+450 Hz) dual-tone ring, or a mechanical bell."""
    n = _samples(seconds)
    style = style or str(rng.choice(["us", "uk", "bell"]))
    if style == "bell":
        return _bell(rng, n)
    ons, cycle = PHONE_CADENCE[style]
    detune = rng.uniform(0.99, 1.01)
    t = _time(n)
    tone = sum(np.sin(2 * np.pi * f * detune * t + rng.uniform(0, 2 * np.pi)) for f in PHONE_TONES[style])
    drive = rng.uniform(1.0, 3.0)  # a cheap speaker's soft clipping
    return _finish(np.tanh(drive * tone / 2) * _gate(n, ons, cycle * rng.uniform(0.97, 1.03), rng.uniform(0, 0.1)))


def _bell(rng: np.random.Generator, n: int) -> np.ndarray:
    """A mechanical ringer: a clapper striking two bells ~20 times a second, 2 s on, 4 s off."""
    f0 = rng.uniform(700, 1200)  # Hz
    strike_s = 1.0 / rng.uniform(16, 25)
    ratios = np.array([1.0, 2.0, 2.76, 5.4])  # partials of a small bell
    stroke = _ringing(_samples(0.25), f0 * ratios, np.full(4, 0.12) / ratios, 1.0 / ratios, rng)
    strike = np.zeros(n)
    gate = _gate(n, [(0.0, 2.0)], 6.0, rng.uniform(0, 0.1))
    for i, t in enumerate(np.arange(0, n / SAMPLE_RATE, strike_s)):
        if gate[_samples(t)] > 0.5:
            _add(strike, stroke * (1.0 if i % 2 else rng.uniform(0.6, 0.9)), _samples(t))
    return _finish(strike)


def knocking(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Knuckles on a door: damped low resonances in groups of 2-5 knocks."""
    n = _samples(seconds)
    door = rng.uniform(70, 160)  # Hz
    freqs = np.array([door, door * rng.uniform(1.8, 2.5), door * rng.uniform(3.0, 5.0), rng.uniform(600, 1500)])
    decays = np.array([rng.uniform(0.03, 0.08), rng.uniform(0.02, 0.05), 0.015, rng.uniform(0.004, 0.01)])
    amps = np.array([1.0, 0.6, 0.3, rng.uniform(0.1, 0.4)])
    out = np.zeros(n)
    m = _samples(0.3)
    for t in _events(rng, seconds, (2, 5), (0.12, 0.3), (0.8, 2.5)):
        knock = _ringing(m, freqs * rng.uniform(0.97, 1.03, 4), decays, amps, rng)
        knock += 0.3 * _shaped_noise(rng, m, 50, 2000) * np.exp(-_time(m) / 0.003)
        _add(out, knock * rng.uniform(0.6, 1.0), _samples(t))
    return _finish(out)


def clock_ticking(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A mechanical clock at 1 or 2 ticks a second, tick and tock pitched apart."""
    n = _samples(seconds)
    interval = rng.choice([0.5, 1.0]) * rng.uniform(0.98, 1.02)  # s
    tick = rng.uniform(1800, 4500)  # Hz
    sounds = []
    for f, a in ((tick, 1.0), (tick * rng.uniform(0.7, 0.9), rng.uniform(0.5, 0.9))):
        m = _samples(0.06)
        freqs = np.array([f, f * rng.uniform(1.5, 2.7), rng.uniform(400, 900)])
        decays = np.array([rng.uniform(0.003, 0.01), 0.003, 0.008])
        click = _ringing(m, freqs, decays, np.array([1.0, 0.5, 0.3]), rng)
        click += 0.5 * rng.standard_normal(m) * np.exp(-_time(m) / 0.0005)
        sounds.append(a * click)
    out = np.zeros(n)
    for i, t in enumerate(np.arange(rng.uniform(0, interval), seconds, interval)):
        jitter = rng.normal(0, 0.002)
        _add(out, sounds[i % 2] * rng.uniform(0.9, 1.1), _samples(max(t + jitter, 0.0)))
    return _finish(out)


def running_water(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A tap or stream: band-passed noise swelling slowly, with bubbles (short rising chirps)."""
    n = _samples(seconds)
    hiss = _shaped_noise(rng, n, rng.uniform(200, 800), rng.uniform(3000, 9000), rng.uniform(0.0, 1.0))
    swell = 1.0 + rng.uniform(0.2, 0.5) * _slow_noise(rng, n, rng.uniform(0.3, 2.0))
    swell += 0.1 * _slow_noise(rng, n, rng.uniform(5, 20))
    bubbles = np.zeros(n)
    m = _samples(0.05)
    t = _time(m)
    for start in rng.uniform(0, seconds, int(seconds * rng.uniform(20, 120))):
        f0, tau = rng.uniform(400, 2500), rng.uniform(0.003, 0.015)
        phase = 2 * np.pi * f0 * (t + rng.uniform(0.5, 3.0) * t**2 / (2 * tau))  # rising pitch of a closing bubble
        _add(bubbles, rng.lognormal(0, 0.5) * np.exp(-t / tau) * np.sin(phase), _samples(start))
    bubbles /= np.std(bubbles) + 1e-12
    return _finish(np.clip(swell, 0.1, None) * hiss + rng.uniform(0.3, 1.0) * bubbles)


def engine_hum(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """An idling engine or motor: harmonics of a 30-120 Hz fundamental with a slight wobble, and rumble."""
    n = _samples(seconds)
    f0 = rng.uniform(30, 120)  # Hz
    k = np.arange(1, int(min(30, 3000 / f0)) + 1)
    weights = k ** -rng.uniform(0.7, 1.5) * np.where(k > 1, rng.uniform(0.7, 1.3, len(k)), 1.0)
    t = _time(n)
    wobble = rng.uniform(0.002, 0.015) * np.sin(2 * np.pi * rng.uniform(0.1, 1.0) * t + rng.uniform(0, 2 * np.pi))
    f = f0 * (1.0 + wobble + 0.003 * _slow_noise(rng, n, 0.5))
    phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    tone = sum(w * np.sin(kk * phase + rng.uniform(0, 2 * np.pi)) for kk, w in zip(k, weights, strict=True))
    rumble = _shaped_noise(rng, n, 20, 600) * (1 + np.cos(phase)) * rng.uniform(0.05, 0.2)
    return _finish(tone + rumble)


def glass_breaking(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """An impact: a sharp broadband crack, then shards ringing at high inharmonic partials, thinning out."""
    n = _samples(seconds)
    out = np.zeros(n)
    m = _samples(0.05)
    crack = _shaped_noise(rng, m, 500, 20000) * np.exp(-_time(m) / rng.uniform(0.003, 0.01))
    body = _ringing(_samples(0.8), rng.uniform(1500, 6000, 5), rng.uniform(0.1, 0.4, 5), rng.uniform(0.1, 0.3, 5), rng)
    t0 = rng.uniform(0.0, 0.05)
    _add(out, 2.0 * crack, _samples(t0))
    _add(out, body, _samples(t0))
    spread = rng.uniform(0.1, 0.4)  # s: how fast the shards thin out
    for t in t0 + rng.exponential(spread, rng.integers(15, 50)):
        k = rng.integers(3, 8)
        decays = rng.uniform(0.01, 0.15, k)
        shard = _ringing(_samples(5 * decays.max()), rng.uniform(2000, 14000, k), decays, rng.uniform(0.2, 1.0, k), rng)
        shard[:48] += rng.standard_normal(48) * np.exp(-np.arange(48) / 10)
        _add(out, shard * rng.uniform(0.1, 0.6) * np.exp(-(t - t0) / rng.uniform(0.3, 0.8)), _samples(t))
    return _finish(out)


def dog_barking(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Barks: short voiced bursts with a rising-falling pitch, breath noise and formants, in groups of 1-4."""
    n = _samples(seconds)
    size = rng.uniform(0.0, 1.0)  # 0 small dog, 1 big dog
    f0 = 700 - 450 * size  # Hz
    formants = np.array([rng.uniform(600, 1000), rng.uniform(1300, 2300), rng.uniform(2600, 3600)]) * (1.2 - 0.4 * size)
    out = np.zeros(n)
    for t in _events(rng, seconds, (1, 4), (0.25, 0.55), (0.6, 2.0)):
        _add(out, _bark(rng, f0 * rng.uniform(0.9, 1.1), formants, rng.uniform(0.08, 0.25)), _samples(t))
    return _finish(out)


def _bark(rng: np.random.Generator, f0: float, formants: np.ndarray, seconds: float) -> np.ndarray:
    m = _samples(seconds)
    u = np.linspace(0, 1, m)
    f = f0 * (1.0 + rng.uniform(0.2, 0.5) * np.sin(np.pi * u**0.7))
    phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, int(6000 / f0)))
    source = voice + rng.uniform(0.3, 1.0) * rng.standard_normal(m)
    freq = np.fft.rfftfreq(m, 1.0 / SAMPLE_RATE)
    shape = 0.05 + sum(np.exp(-0.5 * ((freq - fm) / rng.uniform(100, 300)) ** 2) for fm in formants)
    x = np.fft.irfft(np.fft.rfft(source) * shape, m)
    env = np.minimum(u / 0.05, 1.0) * (1 - u) ** 1.5
    return np.tanh(rng.uniform(1.0, 4.0) * x / (np.max(np.abs(x)) + 1e-12)) * env


ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
ESPEAK_VARIANTS = ("", "+m1", "+m3", "+m5", "+m7", "+f1", "+f2", "+f3", "+f4")
SENTENCES = (
    "Could you pass me the salt, please?",
    "The train to the city leaves at half past nine.",
    "I think it is going to rain this afternoon.",
    "Remember to turn off the lights before you leave.",
    "We found a small cafe near the old bridge.",
    "Did anyone see where I put my keys?",
    "The meeting has been moved to Thursday morning.",
    "Please hold the door open for a moment.",
    "That was the best soup I have had all year.",
    "Turn left at the next corner and keep going straight.",
    "My sister is coming to visit next weekend.",
    "Hello, is anybody home?",
)


def speech(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """One synthetic speaker (espeak-ng) saying sentences with short pauses; voice, rate and pitch vary."""
    n = _samples(seconds)
    voice = str(rng.choice(ESPEAK_VOICES)) + str(rng.choice(ESPEAK_VARIANTS))
    wpm, pitch = int(rng.integers(130, 191)), int(rng.integers(25, 76))
    out = np.zeros(n)
    pos = _samples(rng.uniform(0.0, 0.3))
    while pos < n:
        x = _espeak(str(rng.choice(SENTENCES)), voice, wpm, pitch)
        _add(out, x, pos)
        pos += len(x) + _samples(rng.uniform(0.2, 0.8))
    return _finish(out)


def _espeak(text: str, voice: str, wpm: int, pitch: int) -> np.ndarray:
    """espeak-ng's WAV on stdout, resampled to SAMPLE_RATE."""
    command = [str(ESPEAK), "--stdout", "-v", voice, "-s", str(wpm), "-p", str(pitch), text]
    try:
        result = subprocess.run(command, capture_output=True, check=True, timeout=ESPEAK_TIMEOUT_S)
        x, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32")
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        raise RuntimeError(f"espeak-ng could not say {text!r} with voice {voice!r}: {e}") from e
    return soxr.resample(x, rate, SAMPLE_RATE)


# --- backgrounds ----------------------------------------------------------------------------------------------------


def silence(rng: np.random.Generator, seconds: float) -> np.ndarray:
    return np.zeros(_samples(seconds), dtype=np.float32)


def colored_noise(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Noise between pink (power ~ 1/f) and brown (1/f**2), above 20 Hz."""
    return _finish(_shaped_noise(rng, _samples(seconds), 20, 20_000, rng.uniform(1.0, 2.0)))


def room_tone(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A quiet room: low, dull air noise that breathes slowly, and mains hum at 50 or 60 Hz."""
    n = _samples(seconds)
    air = _shaped_noise(rng, n, 20, rng.uniform(300, 1500), rng.uniform(0.5, 1.5))
    air *= 1.0 + 0.2 * _slow_noise(rng, n, 0.2)
    mains = rng.choice([50.0, 60.0])  # Hz
    t = _time(n)
    hum = sum(
        rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * mains * t + rng.uniform(0, 2 * np.pi)) for k in (1, 2, 3)
    )
    return _finish(air + rng.uniform(0.05, 0.5) * hum)


def babble(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A crowd murmur: 6-12 far talkers, each a buzzing voice under a vowel filter, gated at syllable rate."""
    n = _samples(seconds)
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    out = np.zeros(n)
    for _ in range(rng.integers(6, 13)):
        pitch = rng.uniform(90, 250) * (1.0 + 0.1 * _slow_noise(rng, n, 3.0))  # Hz
        buzz = (np.cumsum(pitch) / SAMPLE_RATE) % 1.0 - 0.5
        source = buzz + 0.3 * rng.standard_normal(n)
        vowel = 0.02 + sum(
            np.exp(-0.5 * ((f - fm) / 150) ** 2) for fm in rng.uniform([300, 900, 2200], [900, 2200, 3200])
        )
        voice = np.fft.irfft(np.fft.rfft(source) * vowel, n)
        syllables = np.maximum(_slow_noise(rng, n, rng.uniform(6, 12)), 0.0) * (_slow_noise(rng, n, 0.3) > -0.5)
        out += voice / (np.std(voice) + 1e-12) * syllables * rng.uniform(0.3, 1.0)
    return _finish(out)


BACKGROUNDS: dict[str, Generator] = {
    "silence": silence,
    "colored_noise": colored_noise,
    "room_tone": room_tone,
    "babble": babble,
}
BACKGROUND_WEIGHTS = {"silence": 0.1, "colored_noise": 0.3, "room_tone": 0.3, "babble": 0.3}
BACKGROUND_CAPTIONS = {
    "silence": ("silence", "nothing at all", "a completely silent recording"),
    "colored_noise": ("static noise", "a steady hiss", "background noise", "wind-like rushing noise"),
    "room_tone": ("a quiet room", "room tone with a faint electrical hum", "an empty room", "nothing happening"),
    "babble": ("people talking in the distance", "crowd chatter", "a murmur of voices", "a busy cafe"),
}


# --- mixing ---------------------------------------------------------------------------------------------------------


def mix(sound: np.ndarray, background: np.ndarray, snr_db: float, gain_db: float, onset: int = 0) -> np.ndarray:
    """`sound` over `background` from sample `onset`, at `snr_db`, then scaled to a peak of `gain_db` dBFS.

    The SNR compares mean powers over the sound's own span; over a silent background the sound keeps its level
    before the gain. The result has the background's length and is clipped to [-1, 1].
    """
    if onset < 0 or onset + len(sound) > len(background):
        raise ValueError(f"a {len(sound)}-sample sound at {onset} does not fit a {len(background)}-sample background")
    y = np.asarray(background, dtype=np.float64).copy()
    s = np.asarray(sound, dtype=np.float64)
    span = slice(onset, onset + len(s))
    p_sound = float(np.mean(s**2)) if len(s) else 0.0
    p_background = float(np.mean(y[span] ** 2)) if len(s) else 0.0
    if p_sound > 0 and p_background > 0:
        s = s * math.sqrt(p_background * 10 ** (snr_db / 10) / p_sound)
    y[span] += s
    top = float(np.max(np.abs(y))) if len(y) else 0.0
    if top > 0:
        y *= 10 ** (gain_db / 20) / top
    return np.clip(y, -1.0, 1.0).astype(np.float32)


# --- the catalogue and clips ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SoundClass:
    """A kind of sound: how to make it and how people describe it."""

    name: str
    make: Generator
    captions: tuple[str, ...]  # varied human descriptions: training text
    paraphrases: tuple[str, ...]  # descriptions in words no caption of this class uses: zero-shot test text
    durations_s: tuple[float, float] = (2.0, 10.0)  # s: the span one occurrence takes in make_clip


_CATALOGUE = (
    SoundClass(
        "siren",
        siren,
        (
            "a siren wailing",
            "an emergency vehicle siren going up and down",
            "a police siren in the distance",
            "an ambulance siren yelping",
            "a loud wailing siren",
        ),
        ("a rising and falling alarm tone from a passing fire truck", "the howl of a patrol car hurrying to a call"),
    ),
    SoundClass(
        "smoke_alarm",
        smoke_alarm,
        (
            "a smoke alarm beeping",
            "a smoke detector going off",
            "three short high-pitched beeps repeating",
            "a fire alarm beeping in a pattern",
            "a shrill electronic alarm",
        ),
        (
            "a ceiling unit shrieking in triple pulses because something is burning",
            "the piercing signal that tells you to leave a burning house",
        ),
        (4.0, 10.0),
    ),
    SoundClass(
        "phone_ringing",
        phone_ringing,
        (
            "a telephone ringing",
            "a phone ringing",
            "an old landline phone ring",
            "a phone ringing with an incoming call",
            "a ringtone repeating",
        ),
        ("someone is trying to reach you on the handset", "a desk receiver buzzing for attention"),
        (3.0, 10.0),
    ),
    SoundClass(
        "knocking",
        knocking,
        (
            "someone knocking on a door",
            "knocking on a wooden door",
            "a knock at the door",
            "a few loud knocks",
            "rapping knuckles on wood",
        ),
        ("a visitor tapping at the entrance", "a fist thumping against a panel to be let in"),
        (1.0, 5.0),
    ),
    SoundClass(
        "clock_ticking",
        clock_ticking,
        (
            "a clock ticking",
            "tick tock of a clock",
            "a ticking wall clock",
            "a mechanical clock ticking steadily",
            "the steady tick of a watch",
        ),
        ("the rhythmic clicking of a pendulum timepiece", "seconds being counted out by little gears"),
        (3.0, 10.0),
    ),
    SoundClass(
        "running_water",
        running_water,
        (
            "water running",
            "running water from a tap",
            "a faucet running",
            "a stream of water flowing",
            "water pouring into a sink",
        ),
        ("a babbling brook", "liquid splashing and gurgling in a basin", "a shower left on"),
    ),
    SoundClass(
        "engine_hum",
        engine_hum,
        (
            "an engine humming",
            "a car engine idling",
            "the low hum of a motor",
            "a diesel engine running",
            "a rumbling engine",
        ),
        ("the deep drone of a generator", "machinery of a parked truck purring"),
    ),
    SoundClass(
        "glass_breaking",
        glass_breaking,
        (
            "glass breaking",
            "a window shattering",
            "a glass bottle smashing",
            "a drinking glass dropped and shattered",
            "breaking glass with shards falling",
        ),
        ("a pane cracking into pieces", "a tumbler hitting the floor and splintering"),
        (1.0, 3.0),
    ),
    SoundClass(
        "dog_barking",
        dog_barking,
        (
            "a dog barking",
            "a dog barks several times",
            "a small dog yapping",
            "a big dog barking loudly",
            "barking from a dog",
        ),
        ("a hound woofing at a stranger", "a puppy yelping by the gate"),
        (1.0, 6.0),
    ),
    SoundClass(
        "speech",
        speech,
        ("a person speaking", "someone talking", "a voice saying a sentence", "speech", "a robotic voice speaking"),
        ("words spoken aloud by an adult", "a narrator reading out loud"),
        (1.5, 8.0),
    ),
)
CLASSES: dict[str, SoundClass] = {c.name: c for c in _CATALOGUE if c.name != "speech" or ESPEAK}


@dataclass(frozen=True, slots=True, eq=False)
class Clip:
    """One training clip: a sound (or none) over a background, with the caption and levels it was made with."""

    audio: np.ndarray  # float32 mono [samples] at SAMPLE_RATE, within [-1, 1]
    class_name: str | None  # None: background only
    caption: str
    onset_s: float  # s: where the sound starts in the clip
    duration_s: float  # s: how long the sound lasts; 0 for background only
    snr_db: float  # dB: see `mix`; inf over silence, -inf for background only
    gain_db: float  # dBFS: the clip's peak
    background: str  # a BACKGROUNDS key


def make_clip(
    rng: np.random.Generator, class_name: str | None, seconds: float = 10.0, background: str | None = None
) -> Clip:
    """A clip of `seconds` with one occurrence of `class_name` (or none) at a random offset, SNR and gain."""
    if class_name is not None and class_name not in CLASSES:
        raise ValueError(f"unknown sound class {class_name!r}; known: {', '.join(CLASSES)}")
    if background is None:
        background = str(rng.choice(list(BACKGROUND_WEIGHTS), p=list(BACKGROUND_WEIGHTS.values())))
    bed = BACKGROUNDS[background](rng, seconds)
    gain = float(rng.uniform(*GAIN_RANGE_DB))
    if class_name is None:
        caption = str(rng.choice(BACKGROUND_CAPTIONS[background]))
        return Clip(mix(bed[:0], bed, 0.0, gain), None, caption, 0.0, 0.0, -math.inf, gain, background)
    sound_class = CLASSES[class_name]
    lo, hi = (min(d, seconds) for d in sound_class.durations_s)
    length = _samples(rng.uniform(lo, hi))
    onset = int(rng.integers(0, len(bed) - length + 1))
    snr = float(rng.uniform(*SNR_RANGE_DB))
    audio = mix(sound_class.make(rng, length / SAMPLE_RATE), bed, snr, gain, onset)
    caption = str(rng.choice(sound_class.captions))
    snr = snr if np.any(bed) else math.inf
    return Clip(audio, class_name, caption, onset / SAMPLE_RATE, length / SAMPLE_RATE, snr, gain, background)
