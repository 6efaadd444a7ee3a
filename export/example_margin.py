"""A bundle's example margin, measured when it is built: how much closer a recording comes to other recordings of
its sound than to its caption (manifest `example_margin`).

A detection's example logit is its cosine with the examples' mean less a margin, so that it competes with text on
the text's scale (`clapd.daemon.matcher`). The right margin is the model's: the demo model matches a recording
of a sound at a cosine near 1 and its caption near 0.7, and 0.3 was right for it (this measures 0.32); a model
trained to tell recordings apart (`clapd finetune --audio-contrast`) matches its captions at near 0.3 and other
recordings at 0.7 to 0.95, and at 0.3 its examples fired on other sounds 2 to 7 times as often as at the 0.51 this
measures for it (bench_fewshot, 2026-12-02). So the build measures
the gap on labelled recordings of its own training sounds, each scored as the daemon scores an example: windows of
the daemon's length, repeat-padded to the model's input, against the mean of `REFERENCE_RECORDINGS` others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clapd.daemon.config import ModelConfig
from clapd.daemon.inference import AudioModel, TextModel, open_bundle
from clapd.daemon.manifest import Manifest

REFERENCE_RECORDINGS = 3  # other recordings averaged into the reference, as a detection with 3 examples does
DECIMALS = 2


@dataclass(frozen=True, slots=True)
class Sound:
    """Recordings of one sound (mono, at the bundle's rate, at most a window long each) and its caption."""

    recordings: Sequence[np.ndarray]
    caption: str


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def sound_gap(recordings: np.ndarray, caption: np.ndarray) -> float:
    """Mean over recordings [n, dim] (unit) of: cosine with the mean of the next `REFERENCE_RECORDINGS` others
    (in turn), less cosine with the caption's embedding [dim]."""
    n = len(recordings)
    if n <= REFERENCE_RECORDINGS:
        raise ValueError(f"a sound needs more than {REFERENCE_RECORDINGS} recordings to measure a margin, got {n}")
    gaps = []
    for i in range(n):
        others = [(i + k) % n for k in range(1, REFERENCE_RECORDINGS + 1)]
        reference = _unit(recordings[others].mean(axis=0))
        gaps.append(float(recordings[i] @ reference) - float(recordings[i] @ caption))
    return float(np.mean(gaps))


def measure(bundle_dir: Path, sounds: Mapping[str, Sound]) -> float:
    """The median over sounds of `sound_gap`, through the daemon's own models (default precision on the CPU)."""
    manifest = open_bundle(bundle_dir)
    config = ModelConfig(bundle=bundle_dir, providers=["cpu"])
    audio, text = AudioModel(bundle_dir, manifest, config), TextModel(bundle_dir, manifest, config)
    gaps = []
    for sound in sounds.values():
        windows = np.stack([np.resize(r, manifest.window_samples) for r in sound.recordings]).astype(np.float32)
        gaps.append(sound_gap(_unit(audio.embed(windows)), _unit(text.embed([sound.caption])[0])))
    return round(float(np.median(gaps)), DECIMALS)


def record(bundle_dir: Path, margin: float, how: str) -> Manifest:
    """Write `margin` into the bundle's manifest, with a note saying how it was measured."""
    manifest = Manifest.read(bundle_dir)
    note = f"example_margin {margin:g}: {how}"
    notes = [n for n in manifest.notes if not n.startswith("example_margin ")] + [note]
    updated = manifest.model_copy(update={"example_margin": margin, "notes": notes})
    updated.write(bundle_dir)
    return updated
