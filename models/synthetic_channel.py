"""What lies between a sound and the model: rooms, microphones, codecs, other backgrounds and a second sound.

Numpy (and soxr, for the 8 kHz telephone band) only. Every function takes the generator it draws from, so a seed
fixes the result, and returns float32 of the input's length; `render` puts a sound through all of them.

  - `room`: a generated impulse response, small (RT60 0.15-0.5 s) or large (0.8-2.5 s) room, near (direct sound
    6-15 dB above the reverberation) or far (-8 to +2 dB); the late part decays faster at high frequencies.
  - `microphone`: band-limiting (high-pass 80-400 Hz, low-pass 3.4-16 kHz), a few +-6 dB resonances, mild clipping.
  - `codec`: 8-bit mu-law at 8 kHz, coarse PCM (8-12 bits), or an MP3-like coder (STFT bins below a masking floor
    dropped, magnitudes quantised on a log scale, the top band cut).
  - `BACKGROUNDS`: the generator's beds plus two it never makes (a fan, distant traffic), held out for evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import soxr

from clapd.models import synthetic
from clapd.models.synthetic import SAMPLE_RATE, Generator

SNR_RANGE_DB = (0.0, 30.0)  # dB: render's sound-to-background ratio, down to as loud as the background
ROOMS = ("small", "large")
DISTANCES = ("near", "far")
CODECS = ("mulaw8k", "pcm", "mp3_like")


def _lowpass_noise(rng: np.random.Generator, n: int, hi: float) -> np.ndarray:
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    x = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / np.sqrt(1 + (np.maximum(f, 1) / hi) ** 4), n)
    return x / (np.std(x) + 1e-12)


def _convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    size = 1 << (len(x) + len(h) - 2).bit_length()
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: len(x)]


# --- rooms ----------------------------------------------------------------------------------------------------------


def room_impulse_response(rng: np.random.Generator, size: str, distance: str) -> np.ndarray:
    """A direct path of 1, early reflections, and a late tail of noise decaying per band at its own RT60."""
    rt60 = rng.uniform(0.15, 0.5) if size == "small" else rng.uniform(0.8, 2.5)  # s
    early_s = 0.03 if size == "small" else 0.1  # s: where the early reflections end
    drr_db = rng.uniform(6, 15) if distance == "near" else rng.uniform(-8, 2)  # direct against reverberant energy
    n = int(min(1.2 * rt60, 3.0) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    tail = np.zeros(n)
    for lo, hi, scale in ((0, 500, 1.0), (500, 2000, 0.85), (2000, 8000, 0.6), (8000, 24000, 0.4)):
        band = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * ((f >= lo) & (f < hi)), n)
        tail += band * np.exp(-6.9 * t / (rt60 * scale))  # -60 dB at this band's RT60
    tail *= np.clip((t - 0.002) / early_s, 0, 1)  # the late part builds up after the early reflections
    reflections = rng.uniform(0.002, early_s, int(rng.integers(4, 16)))
    early = np.zeros(n)
    np.add.at(early, (reflections * SAMPLE_RATE).astype(int), rng.uniform(-0.7, 0.7, len(reflections)))
    reverb = early + tail
    reverb *= math.sqrt(10 ** (-drr_db / 10) / (float(np.sum(reverb**2)) + 1e-12))
    reverb[0] += 1.0
    return reverb


def room(rng: np.random.Generator, x: np.ndarray, size: str | None = None, distance: str | None = None) -> np.ndarray:
    """`x` played in a generated room (drawn when not given), cut to its own length, at its input's peak."""
    ir = room_impulse_response(rng, size or str(rng.choice(ROOMS)), distance or str(rng.choice(DISTANCES)))
    return _same_peak(_convolve(np.asarray(x, dtype=np.float64), ir), x)


def _same_peak(y: np.ndarray, like: np.ndarray) -> np.ndarray:
    top, want = float(np.max(np.abs(y))) if len(y) else 0.0, float(np.max(np.abs(like))) if len(like) else 0.0
    return (y * (want / top) if top > 0 else y).astype(np.float32)


# --- microphones and codecs -----------------------------------------------------------------------------------------


def microphone(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """A cheap microphone and preamp: band-limited, coloured by a few resonances, mildly clipped."""
    n = len(x)
    f = np.maximum(np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE), 1.0)
    lo, hi = rng.uniform(80, 400), rng.uniform(3400, 16000)
    order = int(rng.integers(1, 4))
    gain = 1.0 / np.sqrt((1 + (lo / f) ** (2 * order)) * (1 + (f / hi) ** (2 * order)))
    for centre, db in zip(rng.uniform(300, 8000, 3), rng.uniform(-6, 6, 3), strict=True):
        gain *= 10 ** (db / 20 * np.exp(-0.5 * (np.log(f / centre) / 0.3) ** 2))
    y = np.fft.irfft(np.fft.rfft(np.asarray(x, dtype=np.float64)) * gain, n)
    top = float(np.max(np.abs(y))) if n else 0.0
    if top > 0:
        y = np.tanh(rng.uniform(1.0, 3.0) * y / top) if rng.random() < 0.5 else np.clip(y / top, -0.8, 0.8)
    return _same_peak(y, x)


def codec(rng: np.random.Generator, x: np.ndarray, kind: str | None = None) -> np.ndarray:
    """`x` through a lossy channel: `CODECS` (drawn when not given)."""
    kind = kind or str(rng.choice(CODECS))
    y = np.asarray(x, dtype=np.float64)
    top = float(np.max(np.abs(y))) if len(y) else 0.0
    if top == 0:
        return np.asarray(x, dtype=np.float32)
    y = y / top
    if kind == "mulaw8k":
        narrow = soxr.resample(y, SAMPLE_RATE, 8000)
        mu = 255.0
        coded = np.sign(narrow) * np.log1p(mu * np.abs(narrow)) / np.log1p(mu)
        coded = np.round(coded * 127) / 127
        y = soxr.resample(np.sign(coded) * np.expm1(np.abs(coded) * np.log1p(mu)) / mu, 8000, SAMPLE_RATE)[: len(y)]
        y = np.pad(y, (0, len(x) - len(y)))
    elif kind == "pcm":
        levels = 2 ** (int(rng.integers(8, 13)) - 1)
        y = np.round(y * levels) / levels
    elif kind == "mp3_like":
        y = _mp3_like(rng, y)
    else:
        raise ValueError(f"unknown codec {kind!r}; known: {', '.join(CODECS)}")
    return _same_peak(y, x)


def _mp3_like(rng: np.random.Generator, y: np.ndarray) -> np.ndarray:
    """Frames of 1024 (hop 512, sine window): bins below floor_db under the frame's peak dropped, the rest rounded
    to `step_db` steps of magnitude, everything above the cutoff dropped; overlap-added back."""
    size, hop = 1024, 512
    floor_db, step_db, cutoff = rng.uniform(-50, -30), rng.uniform(1.5, 4.0), rng.uniform(11000, 16000)
    padded = np.pad(y, (size, size + hop))
    window = np.sin(np.pi * (np.arange(size) + 0.5) / size)
    starts = np.arange(0, len(padded) - size, hop)
    spectra = np.fft.rfft(padded[starts[:, None] + np.arange(size)] * window, axis=1)
    magnitude = np.abs(spectra) + 1e-12
    db = 20 * np.log10(magnitude)
    keep = (db >= db.max(axis=1, keepdims=True) + floor_db) & (np.fft.rfftfreq(size, 1 / SAMPLE_RATE) < cutoff)
    quantised = 10 ** (np.round(db / step_db) * step_db / 20)
    frames = np.fft.irfft(np.where(keep, quantised * spectra / magnitude, 0), size, axis=1) * window
    out = np.zeros(len(padded))
    np.add.at(out, starts[:, None] + np.arange(size), frames)
    return out[size : size + len(y)]


# --- backgrounds and rendering --------------------------------------------------------------------------------------


def fan(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A fan or air conditioner: low-passed broadband air and a blade-pass tone with its harmonics."""
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    blade = rng.uniform(40, 200)
    tone = sum(np.sin(2 * np.pi * k * blade * t + rng.uniform(0, 6.3)) / k**1.5 for k in (1, 2, 3, 4))
    return synthetic.mix(t[:0], _lowpass_noise(rng, n, rng.uniform(800, 3000)) + rng.uniform(0.05, 0.4) * tone, 0, -1)


def traffic(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Distant traffic: a low rumble swelling and fading as vehicles pass."""
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    swell = 0.3 + sum(np.exp(-0.5 * ((t - c) / rng.uniform(1, 4)) ** 2) for c in rng.uniform(0, seconds, 4))
    return synthetic.mix(t[:0], _lowpass_noise(rng, n, rng.uniform(200, 800)) * swell, 0, -1)


BACKGROUNDS: dict[str, Generator] = {**synthetic.BACKGROUNDS, "fan": fan, "traffic": traffic}
HELD_OUT_BACKGROUNDS = ("fan", "traffic")  # never in training data


@dataclass(frozen=True, slots=True)
class Channel:
    """What `render` does to a sound: each step on or off, and the background and SNR it is mixed at."""

    room: bool = True
    microphone: bool = True
    codec: bool = True
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    snr_db: tuple[float, float] = SNR_RANGE_DB


def render(
    rng: np.random.Generator, sound: np.ndarray, clip_s: float, channel: Channel, gain_db: float = -20.0
) -> np.ndarray:
    """`sound` in a room, at a random onset over a background of `clip_s` at a random SNR, through a microphone
    and a codec, peak `gain_db` dBFS; `clip_s` at least the sound's length."""
    if channel.room:
        sound = room(rng, sound)
    bed = BACKGROUNDS[str(rng.choice(channel.backgrounds))](rng, clip_s)
    onset = int(rng.integers(0, len(bed) - len(sound) + 1))
    y = synthetic.mix(sound, bed, float(rng.uniform(*channel.snr_db)), -1.0, onset)
    if channel.microphone:
        y = microphone(rng, y)
    if channel.codec:
        y = codec(rng, y)
    return synthetic.mix(y[:0], y, 0.0, gain_db)


def overlap(rng: np.random.Generator, sound: np.ndarray, other: np.ndarray, level_db: tuple[float, float] = (-15, -6)):
    """`sound` with `other` (a second class's sound, at most as long) mixed in `level_db` below it, at a random
    onset; peak kept. Two classes at once, for multi-label training or evaluation."""
    onset = int(rng.integers(0, len(sound) - len(other) + 1))
    p_sound, p_other = float(np.mean(np.square(sound, dtype=np.float64))), float(np.mean(np.square(other, dtype=float)))
    y = np.asarray(sound, dtype=np.float64).copy()
    if p_other > 0:
        y[onset : onset + len(other)] += other * math.sqrt(p_sound / p_other * 10 ** (rng.uniform(*level_db) / 10))
    return _same_peak(y, sound)


# --- training data --------------------------------------------------------------------------------------------------

ROOM_SHARE = 0.5  # training sounds played in a generated room
MICROPHONE_SHARE = 0.5  # training clips (sounds and background-only alike) through a microphone
CODEC_SHARE = 0.3  # and through a codec


def training_sound(rng: np.random.Generator, class_name: str, seconds: float) -> np.ndarray:
    """A sound of `class_name` from one of its training methods or the generator's own (drawn alike), played in a
    generated room for `ROOM_SHARE` of sounds. Held-out methods are never drawn."""
    from clapd.models.synthetic_methods import methods_of

    makers = [synthetic.CLASSES[class_name].make, *(m.make for m in methods_of(class_name, held_out=False))]
    sound = makers[int(rng.integers(len(makers)))](rng, seconds)
    return room(rng, sound) if rng.random() < ROOM_SHARE else sound


def training_colour(rng: np.random.Generator, clip: np.ndarray) -> np.ndarray:
    """A whole clip through a microphone and a codec, each for its share of clips, at its input's peak. Applied to
    background-only clips as much as to sounds, so the colouring never names a class."""
    if rng.random() < MICROPHONE_SHARE:
        clip = microphone(rng, clip)
    if rng.random() < CODEC_SHARE:
        clip = codec(rng, clip)
    return np.asarray(clip, dtype=np.float32)
