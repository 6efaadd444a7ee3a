"""`clapd learn-normal`: fill a stream's normal bank from its live source or from recordings of normal operation.

The windows are cut and turned into features exactly as the daemon does (the config's window and hop; sound features, or
the model's embeddings, as the stream's `anomaly.feature` says; the stream's level gate leaves quiet windows out, as the
daemon does not score them), so the bank holds what the daemon will compare against. Several operating conditions
(speeds, loads) are all normal: give recordings of each, the bank keeps them all (subsampled at random to
`anomaly.max_bank_size`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from clapd.daemon.anomaly.bank import BankError, NormalBank
from clapd.daemon.anomaly.monitor import (
    BankStore,
    bank_made_with,
    bank_path,
    fit_bank,
    overlapping_windows,
    window_features,
)
from clapd.daemon.assembly import build_streams, resolve_bundle
from clapd.daemon.classify import read_audio
from clapd.daemon.config import AnomalyConfig, ClapdConfig
from clapd.daemon.inference import AudioModel, open_bundle
from clapd.daemon.loudness import window_level_dbfs
from clapd.daemon.manifest import Manifest, window_samples_for
from clapd.daemon.records import Window
from clapd.daemon.windows import clip_windows

logger = logging.getLogger(__name__)

BATCH_WINDOWS = 8  # windows per model call (embedding banks)
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}
IDLE_WAIT_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class Learnt:
    path: Path
    bank: NormalBank
    windows: int  # turned into features and offered to the bank (before subsampling)


def learn_normal(
    config: ClapdConfig, stream: str, *, seconds: float | None = None, folder: Path | None = None, replace: bool = False
) -> Learnt:
    """Learn `stream`'s bank from `seconds` of its live source or from the audio files in `folder`, and store it in
    the state directory. ValueError (naming what is wrong) for an unknown stream, one without `anomaly:`, no usable
    audio, or a bank already there unless `replace` (a re-baseline)."""
    anomaly = _anomaly_of(config, stream)
    bundle = resolve_bundle(config)
    manifest = open_bundle(bundle)
    window, hop = window_samples_for(config.windows, manifest, bundle=bundle)
    model = AudioModel(bundle, manifest, config.model) if anomaly.feature == "embedding" else None
    made_with = bank_made_with(anomaly, model.entry.sha256 if model is not None else "", manifest.sample_rate)
    store = BankStore(bank_path(config.state_dir, stream), made_with)
    _check_replace(store, replace)
    gate = config.streams[stream].min_level_dbfs
    if folder is not None:
        windows = _folder_windows(folder, manifest.sample_rate, window, hop, manifest.window_samples)
    else:
        assert seconds is not None
        windows = _live_windows(config, stream, manifest, window, hop, seconds)
    heard = (w for w in windows if gate is None or window_level_dbfs(w) >= gate)
    if model is not None:
        rows = _embed(model, heard)
    else:
        rows = _sound_features(anomaly, heard, manifest.sample_rate)
    if rows.shape[0] < anomaly.k + overlapping_windows(window, hop) + 1:
        raise ValueError(f"only {rows.shape[0]} windows of audio above the level gate: learn from more audio")
    bank = fit_bank(anomaly, rows, overlapping_windows(window, hop))
    assert store.path is not None
    store.save(bank)
    logger.info("%s: normal bank of %d windows written to %s", stream, bank.size, store.path)
    return Learnt(store.path, bank, int(rows.shape[0]))


def _anomaly_of(config: ClapdConfig, stream: str) -> AnomalyConfig:
    if stream not in config.streams:
        raise ValueError(f"no stream {stream!r} in the config (streams: {', '.join(config.streams)})")
    anomaly = config.streams[stream].anomaly
    if anomaly is None:
        raise ValueError(f"stream {stream!r} has no `anomaly:` section: add one to monitor it")
    return anomaly


def _check_replace(store: BankStore, replace: bool) -> None:
    assert store.path is not None
    if replace or not store.path.exists():
        return
    try:
        bank = store.load()
        what = f"a bank of {bank.size} embeddings" if bank is not None else "a bank"
    except BankError as e:
        what = f"an unusable bank ({e})"
    raise ValueError(f"{store.path} already holds {what}: give --rebaseline to replace it")


def _folder_windows(folder: Path, rate: int, window: int, hop: int, model_window: int) -> Iterator[Window]:
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    for file in files:
        audio = read_audio(file, rate)
        logger.info("%s: %.1f s", file.name, audio.size / rate)
        yield from clip_windows(file.name, audio, window, hop, model_window)


def _live_windows(
    config: ClapdConfig, stream: str, manifest: Manifest, window: int, hop: int, seconds: float
) -> Iterator[Window]:
    """The stream's windows for `seconds` of its audio (less if a finite source ends first)."""
    only = config.model_copy(update={"streams": {stream: config.streams[stream]}})
    (live,) = build_streams(only, manifest, window, hop, datetime.now(timezone.utc))
    wanted = round(seconds * live.clock.sample_rate)
    live.source.start()
    logger.info("%s: listening for %.0f s of normal operation", stream, seconds)
    try:
        while True:
            due = live.due_windows()
            yield from due
            if (due and due[-1].end_sample >= wanted) or (not due and live.ended()):
                return
            if not due:
                time.sleep(IDLE_WAIT_SECONDS)
    finally:
        live.source.stop()


def _sound_features(anomaly: AnomalyConfig, windows: Iterator[Window], sample_rate: int) -> np.ndarray:
    rows = [window_features(anomaly, w, None, sample_rate) for w in windows]
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


def _embed(model: AudioModel, windows: Iterator[Window]) -> np.ndarray:
    batches, batch = [], []
    for w in windows:
        batch.append(w.samples)
        if len(batch) == BATCH_WINDOWS:
            batches.append(model.embed(np.stack(batch)))
            batch = []
    if batch:
        batches.append(model.embed(np.stack(batch)))
    if not batches:
        return np.zeros((0, 0), np.float32)
    embeddings = np.concatenate(batches).astype(np.float32)
    return embeddings[np.isfinite(embeddings).all(axis=1)]
