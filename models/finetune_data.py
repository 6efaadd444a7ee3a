"""Training data for `clapd finetune`: (audio, captions) pairs from a CSV, a folder tree, or the sound generator.

Numpy only (no torch), so benchmarks can share the demo's caption split without the export extras. Every pair's
audio is mono float32 at 48 kHz, exactly one model window long: shorter clips are repeat-padded as the reference
does, longer ones cropped at a seeded random offset.

Two layouts on disk:
  - a CSV with a header naming `path` and `caption` (and optionally `label`); paths are relative to the CSV;
  - a folder ROOT whose sub-folders hold the audio files (`ROOT/<label>/*.wav`, also .flac/.ogg/.mp3): the
    sub-folder's name is the label and, with underscores read as spaces, the caption; a `captions.txt` in a
    sub-folder replaces that caption with its non-empty lines (one is drawn per training step).
Pairs with the same label are positives of each other in the loss; without a label column, the caption is the label.
"""

from __future__ import annotations

import csv
import logging
import math
import multiprocessing
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile
import soxr

from clapd.daemon.windows import repeat_pad
from clapd.models import machine_pairs, synthetic, synthetic_channel

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48_000  # Hz: every CLAP checkpoint's rate
WINDOW_SAMPLES = 480_000  # samples: the model's fixed 10 s input
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff")
CAPTIONS_FILE = "captions.txt"

# The synthetic demo data. Levels are set at training time in the feature domain (`gain_jitter_db`), so every clip
# is written at one peak level; durations are drawn the same for every class, so neither can name the class.
SYNTHETIC_PEAK_DBFS = -20.0  # dBFS: each clip's peak before the level jitter
# Lengths are log-uniform, as many of 1-2 s as of 5-10 s: 30 % of sounds last at most 2 s and 9 % of clips are
# 1-2 s windows repeat-padded. Uniform lengths gave 11 % and 2 %, and the demo model missed short sounds (knocks
# repeat-padded from a 1 s window read as an engine's hum).
SOUND_SECONDS = (1.0, 10.0)  # s: one occurrence's length, for every class alike
SHORT_CLIP_SHARE = 0.3  # clips shorter than the window (1-10 s, repeat-padded), as a short daemon window sees
# A short daemon window sliding over a stream mostly holds part of a sound, cut by its edges, next to background:
# untrained, such windows (the tail of a siren in a 2 s window) woke other detections.
MIN_PART_S = 0.25  # s: the least of a sound a short clip holds
AUDIBLE_PART = 0.01  # the least mean power of that part, against the whole sound's (-20 dB)
CUT_TRIES = 8  # draws of a part before the sound is placed wholly inside instead
CHUNK_CLIPS = 64  # clips per generation task, each task seeded on its own: results do not depend on the workers
BEDS_PER_CHUNK = 6  # background beds a task generates and reuses with random shifts
SOUND_USES = 2  # clips mixed from each generated sound
BACKGROUND_LABEL = "background:"  # prefix of the labels of background-only clips
STOP_WORDS = frozenset("a an the of on in at to for from by with and is be you".split())


class DataError(Exception):
    """Training data that cannot be used; the message is one line naming the file (and row) and the reason."""


@dataclass(frozen=True, slots=True)
class Pair:
    """One training example."""

    audio: np.ndarray  # float32 [WINDOW_SAMPLES] mono at SAMPLE_RATE
    captions: tuple[str, ...]  # descriptions of this audio; training draws one per step
    label: str  # pairs that share a label are positives of each other


@dataclass(frozen=True, slots=True)
class PairSource:
    """A pair before its audio is read."""

    path: Path
    captions: tuple[str, ...]
    label: str


@dataclass(frozen=True, slots=True)
class BadFile:
    path: Path
    reason: str  # "missing", "unreadable: ...", "no samples", "non-finite samples"


class PairDataset(Protocol):
    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Pair]: ...

    def prompts(self) -> dict[str, str]:
        """The zero-shot prompt of each label."""
        ...

    def corpus(self) -> list[str]:
        """Every training caption (a from-scratch tokenizer is trained on them)."""
        ...


# --- files ----------------------------------------------------------------------------------------------------------


def read_audio(path: Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A file's audio as mono float32 at `sample_rate` (channels averaged, resampled with soxr); `DataError` if bad."""
    if not path.is_file():
        raise DataError(f"{path}: missing")
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as e:
        raise DataError(f"{path}: unreadable: {e}") from e
    if data.size == 0:
        raise DataError(f"{path}: no samples")
    mono = data.mean(axis=1)
    if not np.isfinite(mono).all():
        raise DataError(f"{path}: non-finite samples")
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate)
    return np.asarray(mono, dtype=np.float32)


def fit_window(audio: np.ndarray, rng: np.random.Generator, window_samples: int = WINDOW_SAMPLES) -> np.ndarray:
    """Repeat-pad a short clip; crop a long one at a random offset."""
    if len(audio) > window_samples:
        start = int(rng.integers(0, len(audio) - window_samples + 1))
        return audio[start : start + window_samples]
    return repeat_pad(audio, window_samples)


def read_csv(csv_path: Path) -> list[PairSource]:
    """Rows of `path,caption[,label]`; an empty path or caption is an error that names its line."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "caption"} <= set(reader.fieldnames):
                raise DataError(f"{csv_path}: needs a header line with 'path' and 'caption' columns")
            sources = [_csv_row(csv_path, reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{csv_path}: cannot read it ({e})") from e
    if not sources:
        raise DataError(f"{csv_path}: no rows")
    return sources


def _csv_row(csv_path: Path, line: int, row: dict[str, str | None]) -> PairSource:
    path, caption = (row.get("path") or "").strip(), (row.get("caption") or "").strip()
    if not path:
        raise DataError(f"{csv_path}: line {line}: empty path")
    if not caption:
        raise DataError(f"{csv_path}: line {line}: empty caption")
    label = (row.get("label") or "").strip() or caption
    return PairSource(csv_path.parent / path, (caption,), label)


def read_folders(root: Path) -> list[PairSource]:
    """`ROOT/<label>/<audio files>`; the caption is the label with spaces for underscores, or `captions.txt`."""
    sources: list[PairSource] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        captions = _folder_captions(folder)
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        sources += [PairSource(path, captions, folder.name) for path in files]
    if not sources:
        raise DataError(f"{root}: no audio files in sub-folders (expected {root}/<label>/*.wav)")
    return sources


def _folder_captions(folder: Path) -> tuple[str, ...]:
    listed = folder / CAPTIONS_FILE
    if listed.is_file():
        captions = tuple(line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip())
        if not captions:
            raise DataError(f"{listed}: empty caption list")
        return captions
    caption = " ".join(folder.name.replace("_", " ").split())
    if not caption:
        raise DataError(f"{folder}: the folder name gives an empty caption; add a {CAPTIONS_FILE}")
    return (caption,)


@dataclass(slots=True)
class PairsDataset:
    """Pairs read from files; bad audio is skipped and counted (`bad_files`), or fatal with `strict`."""

    sources: list[PairSource]
    strict: bool = False
    seed: int = 0
    bad_files: list[BadFile] = field(default_factory=list)

    @classmethod
    def open(cls, location: Path, *, strict: bool = False, seed: int = 0) -> PairsDataset:
        if location.is_file():
            return cls(read_csv(location), strict=strict, seed=seed)
        if location.is_dir():
            return cls(read_folders(location), strict=strict, seed=seed)
        raise DataError(f"{location}: no such CSV file or folder")

    def __len__(self) -> int:
        return len(self.sources)

    def __iter__(self) -> Iterator[Pair]:
        self.bad_files = []
        rng = np.random.default_rng(self.seed)
        for source in self.sources:
            try:
                audio = fit_window(read_audio(source.path), rng)
            except DataError as e:
                if self.strict:
                    raise
                self.bad_files.append(BadFile(source.path, str(e).removeprefix(f"{source.path}: ")))
                logger.warning("skipping %s", e)
                continue
            yield Pair(audio, source.captions, source.label)

    def split(self, val_fraction: float, seed: int) -> tuple[PairsDataset, PairsDataset]:
        """A seeded random split into training and validation pairs."""
        order = np.random.default_rng(seed).permutation(len(self.sources))
        n_val = int(round(val_fraction * len(order)))
        train, val = sorted(order[n_val:]), sorted(order[:n_val])
        return self._subset(train), self._subset(val)

    def _subset(self, index: list[int]) -> PairsDataset:
        return PairsDataset([self.sources[i] for i in index], strict=self.strict, seed=self.seed)

    def prompts(self) -> dict[str, str]:
        return {s.label: " ".join(s.label.replace("_", " ").split()) for s in self.sources}

    def corpus(self) -> list[str]:
        return sorted({c for s in self.sources for c in s.captions})

    def bad_summary(self) -> str:
        """One line: how many files were skipped and why, naming the first few."""
        if not self.bad_files:
            return "no bad audio files"
        shown = "; ".join(f"{b.path} ({b.reason})" for b in self.bad_files[:3])
        more = f"; and {len(self.bad_files) - 3} more" if len(self.bad_files) > 3 else ""
        return f"skipped {len(self.bad_files)} of {len(self.sources)} audio files: {shown}{more}"


# --- generated ------------------------------------------------------------------------------------------------------


def split_captions(captions: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """(training captions, held-out prompt) of a class.

    The held-out prompt is the caption whose words the class's other captions cover best (the first on a tie):
    usually the plain description a user would write ("a dog barking"), said in training only in other phrasings
    ("barking from a dog"). It measures rephrasing; the generator's paraphrases, in words no caption uses,
    measure new words.
    """

    def coverage(i: int) -> float:
        others = {w for j, caption in enumerate(captions) if j != i for w in _content_words(caption)}
        words = _content_words(captions[i])
        return sum(w in others for w in words) / max(1, len(words))

    held_out = max(range(len(captions)), key=lambda i: (coverage(i), -i))
    return captions[:held_out] + captions[held_out + 1 :], captions[held_out]


def _content_words(caption: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", caption.lower()) if w not in STOP_WORDS]


def synthetic_labels() -> list[str]:
    """Every sound class, then every background-only kind."""
    return [*synthetic.CLASSES, *(BACKGROUND_LABEL + name for name in synthetic.BACKGROUNDS)]


def synthetic_captions(label: str) -> tuple[str, ...]:
    """Training captions of a label: a class's captions less its held-out one; a background's all (the daemon's
    background prompts are of these words)."""
    if label.startswith(BACKGROUND_LABEL):
        return synthetic.BACKGROUND_CAPTIONS[label.removeprefix(BACKGROUND_LABEL)]
    return split_captions(_all_captions(label))[0]


def _all_captions(label: str) -> tuple[str, ...]:
    """A sound class's or a machine label's captions, the held-out one included."""
    if label.startswith(machine_pairs.LABEL_PREFIX):
        return machine_pairs.captions(label)
    return synthetic.CLASSES[label].captions


@dataclass(frozen=True, slots=True)
class SyntheticDataset:
    """`count` clips from `clapd.models.synthetic`, balanced over its classes and backgrounds.

    `part` keeps streams apart: the same seed with another part (validation) shares no sound and no noise with it.
    Generation runs in `workers` processes, in chunks seeded by (seed, part, chunk).
    """

    count: int
    seed: int = 0
    part: int = 0
    workers: int = 1
    # Issue 15: the share of sounds made by `synthetic_channel.training_sound` (other synthesis methods, rooms) and
    # of clips coloured by a microphone and codec; 0 draws nothing more, so the shipped demo's data stays the same.
    methods_share: float = 0.0
    # Issue 12: the share of clips that are a machine running normally (`machine_pairs`), labelled by machine type
    # and operating condition; 0 draws nothing more.
    machines_share: float = 0.0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Pair]:
        chunks = [
            (self.seed, self.part, k, min(CHUNK_CLIPS, self.count - k * CHUNK_CLIPS), *self._shares)
            for k in self._chunks()
        ]
        if self.workers <= 1:
            for chunk in chunks:
                yield from synthetic_chunk(*chunk)
            return
        # spawn: the parent may hold torch's threads, which fork would copy in an unusable state.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=context) as pool:
            for pairs in pool.map(synthetic_chunk, *zip(*chunks, strict=True)):
                yield from pairs

    def _chunks(self) -> range:
        return range(math.ceil(self.count / CHUNK_CLIPS))

    @property
    def _shares(self) -> tuple[float, float]:
        return self.methods_share, self.machines_share

    def _labels(self) -> list[str]:
        return [*synthetic_labels(), *(machine_pairs.labels() if self.machines_share else [])]

    def prompts(self) -> dict[str, str]:
        prompts = {}
        for label in self._labels():
            if label.startswith(BACKGROUND_LABEL):
                prompts[label] = synthetic_captions(label)[0]
            else:
                prompts[label] = split_captions(_all_captions(label))[1]
        return prompts

    def corpus(self) -> list[str]:
        return sorted({c for label in self._labels() for c in synthetic_captions(label)})


def synthetic_chunk(
    seed: int, part: int, chunk: int, size: int, methods_share: float = 0.0, machines_share: float = 0.0
) -> list[Pair]:
    """`size` clips; clip i of the whole set is of class i % (classes + 1), the last meaning background only.

    Each generated sound is mixed into `SOUND_USES` clips (another bed, shift, SNR and onset each time): the
    generators dominate the cost, the mixing is cheap.
    """
    rng = np.random.default_rng([seed, part, chunk])
    labels = [*synthetic.CLASSES, BACKGROUND_LABEL]
    beds = [_background_bed(rng) for _ in range(BEDS_PER_CHUNK)]
    pairs: list[Pair] = []
    sound = np.zeros(0, np.float32)
    for i in range(size):
        if machines_share and rng.random() < machines_share:
            pairs.append(_machine_pair(rng, methods_share))
            continue
        label = labels[((chunk * CHUNK_CLIPS + i) // SOUND_USES) % len(labels)]
        kind, bed = beds[int(rng.integers(len(beds)))]
        if label == BACKGROUND_LABEL:
            clip = _coloured(rng, _mixed(rng, None, bed), methods_share)
            pairs.append(Pair(clip, synthetic_captions(label + kind), label + kind))
            continue
        if i % SOUND_USES == 0 or not len(sound):
            seconds = _log_uniform(rng, *SOUND_SECONDS)
            if methods_share and rng.random() < methods_share:
                sound = synthetic_channel.training_sound(rng, label, seconds)
            else:
                sound = synthetic.CLASSES[label].make(rng, seconds)
        pairs.append(Pair(_coloured(rng, _mixed(rng, sound, bed), methods_share), synthetic_captions(label), label))
    return pairs


def _machine_pair(rng: np.random.Generator, methods_share: float) -> Pair:
    """A machine running normally (`machine_pairs`), as long as another clip (short ones repeat-padded), at the
    peak level of the other clips, coloured like them."""
    label = str(rng.choice(machine_pairs.labels()))
    short = rng.random() < SHORT_CLIP_SHARE
    seconds = _log_uniform(rng, 1.0, 10.0) if short else WINDOW_SAMPLES / SAMPLE_RATE
    audio = machine_pairs.machine_audio(rng, label, seconds)
    clip = repeat_pad(synthetic.mix(audio[:0], audio, 0.0, SYNTHETIC_PEAK_DBFS), WINDOW_SAMPLES)  # to the peak
    return Pair(_coloured(rng, clip, methods_share), synthetic_captions(label), label)


def _coloured(rng: np.random.Generator, clip: np.ndarray, methods_share: float) -> np.ndarray:
    """`methods_share` of clips through a microphone and codec (`synthetic_channel.training_colour`)."""
    if not methods_share or rng.random() >= methods_share:
        return clip
    return synthetic_channel.training_colour(rng, clip)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _background_bed(rng: np.random.Generator) -> tuple[str, np.ndarray]:
    weights = synthetic.BACKGROUND_WEIGHTS
    kind = str(rng.choice(list(weights), p=list(weights.values())))
    return kind, synthetic.BACKGROUNDS[kind](rng, WINDOW_SAMPLES / SAMPLE_RATE)


def _mixed(rng: np.random.Generator, sound: np.ndarray | None, bed: np.ndarray) -> np.ndarray:
    """`sound` (or nothing) at a random onset and SNR over a shifted, sign-flipped bed, in a clip of the full window
    (the sound wholly inside) or, for `SHORT_CLIP_SHARE` of clips, of 1-10 s repeat-padded (`_cut`)."""
    short = rng.random() < SHORT_CLIP_SHARE
    length = int(_log_uniform(rng, 1.0, 10.0) * SAMPLE_RATE) if short else WINDOW_SAMPLES
    background = (np.roll(bed, int(rng.integers(len(bed))))[:length] * rng.choice([-1.0, 1.0])).astype(np.float32)
    if sound is None:
        return repeat_pad(synthetic.mix(background[:0], background, 0.0, SYNTHETIC_PEAK_DBFS), WINDOW_SAMPLES)
    piece, onset = _cut(rng, sound, length) if short else _inside(rng, sound, length)
    snr = float(rng.uniform(*synthetic.SNR_RANGE_DB))
    return repeat_pad(synthetic.mix(piece, background, snr, SYNTHETIC_PEAK_DBFS, onset), WINDOW_SAMPLES)


def _inside(rng: np.random.Generator, sound: np.ndarray, length: int) -> tuple[np.ndarray, int]:
    """The sound (a random `length` of a longer one) and its onset in a `length`-sample clip."""
    if len(sound) > length:
        start = int(rng.integers(len(sound) - length + 1))
        sound = sound[start : start + length]
    return sound, int(rng.integers(0, length - len(sound) + 1))


def _cut(rng: np.random.Generator, sound: np.ndarray, length: int) -> tuple[np.ndarray, int]:
    """What a `length`-sample window sliding over a stream sees of `sound`: the part inside it and its onset.

    The window's start is uniform over the places where it holds at least `MIN_PART_S` of the sound (all of a
    shorter one), so the sound often overhangs an edge, cut hard. A part much quieter than the whole (a pause
    in a ring or between knocks) is drawn again: its label would name a sound that is not there.
    """
    keep = min(int(MIN_PART_S * SAMPLE_RATE), len(sound), length)
    power = float(np.mean(np.square(sound, dtype=np.float64)))
    for _ in range(CUT_TRIES):
        start = int(rng.integers(keep - len(sound), length - keep + 1))  # the sound's start in the window
        piece = sound[max(0, -start) : length - start]
        if float(np.mean(np.square(piece, dtype=np.float64))) >= AUDIBLE_PART * power:
            return piece, max(0, start)
    return _inside(rng, sound, length)
