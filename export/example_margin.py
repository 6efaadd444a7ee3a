"""A bundle's example margin, measured when it is built: how much closer a recording comes to other recordings of
its sound than to its caption (manifest `example_margin`).

A detection's example logit is its cosine with the examples' mean less a margin, so that it competes with text on
the text's scale (`clapd.daemon.matcher`). The right margin is the model's: the demo model shipped until
2026-12-02 matched a recording of a sound at a cosine near 1 and its caption near 0.7, and 0.3 was right for it
(this measures 0.32); a model trained to tell recordings apart (`clapd finetune --audio-contrast`, as the demo
model shipped since then: 0.53) matches its captions at near 0.3 and other recordings at 0.7 to 0.95, and at 0.3
the examples of one such model (cand5) fired on other sounds 2 to 7 times as often as at the 0.51 this measures
for it (bench_fewshot, 2026-12-02). So the build measures
the gap on labelled recordings of its own training sounds, each scored as the daemon scores an example: windows of
the daemon's length, repeat-padded to the model's input, against the mean of `REFERENCE_RECORDINGS` others.

A bundle built from another checkpoint (`clapd export` of LAION's or a fine-tuned model) has no labelled
recordings at hand; `clapd example-margin BUNDLE FOLDER` measures its margin on the user's own (`labelled_recordings`:
one subfolder per sound, named by its caption), each embedded as the daemon embeds an example file
(`clapd.daemon.examples.ExampleEmbedder`), so the bundle's detections stop falling back to 0.3.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clapd.daemon.config import ModelConfig
from clapd.daemon.examples import ExampleEmbedder, ExampleError, example_files, read_example
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


class MarginSourceError(ValueError):
    """Labelled recordings that cannot measure a margin; the message names the folder or file and the reason."""


def labelled_recordings(folder: Path) -> dict[str, list[Path]]:
    """Caption -> recordings of that sound: each subfolder of `folder` is one sound, its name (underscores read as
    spaces) the caption, its audio files the recordings, each checked as an example file is."""
    try:
        subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise MarginSourceError(f"{folder}: cannot list it: {e.strerror or e}") from e
    if not subfolders:
        raise MarginSourceError(f"{folder}: no subfolders (one folder of recordings per sound, named by its caption)")
    labelled = {}
    for subfolder in subfolders:
        try:
            files = example_files(subfolder)
        except ExampleError as e:
            raise MarginSourceError(f"{subfolder}: {e}") from e
        if len(files) <= REFERENCE_RECORDINGS:
            raise MarginSourceError(
                f"{subfolder}: {len(files)} recordings; a sound needs more than {REFERENCE_RECORDINGS}"
            )
        for file in files:
            try:
                read_example(file)
            except ExampleError as e:
                raise MarginSourceError(f"{file}: {e}") from e
        caption = subfolder.name.replace("_", " ")
        if caption in labelled:
            raise MarginSourceError(f"{subfolder}: another subfolder names the same caption, {caption!r}")
        labelled[caption] = files
    return labelled


def _models(bundle_dir: Path) -> tuple[Manifest, AudioModel, TextModel]:
    """The daemon's own models of the bundle (default precision, on the CPU)."""
    manifest = open_bundle(bundle_dir)
    config = ModelConfig(bundle=bundle_dir, providers=["cpu"])
    return manifest, AudioModel(bundle_dir, manifest, config), TextModel(bundle_dir, manifest, config)


def _median_gap(text: TextModel, embedded: Iterable[tuple[str, np.ndarray]]) -> float:
    """The median over sounds (caption, its recordings' unit embeddings) of `sound_gap`."""
    gaps = [sound_gap(recordings, _unit(text.embed([caption])[0])) for caption, recordings in embedded]
    return round(float(np.median(gaps)), DECIMALS)


def measure(bundle_dir: Path, sounds: Mapping[str, Sound]) -> float:
    """The median over sounds of `sound_gap`, each recording one window repeat-padded to the model's input."""
    manifest, audio, text = _models(bundle_dir)
    embedded = []
    for sound in sounds.values():
        windows = np.stack([np.resize(r, manifest.window_samples) for r in sound.recordings]).astype(np.float32)
        embedded.append((sound.caption, _unit(audio.embed(windows))))
    return _median_gap(text, embedded)


def measure_recordings(
    bundle_dir: Path, labelled: Mapping[str, Sequence[Path]], window_seconds: float, hop_seconds: float
) -> float:
    """The median over sounds of `sound_gap`, each recording embedded as the daemon embeds an example file with
    windows of `window_seconds` (at most the model's input) every `hop_seconds`."""
    manifest, audio, text = _models(bundle_dir)
    window = min(round(window_seconds * manifest.sample_rate), manifest.window_samples)
    hop = min(round(hop_seconds * manifest.sample_rate), window)
    embedder = ExampleEmbedder.for_model(audio, manifest, window, hop)
    return _median_gap(text, ((caption, embedder.embed(str(f) for f in files)) for caption, files in labelled.items()))


def record(bundle_dir: Path, margin: float, how: str) -> Manifest:
    """Write `margin` into the bundle's manifest, with a note saying how it was measured."""
    manifest = Manifest.read(bundle_dir)
    note = f"example_margin {margin:g}: {how}"
    notes = [n for n in manifest.notes if not n.startswith("example_margin ")] + [note]
    updated = manifest.model_copy(update={"example_margin": margin, "notes": notes})
    updated.write(bundle_dir)
    return updated
