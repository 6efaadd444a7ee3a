"""A long recording of one machine at one operating condition with faults planted at known times, and its ground
truth: data for scoring an anomaly detector over time. The machine, background and faults are those of
`clapd.models.machine_sounds`; numpy and soundfile only (no torch).

    python -m clapd.models.machine_streams --machine pump --seed 0 --seconds 120 -o pump.wav  # and pump.json
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from clapd.models.machine_sounds import (
    BACKGROUND_SNR_DB,
    FAULT_SNR_DB,
    FAULTS,
    LEVEL_DBFS,
    MACHINES,
    SAMPLE_RATE,
    check_machine,
    levelled,
    running,
)
from clapd.models.recording import PlannedRecording, add_output_options, samples

FAULT_RAMP_S = 0.1  # s: a planted fault fades in and out within its span
MIN_GAP_S = 5.0  # s: the least normal stretch between planted faults
FAULT_PERIOD_S = 60.0  # s: default_faults plants one fault at [30, 45) s of every such period


@dataclass(frozen=True, slots=True)
class PlannedFault:
    """A fault planted in a stream: the ground truth an anomaly detector is scored against."""

    fault: str  # a FAULTS key
    start_s: float  # s from the stream's start
    end_s: float  # s; the fault (with its fades) fills [start_s, end_s) and nothing of it lies outside
    snr_db: float = FAULT_SNR_DB  # dB over the machine body, over its span


@dataclass(frozen=True, slots=True, eq=False)
class MachineStream(PlannedRecording):
    """A machine running at one condition for a while, faults planted, and the plan."""

    audio: np.ndarray  # float32 mono [samples] at sample_rate, within [-1, 1]
    machine: str
    condition: str
    faults: tuple[PlannedFault, ...]  # in time order, non-overlapping, MIN_GAP_S apart
    seed: int
    background_snr_db: float
    level_dbfs: float
    sample_rate: int = SAMPLE_RATE  # Hz

    def ground_truth(self) -> dict[str, object]:
        fields = ("machine", "condition", "seed", "background_snr_db", "level_dbfs", "sample_rate")
        return {
            **{name: getattr(self, name) for name in fields},
            "seconds": self.seconds,
            "faults": [asdict(f) for f in self.faults],
        }


def default_faults(seconds: float, snr_db: float = FAULT_SNR_DB) -> list[PlannedFault]:
    """One fault at [30, 45) s of every FAULT_PERIOD_S, the fault types in turn, those that end within `seconds`."""
    starts = np.arange(30.0, seconds - 15.0 + 1e-9, FAULT_PERIOD_S)
    return [
        PlannedFault(list(FAULTS)[k % len(FAULTS)], float(s), float(s) + 15.0, snr_db) for k, s in enumerate(starts)
    ]


def check_faults(faults: Sequence[PlannedFault], seconds: float) -> None:
    """Raise ValueError unless the faults are known, inside the stream, in order and MIN_GAP_S apart."""
    previous_end = -math.inf
    for f in faults:
        if f.fault not in FAULTS:
            raise ValueError(f"unknown fault {f.fault!r}; known: {', '.join(FAULTS)}")
        if not 0.0 <= f.start_s < f.end_s <= seconds or f.end_s - f.start_s < 2 * FAULT_RAMP_S:
            raise ValueError(f"{f} does not lie within a {seconds} s stream (or is shorter than its fades)")
        if f.start_s - previous_end < MIN_GAP_S:
            raise ValueError(f"{f} starts less than {MIN_GAP_S} s after the previous fault ends (or overlaps it)")
        previous_end = f.end_s


def make_machine_stream(
    machine: str,
    seed: int,
    seconds: float = 120.0,
    *,
    condition: str | None = None,
    faults: Sequence[PlannedFault] | None = None,
    background_snr_db: float = BACKGROUND_SNR_DB,
    level_dbfs: float = LEVEL_DBFS,
) -> MachineStream:
    """`seconds` of `machine` at `condition` (default: its first) with `faults` (default: `default_faults`) planted.

    The machine and background are those of `machine_clip(machine, condition, seed, seconds)`; each fault comes
    from its own generator seeded by (seed, index) over its span, faded in and out within it."""
    machine_type = check_machine(machine, condition, None)
    condition = condition or machine_type.conditions[0].name
    faults = default_faults(seconds) if faults is None else list(faults)
    check_faults(faults, seconds)
    n = samples(seconds, SAMPLE_RATE)
    shaft, normal = running(machine, condition, seed, n, background_snr_db)
    extra = np.zeros(n)
    ramp_n = samples(FAULT_RAMP_S, SAMPLE_RATE)
    for i, f in enumerate(faults):
        a, b = samples(f.start_s, SAMPLE_RATE), min(samples(f.end_s, SAMPLE_RATE), n)
        sound, _ = FAULTS[f.fault](np.random.default_rng([seed, 100 + i]), shaft.part(a, b))
        ramp = np.clip(np.minimum(np.arange(b - a) + 1, b - a - np.arange(b - a)) / ramp_n, 0, 1)
        extra[a:b] = sound * ramp * 10 ** (f.snr_db / 20)
    audio = levelled(normal, extra, level_dbfs)
    return MachineStream(audio, machine, condition, tuple(faults), seed, background_snr_db, level_dbfs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clapd.models.machine_streams", description=__doc__.splitlines()[0])
    parser.add_argument("--machine", choices=sorted(MACHINES), default="pump")
    parser.add_argument("--condition", help="one of the machine's conditions (default: its first)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--fault-snr-db", type=float, default=FAULT_SNR_DB, help="planted faults over the machine")
    parser.add_argument("--no-faults", action="store_true", help="normal operation only")
    parser.add_argument("--background-snr-db", type=float, default=BACKGROUND_SNR_DB)
    parser.add_argument("--level-dbfs", type=float, default=LEVEL_DBFS, help="RMS of the normal sound")
    add_output_options(parser, "machine.wav")
    args = parser.parse_args(argv)
    faults = [] if args.no_faults else default_faults(args.seconds, args.fault_snr_db)
    try:
        stream = make_machine_stream(
            args.machine,
            args.seed,
            args.seconds,
            condition=args.condition,
            faults=faults,
            background_snr_db=args.background_snr_db,
            level_dbfs=args.level_dbfs,
        )
    except ValueError as e:
        parser.error(str(e))
    wav, truth = stream.write_with_truth(args.output, args.subtype)
    print(f"wrote {wav} ({stream.seconds:.1f} s, {len(stream.faults)} faults) and {truth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
