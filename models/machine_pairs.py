"""Training pairs of machines running normally, for the demo model (issue 12): a machine type at one operating
condition, captioned by what it is and how it runs, never by a fault.

Anomaly detection scores a window by its distance to normal windows of the same machine, so the embedding must
keep what tells one machine state from another: an embedding trained only on the demo's sound classes maps every
machine to about one point (the engine's hum). Telling machine types and their speeds and loads apart is the
auxiliary task DCASE's anomaly systems train on; faults stay out of training, so the anomaly benchmark's faults are
as new to the model as a user's are.

Clips come from `clapd.models.machine_sounds` with seeds from `SEED_BASE` on, which neither its tests nor
`bench_anomaly.py` (seeds below 3,000,000) use; the background's level varies per clip.
"""

from __future__ import annotations

import numpy as np

from clapd.models import machine_sounds

SEED_BASE = 10_000_000
SEED_SPAN = 10_000_000
BACKGROUND_SNR_DB = (3.0, 20.0)  # machine body over the factory background
LABEL_PREFIX = "machine:"

NOUNS = {
    "fan": ("an electric fan", "a ventilation fan", "an extractor fan"),
    "pump": ("a water pump", "a centrifugal pump", "a pump motor"),
    "gearbox": ("a gearbox", "a geared drive", "a gear reducer"),
    "compressor": ("an air compressor", "a piston compressor", "a compressor unit"),
}
# Conditions by their place among the machine's three (slowest first), so that every type reads alike.
PACES = (
    ("running slowly", "at low speed"),
    ("running at medium speed", "at a moderate load"),
    ("running at full speed", "under heavy load"),
)


def labels() -> list[str]:
    return [label(m, c) for m, machine in machine_sounds.MACHINES.items() for c in machine.condition_names]


def label(machine: str, condition: str) -> str:
    return f"{LABEL_PREFIX}{machine}:{condition}"


def captions(machine_label: str) -> tuple[str, ...]:
    """Every noun with every phrase of the condition's pace: six captions."""
    machine, condition = machine_label.removeprefix(LABEL_PREFIX).split(":")
    pace = PACES[machine_sounds.MACHINES[machine].condition_names.index(condition)]
    return tuple(f"{noun} {phrase}" for noun in NOUNS[machine] for phrase in pace)


def machine_audio(rng: np.random.Generator, machine_label: str, seconds: float) -> np.ndarray:
    """`seconds` of the labelled machine running normally over a factory background at a random SNR."""
    machine, condition = machine_label.removeprefix(LABEL_PREFIX).split(":")
    clip = machine_sounds.machine_clip(
        machine,
        condition,
        SEED_BASE + int(rng.integers(SEED_SPAN)),
        seconds,
        background_snr_db=float(rng.uniform(*BACKGROUND_SNR_DB)),
    )
    return clip.audio
