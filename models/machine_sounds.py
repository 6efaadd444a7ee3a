"""Procedural machine sounds, normal and faulty, in a factory background: data for anomaly detection.

Numpy and soundfile only (no torch), so the daemon's tests can use it too. Four machine types (`MACHINES`), each
with three operating conditions (shaft speed and load), and five faults (`FAULTS`). Every sound is driven by the
shaft's phase, so the tones, blade passes, gear mesh and impacts of a machine stay locked to its rotation:

  - machine body: rotation harmonics, blade/vane/piston passes and gear mesh from one per-revolution wavetable,
    broadband noise coloured by casing resonances, a motor's 2x-mains hum; a compressor's piston strokes;
  - faults: `bearing` (impulses at a defect frequency of 3-5.5x the shaft rate, each ringing a 2.5-6 kHz resonance),
    `imbalance` (the body modulated at 1x rotation, plus a 1x tone), `gear_whine` (a mesh harmonic at 0.6-4 kHz with
    rotation sidebands), `friction` (broadband rubbing bursts on some revolutions), `leak` (a 2-16 kHz hiss);
  - factory background: other machines' hum, mains hum, distant impacts and pink-to-brown noise.

Per clip, the rotation rate (+-3 %), harmonic weights, resonances and a slow speed wobble are drawn anew. Levels:
  - fault_snr_db: the fault's mean power over its span against the machine body's (which has unit power);
  - background_snr_db: the body's mean power against the background's;
  - level_dbfs: the RMS of the normal part (body plus background); a fault adds to it. Clipped to [-1, 1].
Randomness comes from seeds: body, background and fault each from their own generator seeded by (machine,
condition, seed, part), so the faulty clip of a seed is its normal clip plus the fault.

A long recording of one machine with faults planted at known times, and its CLI: `clapd.models.machine_streams`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from clapd.models.recording import samples

SAMPLE_RATE = 48_000  # Hz, the demo model's rate (as clapd.models.synthetic)
LEVEL_DBFS = -30.0  # dBFS RMS of a clip's normal part
BACKGROUND_SNR_DB = 12.0  # dB: machine body over factory background
FAULT_SNR_DB = 0.0  # dB: a fault over the machine body
HUM_RATE = 6000  # Hz: the background's hum is made at this rate, then interpolated
TABLE = 8192  # points of the per-revolution wavetable (orders up to ~100 keep >= 80 points per cycle)


@dataclass(frozen=True, slots=True)
class Condition:
    """One normal operating condition of a machine."""

    name: str
    rotation_hz: float  # Hz: shaft rate
    load: float  # 0..1: raises the flow noise and the passing tones


@dataclass(frozen=True, slots=True)
class Machine:
    """A machine type: its conditions and the make-up of its sound."""

    name: str
    conditions: tuple[Condition, ...]
    rotation_weights: tuple[float, ...]  # amplitudes of rotation orders 1, 2, ...
    passes: int  # blades, vanes or teeth of the dominant passing tone (an order of rotation)
    pass_weights: tuple[float, ...]  # amplitudes of its harmonics
    teeth: int  # gear teeth on the shaft: the mesh order a worn gear whines at
    noise_band_hz: tuple[float, float]  # the broadband noise's band
    resonances_hz: tuple[float, ...]  # casing resonances colouring that noise
    noise_weight: float  # broadband against tonal power (at load 0.5)
    strokes: int = 0  # piston strokes per revolution (a compressor's clatter); 0: none

    def condition(self, name: str) -> Condition:
        for c in self.conditions:
            if c.name == name:
                return c
        raise ValueError(f"{self.name} has no condition {name!r}; known: {', '.join(self.condition_names)}")

    @property
    def condition_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.conditions)


MACHINES: dict[str, Machine] = {
    m.name: m
    for m in (
        Machine(
            "fan",
            (Condition("low", 12.0, 0.3), Condition("medium", 18.0, 0.5), Condition("high", 25.0, 0.8)),
            (1.0, 0.3, 0.1),
            7,
            (1.0, 0.5, 0.25, 0.1),
            19,
            (80.0, 8000.0),
            (450.0, 1200.0, 2600.0),
            2.0,
        ),
        Machine(
            "pump",
            (Condition("half", 24.5, 0.4), Condition("three_quarter", 36.8, 0.6), Condition("full", 49.0, 0.9)),
            (1.0, 0.5, 0.2, 0.1),
            6,
            (1.0, 0.4, 0.2),
            23,
            (200.0, 5000.0),
            (800.0, 1800.0, 3500.0),
            1.2,
        ),
        Machine(
            "gearbox",
            (Condition("slow", 10.0, 0.3), Condition("medium", 20.0, 0.6), Condition("fast", 30.0, 0.9)),
            (1.0, 0.3),
            31,
            (1.0, 0.4, 0.15),
            31,
            (100.0, 6000.0),
            (1500.0, 3200.0, 5400.0),
            0.4,
        ),
        Machine(
            "compressor",
            (Condition("idle", 12.0, 0.2), Condition("medium", 16.0, 0.5), Condition("full", 20.0, 0.9)),
            (1.0, 0.6, 0.3, 0.15),
            2,
            (1.0, 0.5),
            17,
            (100.0, 6000.0),
            (700.0, 2200.0, 4200.0),
            0.6,
            strokes=2,
        ),
    )
}

# --- building blocks ------------------------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    """Scaled to unit mean power (silence stays silent)."""
    power = float(np.mean(x**2)) if x.size else 0.0
    return x / math.sqrt(power) if power > 0 else x


def _slow(rng: np.random.Generator, n: int, rate_hz: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A smooth random curve of about unit scale, changing `rate_hz` times a second."""
    knots = int(n / sample_rate * rate_hz) + 2
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), rng.standard_normal(knots))


def _noise(
    rng: np.random.Generator, n: int, band: tuple[float, float], resonances: Sequence[float] = (), tilt: float = 0.0
) -> np.ndarray:
    """Unit-power noise band-passed to `band` Hz, power tilted by f**-tilt, with Q~8 resonance peaks."""
    f = np.maximum(np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE), 1.0)
    lo, hi = band
    gain = 1.0 / np.sqrt((1.0 + (lo / f) ** 4) * (1.0 + (f / hi) ** 4)) * np.maximum(f, lo) ** (-tilt / 2)
    if resonances:
        gain *= 0.3 + sum(1.0 / (1.0 + ((f - fr) / (fr / 16)) ** 2) for fr in resonances)
    return _unit(np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * gain, n))


def _periodic(phase: np.ndarray, orders: np.ndarray, amplitudes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """sum_k a_k sin(order_k * phase + random phase_k), read from a one-revolution wavetable (cost independent of
    the number of orders)."""
    spectrum = np.zeros(TABLE // 2 + 1, dtype=complex)
    np.add.at(spectrum, orders, amplitudes * np.exp(1j * rng.uniform(0, 2 * np.pi, len(orders))))
    table = np.fft.irfft(spectrum, TABLE) * TABLE / 2
    position = (phase / (2 * np.pi)) % 1.0 * TABLE
    return np.interp(position, np.arange(TABLE + 1), np.append(table, table[0]))


def _shaft_phase(rng: np.random.Generator, n: int, rotation_hz: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Radians of a shaft turning at about `rotation_hz`, with a small periodic wobble and a slow drift."""
    t = np.arange(n) / sample_rate
    depth, rate = rng.uniform(0.001, 0.01), rng.uniform(0.1, 1.0)  # fraction of the rate; Hz
    wobble = depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)) + 0.002 * _slow(rng, n, 0.5, sample_rate)
    return rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.cumsum(rotation_hz * (1.0 + wobble)) / sample_rate


def _pulses(phase: np.ndarray, order: float, amplitudes: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """An impulse each time `order * phase` completes a cycle, weighted by `amplitudes` (sampled along the signal)
    and ringing `kernel`."""
    n = len(phase)
    cycles = np.floor(order * phase / (2 * np.pi))
    hits = np.nonzero(np.diff(cycles))[0] + 1
    where = (hits[:, None] + np.arange(len(kernel))[None, :]).ravel()
    weights = (amplitudes[hits][:, None] * kernel[None, :]).ravel()
    return np.bincount(where, weights, minlength=n + len(kernel))[:n]


def _ring(rng: np.random.Generator, freq_hz: float, decay_s: float, noisy: float = 0.0) -> np.ndarray:
    """A decaying resonance, optionally mixed with decaying noise, 5 decay times long."""
    t = np.arange(samples(5 * decay_s, SAMPLE_RATE)) / SAMPLE_RATE
    tone = np.sin(2 * np.pi * freq_hz * t + rng.uniform(0, 2 * np.pi))
    return (tone + noisy * rng.standard_normal(len(t))) * np.exp(-t / decay_s)


# --- machines -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Shaft:
    """What a fault needs of the machine it afflicts: the shaft's phase, its rate and the body's sound."""

    phase: np.ndarray  # rad, [n]
    rotation_hz: float  # Hz, mean
    body: np.ndarray  # unit power, [n]
    teeth: int
    orders: frozenset[int]  # the orders of rotation the normal sound holds

    def part(self, a: int, b: int) -> Shaft:
        return replace(self, phase=self.phase[a:b], body=self.body[a:b])


def _body(rng: np.random.Generator, machine: Machine, condition: Condition, n: int) -> Shaft:
    """A machine's normal sound at `condition`, unit power, with its parameters drawn anew."""
    rotation = condition.rotation_hz * rng.uniform(0.97, 1.03)
    phase = _shaft_phase(rng, n, rotation)
    rot_w = np.array(machine.rotation_weights)
    pass_w = np.array(machine.pass_weights) * (0.5 + condition.load)
    orders = np.concatenate([np.arange(1, len(rot_w) + 1), machine.passes * np.arange(1, len(pass_w) + 1)])
    weights = np.concatenate([rot_w, pass_w]) * rng.uniform(0.7, 1.3, len(orders))
    tonal = _unit(_periodic(phase, orders, weights, rng))
    resonances = [r * rng.uniform(0.95, 1.05) for r in machine.resonances_hz]
    noise = _noise(rng, n, machine.noise_band_hz, resonances, tilt=rng.uniform(0.5, 1.0))
    noise *= 1.0 + 0.2 * np.sin(machine.passes * phase)  # flow noise pulses with the blade or vane pass
    level = machine.noise_weight * (0.5 + condition.load) * rng.uniform(0.8, 1.2)
    body = tonal + math.sqrt(level) * _unit(noise)
    mains = float(rng.choice([50.0, 60.0]))  # Hz: a motor hums at twice the mains frequency
    t = np.arange(n) / SAMPLE_RATE
    body += rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * 2 * mains * t + rng.uniform(0, 2 * np.pi))
    if machine.strokes:
        stroke = _ring(rng, rng.uniform(900, 1600), rng.uniform(0.01, 0.03), noisy=1.5)
        amplitudes = 1.0 + 0.15 * rng.standard_normal(n)
        body += math.sqrt(condition.load + 0.3) * _unit(_pulses(phase, machine.strokes, amplitudes, stroke))
    return Shaft(phase, rotation, _unit(body), machine.teeth, frozenset(int(o) for o in orders))


def factory_background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Other machines' hum, mains hum, distant impacts and pink-to-brown noise: unit power."""
    hum = _hum(rng, n)
    impacts = np.zeros(n)
    seconds = n / SAMPLE_RATE
    for start in rng.uniform(0, seconds, rng.poisson(seconds * rng.uniform(0.2, 1.0))):
        second, decay = samples(1.0, SAMPLE_RATE), samples(0.1, SAMPLE_RATE)
        thud = _noise(rng, second, (50.0, 2000.0), tilt=1.0) * np.exp(-np.arange(second) / decay)
        a = samples(start, SAMPLE_RATE)
        impacts[a : a + len(thud)] += rng.lognormal(0, 0.5) * thud[: n - a]
    noise = _noise(rng, n, (20.0, 10_000.0), tilt=rng.uniform(1.0, 2.0))
    parts = (rng.uniform(0.5, 1.0) * _unit(hum), rng.uniform(0.3, 1.0) * _unit(impacts), rng.uniform(0.5, 1.0) * noise)
    return _unit(sum(parts))


def _hum(rng: np.random.Generator, n: int) -> np.ndarray:
    """2-4 other motors (8 harmonics of 15-60 Hz each) and mains hum, made at HUM_RATE (all of it lies below
    500 Hz) and interpolated to SAMPLE_RATE: a few times faster than at the full rate."""
    m = n * HUM_RATE // SAMPLE_RATE + 2
    hum = np.zeros(m)
    for _ in range(rng.integers(2, 5)):
        k = np.arange(1, 9)
        phase = _shaft_phase(rng, m, rng.uniform(15, 60), HUM_RATE)
        hum += rng.uniform(0.2, 1.0) * _periodic(phase, k, k ** -rng.uniform(1.0, 2.0), rng)
    t = np.arange(m) / HUM_RATE
    mains = float(rng.choice([50.0, 60.0]))  # Hz
    hum += sum(rng.uniform(0.1, 0.5) / k * np.sin(2 * np.pi * k * mains * t + rng.uniform(0, 6.3)) for k in (1, 2, 3))
    return np.interp(np.arange(n) * (HUM_RATE / SAMPLE_RATE), np.arange(m), hum)


# --- faults: each (rng, shaft) -> (unit-power sound, its characteristic frequency in Hz or nan) ---------------------


def _bearing(rng: np.random.Generator, shaft: Shaft) -> tuple[np.ndarray, float]:
    order = rng.uniform(3.0, 5.5)  # defect frequency over the shaft rate (ball pass of an outer or inner race)
    amplitudes = 1.0 + rng.uniform(0.2, 0.6) * np.sin(shaft.phase + rng.uniform(0, 2 * np.pi))  # load zone
    amplitudes *= np.exp(0.2 * rng.standard_normal(len(shaft.phase)))
    kernel = _ring(rng, rng.uniform(2500, 6000), rng.uniform(0.0005, 0.0015))
    return _unit(_pulses(shaft.phase, order, amplitudes, kernel)), order * shaft.rotation_hz


def _imbalance(rng: np.random.Generator, shaft: Shaft) -> tuple[np.ndarray, float]:
    sway = np.sin(shaft.phase + rng.uniform(0, 2 * np.pi))
    return _unit(shaft.body * sway + rng.uniform(0.5, 1.0) * sway), shaft.rotation_hz


def _gear_whine(rng: np.random.Generator, shaft: Shaft) -> tuple[np.ndarray, float]:
    # A mesh harmonic at 0.6-4 kHz that the healthy machine does not already sound
    mesh = shaft.teeth * shaft.rotation_hz
    harmonics = [h for h in range(1, int(4000 / mesh) + 1) if h * mesh >= 600 and shaft.teeth * h not in shaft.orders]
    carrier = shaft.teeth * int(rng.choice(harmonics))
    orders = carrier + np.arange(-3, 4)
    amplitudes = np.array([0.2, 0.35, 0.6, 1.0, 0.6, 0.35, 0.2]) * rng.uniform(0.7, 1.3, 7)
    tone = sum(a * np.sin(o * shaft.phase + rng.uniform(0, 2 * np.pi)) for o, a in zip(orders, amplitudes, strict=True))
    return _unit(tone * (1.0 + 0.2 * _slow(rng, len(shaft.phase), 2.0))), carrier * shaft.rotation_hz


def _friction(rng: np.random.Generator, shaft: Shaft) -> tuple[np.ndarray, float]:
    revolution = np.floor(shaft.phase / (2 * np.pi)).astype(int)
    revolution -= revolution[0]
    rubs = (rng.uniform(size=revolution[-1] + 1) < rng.uniform(0.3, 0.8)) * rng.lognormal(0, 0.4, revolution[-1] + 1)
    where, width = rng.uniform(0, 1), rng.uniform(0.1, 0.3)  # of a revolution
    angle = (shaft.phase / (2 * np.pi) - where) % 1.0
    envelope = np.sin(np.pi * np.clip(angle / width, 0, 1)) ** 2 * rubs[revolution]
    return _unit(_noise(rng, len(shaft.phase), (500.0, 14_000.0)) * envelope), math.nan


def _leak(rng: np.random.Generator, shaft: Shaft) -> tuple[np.ndarray, float]:
    n = len(shaft.phase)
    hiss = _noise(rng, n, (rng.uniform(2000, 5000), rng.uniform(10_000, 16_000)))
    return _unit(hiss * (1.0 + 0.1 * _slow(rng, n, 1.0))), math.nan


FaultMaker = Callable[[np.random.Generator, Shaft], tuple[np.ndarray, float]]
FAULTS: dict[str, FaultMaker] = {
    "bearing": _bearing,
    "imbalance": _imbalance,
    "gear_whine": _gear_whine,
    "friction": _friction,
    "leak": _leak,
}


def _rng(machine: str, condition: str, seed: int, part: int) -> np.random.Generator:
    m = MACHINES[machine]
    return np.random.default_rng([list(MACHINES).index(machine), m.condition_names.index(condition), seed, part])


def check_machine(machine: str, condition: str | None, fault: str | None) -> Machine:
    if machine not in MACHINES:
        raise ValueError(f"unknown machine {machine!r}; known: {', '.join(MACHINES)}")
    if condition is not None:
        MACHINES[machine].condition(condition)
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    return MACHINES[machine]


def running(machine: str, condition: str, seed: int, n: int, background_snr_db: float) -> tuple[Shaft, np.ndarray]:
    """`n` samples of `machine` running normally at `condition`: its shaft, and its body plus the factory background
    `background_snr_db` below it (not yet levelled). The same for a clip and a stream of the same seed."""
    shaft = _body(_rng(machine, condition, seed, 0), MACHINES[machine], MACHINES[machine].condition(condition), n)
    background = factory_background(_rng(machine, condition, seed, 1), n)
    return shaft, shaft.body + background * 10 ** (-background_snr_db / 20)


def levelled(normal: np.ndarray, extra: np.ndarray, level_dbfs: float) -> np.ndarray:
    """normal scaled to an RMS of `level_dbfs`, plus `extra` scaled alike; clipped, float32."""
    gain = 10 ** (level_dbfs / 20) / math.sqrt(float(np.mean(normal**2)))
    return np.clip((normal + extra) * gain, -1.0, 1.0).astype(np.float32)


# --- clips ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class MachineClip:
    """One clip of a machine at one operating condition, normal or with one fault, in factory background."""

    audio: np.ndarray  # float32 mono [samples] at SAMPLE_RATE, within [-1, 1]
    machine: str  # a MACHINES key
    condition: str  # one of its conditions
    fault: str | None  # a FAULTS key; None: normal
    seed: int
    rotation_hz: float  # Hz: the shaft's mean rate in this clip
    fault_hz: float  # Hz: the bearing defect frequency or the whine's carrier; nan for other faults and none
    fault_snr_db: float  # dB over the machine body; -inf when normal
    background_snr_db: float  # dB: machine body over background
    level_dbfs: float  # dBFS: RMS of body plus background


def machine_clip(
    machine: str,
    condition: str,
    seed: int,
    seconds: float = 10.0,
    *,
    fault: str | None = None,
    fault_snr_db: float = FAULT_SNR_DB,
    background_snr_db: float = BACKGROUND_SNR_DB,
    level_dbfs: float = LEVEL_DBFS,
) -> MachineClip:
    """`seconds` of `machine` at `condition` (normal, or with `fault` throughout), exactly `round(seconds *
    SAMPLE_RATE)` samples; the same arguments, the same audio, and the faulty clip of a seed is its normal clip
    plus the fault."""
    check_machine(machine, condition, fault)
    n = samples(seconds, SAMPLE_RATE)
    if n < 2:
        raise ValueError(f"a clip needs a positive length, not {seconds} s")
    shaft, normal = running(machine, condition, seed, n, background_snr_db)
    extra, fault_hz, snr = np.zeros(n), math.nan, -math.inf
    if fault is not None:
        sound, fault_hz = FAULTS[fault](_rng(machine, condition, seed, 2 + list(FAULTS).index(fault)), shaft)
        extra, snr = sound * 10 ** (fault_snr_db / 20), fault_snr_db
    audio = levelled(normal, extra, level_dbfs)
    return MachineClip(
        audio, machine, condition, fault, seed, shaft.rotation_hz, fault_hz, snr, background_snr_db, level_dbfs
    )
