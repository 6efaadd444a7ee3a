"""`clapd calibrate` as a command: the ambient audio from a file or recorded from a configured stream, the
`--sound` recordings checked against the thresholds, the report printed and the thresholds stored
(`clapd.daemon.calibrate` chooses them)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clapd.daemon.calibrate import calibrate, format_report, scoring_for_calibration
from clapd.daemon.calibration import CalibrationStore
from clapd.daemon.classify import Classifier, read_audio
from clapd.daemon.config import ClapdConfig
from clapd.daemon.examples import ExampleError, example_files
from clapd.daemon.manifest import BundleError
from clapd.daemon.ring import RingBuffer
from clapd.daemon.sources import SourceError, build_source

logger = logging.getLogger(__name__)

MAX_RECORD_MINUTES = 24 * 60
MIN_AMBIENT_SECONDS = 30.0  # shorter ambient audio says too little about the room
RECORD_RING_SECONDS = 30  # what a recording source may get ahead of the copy loop
RECORD_POLL_SECONDS = 0.05


def record_ambient(config: ClapdConfig, stream: str, seconds: float, sample_rate: int) -> np.ndarray:
    """`seconds` of the stream's audio from its own source (microphone, pipe or file), at the model's rate; less if
    the source ends first. `SourceError` when it cannot start."""
    ring = RingBuffer(RECORD_RING_SECONDS * sample_rate)
    source = build_source(stream, config.streams[stream], ring, sample_rate)
    wanted = round(seconds * sample_rate)
    parts, taken = [], 0
    source.start()
    try:
        while taken < wanted:
            available = min(ring.total_written, wanted, taken + ring.capacity // 2) - taken
            if available > 0:
                parts.append(ring.read(taken, available).copy())
                taken += available
                ring.mark_consumed(taken)
            elif source.status().state in ("finished", "failed"):
                break
            else:
                time.sleep(RECORD_POLL_SECONDS)
    finally:
        source.stop()
    logger.info("recorded %.1f s of %s", taken / sample_rate, stream)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def sound_files(entries: Sequence[str], config: ClapdConfig) -> dict[str, list[Path]]:
    """--sound DETECTION=FILE arguments (FILE: an audio file or a folder of them) by detection; ValueError names a
    malformed one, an unknown or level detection, or a missing file."""
    sounds: dict[str, list[Path]] = {}
    models = [name for name, d in config.detections.items() if d.level is None]
    for entry in entries:
        name, equals, file = entry.partition("=")
        if not equals or not name or not file:
            raise ValueError(f"--sound {entry!r}: expected DETECTION=FILE")
        if name not in models:
            raise ValueError(f"--sound {entry!r}: no model detection {name!r} (the config has {', '.join(models)})")
        try:
            files = example_files(Path(file))  # a file, or a folder's audio files, as for examples
        except ExampleError as e:
            raise ValueError(f"--sound {entry!r}: {e}") from e
        sounds.setdefault(name, []).extend(files)
    return sounds


def run_calibration(
    config: ClapdConfig,
    *,
    file: Path | None,
    minutes: float | None,
    stream: str | None,
    store: bool,
    sounds: Sequence[str] = (),
) -> int:
    """`clapd calibrate`: 0 when thresholds were chosen (and stored), 2 for bad arguments, 1 when it failed."""
    if minutes is not None and not 0 < minutes <= MAX_RECORD_MINUTES:
        return _refuse(f"--minutes must be above 0 and at most {MAX_RECORD_MINUTES}", 2)
    try:
        own_sounds = sound_files(sounds, config)
    except ValueError as e:
        return _refuse(str(e), 2)
    name = stream or next(iter(config.streams))
    if name not in config.streams:
        return _refuse(f"--stream {name!r}: no such stream (the config has {', '.join(config.streams)})", 2)
    try:
        classifier = Classifier(scoring_for_calibration(config))
        if file is not None:
            audio = read_audio(file, classifier.sample_rate)
        else:
            assert minutes is not None
            audio = record_ambient(config, name, 60 * minutes, classifier.sample_rate)
        if len(audio) < MIN_AMBIENT_SECONDS * classifier.sample_rate:
            return _refuse(
                f"{len(audio) / classifier.sample_rate:.1f} s of ambient audio: at least "
                f"{MIN_AMBIENT_SECONDS:.0f} s is needed",
                1,
            )
        report = calibrate(classifier, audio, config, own_sounds)
        print(format_report(report))
        if store and report.chosen:
            source = str(file) if file is not None else f"{minutes} min of stream {name}"
            store_at = CalibrationStore(config.state_dir)
            store_at.save(classifier.scoring_models, report.chosen, source)
            print(f"stored in {store_at.path}: detections with `threshold_on: auto` use them from their next start")
    except (BundleError, SourceError, ValueError, RuntimeError, OSError) as e:
        return _refuse(str(e), 1)
    return 0


def _refuse(message: str, code: int) -> int:
    print(f"clapd calibrate: {message}", file=sys.stderr)
    return code
