"""Audio examples: recordings that say what a detection sounds like (`examples`) or must not fire it
(`negative_examples`), checked when the config is read and embedded as the daemon hears audio.

An example entry is an audio file or a folder of them (its audio files, by suffix, not its subfolders). A file is
usable when libsndfile reads it, it lasts `MIN_EXAMPLE_SECONDS` to `MAX_EXAMPLE_SECONDS`, every sample is finite and
its loudest `BLOCK_SECONDS` block reaches `SILENT_DBFS`; anything else is named with its reason, and nothing starts.

Embedding (`ExampleEmbedder`): the file resampled to the model's rate, cut into windows of the configured length
every hop (`clip_windows`: a file shorter than a window gives one repeat-padded window); the windows within
`ACTIVE_WINDOW_DB` of the loudest one (those holding the sound rather than the room around it) are embedded by the
audio model, and their embeddings averaged and renormalised into the example's. It is cached in the state directory,
keyed by the audio model's sha256 (the manifest's, for the precision in use), the file's sha256 and the window
settings; a damaged entry is recomputed with a warning (`clapd.daemon.embedding_cache`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clapd.daemon.detector import Embedder
from clapd.daemon.embedding_cache import EmbeddingFiles
from clapd.daemon.loudness import BLOCK_SECONDS, block_levels_dbfs, rms_dbfs
from clapd.daemon.windows import clip_windows

if TYPE_CHECKING:
    from clapd.daemon.inference import AudioModel
    from clapd.daemon.manifest import Manifest

logger = logging.getLogger(__name__)

MIN_EXAMPLE_SECONDS = 0.1  # shorter than this is a click, not a sound
MAX_EXAMPLE_SECONDS = 60.0  # longer: cut the sound out of the recording
MAX_EXAMPLE_BYTES = 256 * 2**20  # a file larger than this is not read at all
MAX_FOLDER_FILES = 100  # audio files one example folder may hold
SILENT_DBFS = -60.0  # a file whose loudest 100 ms block is below this holds no sound to learn from
ACTIVE_WINDOW_DB = 10.0  # windows this far below the file's loudest hold the room, not the sound: left out
EMBED_BATCH = 8  # windows per model call
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64"})
CACHE_RULE = "active-10dB-v1"  # part of every cache key: a change to how windows become one embedding renews them


class ExampleError(ValueError):
    """An example file or folder that cannot be used; the message names the path and the reason."""


@dataclass(frozen=True, slots=True)
class ExampleAudio:
    """One example file as read: mono, at its own rate."""

    path: Path
    samples: np.ndarray  # float32 mono [n]
    sample_rate: int  # Hz
    sha256: str  # of the file's bytes


def example_files(entry: Path) -> list[Path]:
    """The audio files an example entry stands for: itself, or a folder's audio files in name order."""
    try:
        mode = entry.stat().st_mode
    except FileNotFoundError as e:
        raise ExampleError("no such file or folder") from e
    except (OSError, ValueError) as e:  # a name too long, a NUL in it, a folder not to be entered...
        raise ExampleError(f"cannot look at it: {e}") from e
    if stat.S_ISDIR(mode):
        return _folder_files(entry)
    if not stat.S_ISREG(mode):
        raise ExampleError("not a regular file or a folder")
    return [entry]


def _folder_files(folder: Path) -> list[Path]:
    try:
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith("."))
        found = [p for p in found if p.is_file()]
    except OSError as e:
        raise ExampleError(f"cannot list the folder: {e.strerror or e}") from e
    if not found:
        raise ExampleError(f"the folder holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    if len(found) > MAX_FOLDER_FILES:
        raise ExampleError(f"the folder holds {len(found)} audio files, more than {MAX_FOLDER_FILES}")
    return found


def check_example_entry(entry: Path) -> None:
    """Raise `ExampleError` with the reason unless every file of the entry is a usable example."""
    files = example_files(entry)
    for file in files:
        try:
            read_example(file)
        except ExampleError as e:
            raise ExampleError(str(e) if file == entry else f"{file.name}: {e}") from e


def read_example(path: Path) -> ExampleAudio:
    """The file's audio, mono; `ExampleError` with the reason when it is not a usable example."""
    import soundfile

    try:
        if path.stat().st_size > MAX_EXAMPLE_BYTES:
            raise ExampleError(f"larger than {MAX_EXAMPLE_BYTES // 2**20} MiB: cut the sound out of the recording")
        data = path.read_bytes()
    except OSError as e:
        raise ExampleError(f"cannot read it: {e.strerror or e}") from e
    try:
        info = soundfile.info(io.BytesIO(data))
        if info.frames > MAX_EXAMPLE_SECONDS * info.samplerate:
            raise ExampleError(f"{info.frames / info.samplerate:.1f} s long, more than {MAX_EXAMPLE_SECONDS:g} s")
        audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except ExampleError:
        raise
    except Exception as e:  # libsndfile's errors (RuntimeError), and what a malformed header makes of the rest
        raise ExampleError(f"not audio libsndfile can read: {e}") from e
    mono = audio.mean(axis=1, dtype=np.float32)
    _check_audio(mono, rate)
    return ExampleAudio(path, mono, rate, hashlib.sha256(data).hexdigest())


def _check_audio(mono: np.ndarray, rate: int) -> None:
    seconds = mono.size / rate
    if seconds < MIN_EXAMPLE_SECONDS:
        raise ExampleError(f"too short: {seconds:.3f} s, less than {MIN_EXAMPLE_SECONDS:g} s")
    if seconds > MAX_EXAMPLE_SECONDS:
        raise ExampleError(f"{seconds:.1f} s long, more than {MAX_EXAMPLE_SECONDS:g} s")
    if not np.isfinite(mono).all():
        raise ExampleError("holds NaN or infinite samples")
    loudest = float(block_levels_dbfs(mono, max(1, round(BLOCK_SECONDS * rate))).max())
    if loudest < SILENT_DBFS:
        raise ExampleError(f"silent: its loudest {BLOCK_SECONDS:g} s is {loudest:.1f} dBFS, below {SILENT_DBFS:g}")


class ExampleEmbedder:
    """Example entries -> embeddings, one per file, from memory, the cache files or the audio model.

    `window`, `hop` and `model_window` are in samples at `sample_rate`, the model's rate; `model_sha256` is the audio
    model's (`AudioModel.entry.sha256`). Any thread may call it while audio flows (one at a time): onnxruntime runs a
    session's calls from several threads.
    """

    def __init__(
        self,
        model: Embedder,
        *,
        sample_rate: int,
        window: int,
        hop: int,
        model_window: int,
        cache_dir: Path | None,
        model_sha256: str,
        embedding_size: int | None = None,
        bundle_margin: float | None = None,
    ) -> None:
        self.bundle_margin = bundle_margin  # the model's own (its manifest's): detections' margins default to it
        self._model = model
        self._rate = sample_rate
        self._window, self._hop, self._model_window = window, hop, model_window
        self._files = EmbeddingFiles(cache_dir, "example cache", embedding_size, logger)
        self._settings = f"{model_sha256}\0{sample_rate}\0{window}\0{hop}\0{model_window}\0{CACHE_RULE}"
        self._known: dict[str, np.ndarray] = {}  # file sha256 -> its embedding, read-only
        self._used: set[str] = set()  # file sha256s asked for since the last retain()

    @classmethod
    def for_model(
        cls, audio: AudioModel, manifest: Manifest, window: int, hop: int, cache_dir: Path | None = None
    ) -> ExampleEmbedder:
        """Examples embedded by the bundle's audio model, with windows of `window` samples every `hop`."""
        return cls(
            audio,
            sample_rate=manifest.sample_rate,
            window=window,
            hop=hop,
            model_window=manifest.window_samples,
            cache_dir=cache_dir,
            model_sha256=audio.entry.sha256,
            embedding_size=manifest.embedding_size,
            bundle_margin=manifest.example_margin,
        )

    def embed(self, entries: Iterable[str]) -> np.ndarray:
        """Embeddings [files, dim] of every file the entries stand for; `ExampleError` names a bad one."""
        rows = []
        for entry in entries:
            try:
                files = example_files(Path(entry))
            except ExampleError as e:
                raise ExampleError(f"example {entry}: {e}") from e
            rows.extend(self._embed_file(file) for file in files)
        return np.stack(rows)

    def retain(self) -> None:
        """Forget the embeddings of files not asked for since the last `retain()` (the examples in use), so memory
        stays bounded by them."""
        for sha in [s for s in self._known if s not in self._used]:
            del self._known[sha]
        self._used = set()

    def _embed_file(self, file: Path) -> np.ndarray:
        try:
            audio = read_example(file)
        except ExampleError as e:
            raise ExampleError(f"example {file}: {e}") from e
        self._used.add(audio.sha256)
        if (known := self._known.get(audio.sha256)) is not None:
            return known
        key = f"{self._settings}\0{audio.sha256}"
        embedding = self._files.read(key)
        if embedding is None:
            embedding = self._compute(audio)
            self._files.write(key, embedding)
        else:
            logger.debug("example %s: from the cache", file)
        self._known[audio.sha256] = embedding
        return embedding

    def _compute(self, audio: ExampleAudio) -> np.ndarray:
        samples = audio.samples
        if audio.sample_rate != self._rate:
            import soxr

            samples = soxr.resample(samples, audio.sample_rate, self._rate).astype(np.float32)
        # The windows clip_windows would give, measured on the audio itself: only those holding the sound are padded
        # to the model's input (60 s at a 0.1 s hop would be 600 padded windows of the model's 10 s at once).
        starts = range(0, max(samples.size - self._window, 0) + 1, self._hop)
        levels = np.array([rms_dbfs(samples[start : start + self._window]) for start in starts])
        active = [
            start for start, level in zip(starts, levels, strict=True) if level >= levels.max() - ACTIVE_WINDOW_DB
        ]
        embeddings = np.concatenate(
            [self._embed_windows(samples, active[i : i + EMBED_BATCH]) for i in range(0, len(active), EMBED_BATCH)]
        )
        if not np.isfinite(embeddings).all():
            raise ExampleError(f"example {audio.path}: the audio model's embedding is not finite")
        mean = embeddings.mean(axis=0)
        embedding = (mean / np.linalg.norm(mean)).astype(np.float32)
        if (problem := self._files.problem(embedding)) is not None:
            raise ExampleError(f"example {audio.path}: the audio model's embedding {problem}")
        embedding.setflags(write=False)
        logger.info("example %s: embedded (%d of its %d windows hold the sound)", audio.path, len(active), len(starts))
        return embedding

    def _embed_windows(self, samples: np.ndarray, starts: list[int]) -> np.ndarray:
        """The windows at `starts` as the daemon gives them to the model (repeat-padded), embedded in one call."""
        inputs = [
            clip_windows("example", samples[start : start + self._window], self._window, self._hop, self._model_window)
            for start in starts
        ]
        return np.asarray(self._model.embed(np.stack([w[0].samples for w in inputs])), np.float32)
