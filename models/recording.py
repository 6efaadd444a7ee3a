"""What the generated recordings with a plan share (`demo_stream.DemoStream`, `machine_streams.MachineStream`):
seconds to samples, the WAV and its ground truth in a JSON file beside it, and the CLI options that write them.

Numpy and soundfile only (no torch), as the generators that use it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile


def samples(seconds: float, sample_rate: int) -> int:
    """The sample index (or count) nearest `seconds`."""
    return round(seconds * sample_rate)


class PlannedRecording:
    """Mixin for a frozen dataclass with `audio` (float32 mono, within [-1, 1]) at `sample_rate` and a plan that
    `ground_truth` describes."""

    __slots__ = ()
    audio: np.ndarray
    sample_rate: int  # Hz

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    def ground_truth(self) -> dict[str, object]:
        raise NotImplementedError

    def ground_truth_json(self) -> str:
        return json.dumps(self.ground_truth(), indent=2)

    def write_wav(self, path: str | Path, subtype: str = "FLOAT") -> Path:
        """Write the audio; the default 32-bit float keeps it bit-exact ("PCM_16" for players that want it)."""
        path = Path(path)
        soundfile.write(path, self.audio, self.sample_rate, subtype=subtype)
        return path

    def write_with_truth(self, path: str | Path, subtype: str = "FLOAT") -> tuple[Path, Path]:
        """The WAV at `path` and the ground truth as JSON beside it (same name, .json); returns both paths."""
        wav = self.write_wav(path, subtype)
        truth = wav.with_suffix(".json")
        truth.write_text(self.ground_truth_json() + "\n")
        return wav, truth


def add_output_options(parser: argparse.ArgumentParser, default: str) -> None:
    """--subtype and -o/--output, as `PlannedRecording.write_with_truth` takes them."""
    parser.add_argument("--subtype", default="FLOAT", help="soundfile subtype: FLOAT (exact) or PCM_16")
    parser.add_argument("-o", "--output", type=Path, default=Path(default), help="the .json goes beside it")
