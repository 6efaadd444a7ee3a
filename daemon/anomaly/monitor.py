"""One stream's anomaly monitoring inside the Detector: its bank, its event tracker, its publishing rate limit, its
learning period and its drift update. Synchronous, fed one window (and its embedding) at a time in the stream's
order, so `clapd classify` and `clapd run` give the same scores. A window is compared by its sound features
(`clapd.daemon.anomaly.features`) or by its embedding, as the stream's `anomaly.feature` says; descriptions are
always matched by the embedding.

Events go through the detections' own `DetectionTracker` (smoothing, hysteresis, minimum duration, cooldown) under
the configured event name, so outputs see ordinary `DetectionEvent`s whose scores are normalised anomaly scores.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clapd.daemon.anomaly.bank import BankError, NormalBank, unit_rows
from clapd.daemon.anomaly.features import features_id, sound_features
from clapd.daemon.config import AnomalyConfig, StreamConfig
from clapd.daemon.events import DetectionTracker, StreamClock
from clapd.daemon.records import AnomalyReading, DetectionEvent, Window

logger = logging.getLogger(__name__)

BANK_DIR = "normal-banks"  # in the state directory: one `<stream>.npz` per monitored stream
SECONDS_PER_HOUR = 3600.0


def bank_path(state_dir: Path, stream: str) -> Path:
    return state_dir / BANK_DIR / f"{stream}.npz"


def overlapping_windows(window: int, hop: int) -> int:
    """How many windows either side of one share audio with it (`NormalBank.fit`'s `exclude_neighbours`)."""
    return max(0, math.ceil(window / hop) - 1)


def bank_made_with(anomaly: AnomalyConfig, bundle_sha256: str, sample_rate: int) -> str:
    """What a stream's bank rows are made with, stored in the bank: the sound features' version and rate, or the
    sha256 of the audio model whose embeddings they are."""
    return features_id(sample_rate) if anomaly.feature == "sound" else bundle_sha256


def window_features(
    anomaly: AnomalyConfig, window: Window, embedding: np.ndarray | None, sample_rate: int
) -> np.ndarray:
    """The vector a stream's bank compares for `window`: its sound features over its real samples (not the
    repeat-padding), or its embedding."""
    if anomaly.feature == "sound":
        return sound_features(window.samples[: window.end_sample - window.start_sample], sample_rate)
    if embedding is None:
        raise ValueError("anomaly.feature is `embedding` but the window was not embedded")
    return embedding


def fit_bank(anomaly: AnomalyConfig, rows: np.ndarray, exclude_neighbours: int) -> NormalBank:
    """A bank of `rows` (window features in time order) with the stream's settings and its feature's metric."""
    return NormalBank.fit(
        rows,
        k=anomaly.k,
        max_size=anomaly.max_bank_size,
        exclude_neighbours=exclude_neighbours,
        whiten=anomaly.feature == "sound",
    )


def anomaly_events(streams: Mapping[str, StreamConfig]) -> list[tuple[str, str]]:
    """(stream, anomaly event name) of every stream with anomaly monitoring enabled."""
    return [(name, c.anomaly.event) for name, c in streams.items() if c.anomaly is not None and c.anomaly.enabled]


def build_anomalies(
    streams: Mapping[str, StreamConfig],
    state_dir: Path | None,
    clocks: Mapping[str, StreamClock],
    bundle_sha256: str,
    window: int,
    hop: int,
    embed_text: Callable[[list[str]], np.ndarray] | None = None,
) -> dict[str, StreamAnomaly]:
    """Each stream with `anomaly.enabled`: its monitoring, with the bank stored in `state_dir` (None: keep none);
    `embed_text` embeds the streams' `anomaly.descriptions` (None: events carry none).

    Raises `BankError` for a stored bank that cannot be used (another model's), and ValueError for a stream with
    neither a bank nor a learning period: both name the stream, the file and what to do."""
    monitors = {}
    for name, config in streams.items():
        anomaly = config.anomaly
        if anomaly is None or not anomaly.enabled:
            continue
        made_with = bank_made_with(anomaly, bundle_sha256, clocks[name].sample_rate)
        store = BankStore(bank_path(state_dir, name) if state_dir is not None else None, made_with)
        bank = stored_bank(name, anomaly, store)
        descriptions = Descriptions.embedded(anomaly.descriptions, embed_text) if embed_text is not None else None
        monitors[name] = StreamAnomaly(name, anomaly, bank, store, clocks[name], window, hop, descriptions)
    return monitors


def stored_bank(stream: str, anomaly: AnomalyConfig, store: BankStore) -> NormalBank | None:
    """The stream's stored bank; None when there is none and a learning period will make one. `BankError` for a
    bank that cannot be used, ValueError when there is neither a bank nor a learning period."""
    bank = store.load()
    if bank is None and anomaly.learn_seconds is None:
        raise ValueError(
            f"stream {stream!r} has anomaly monitoring but no normal bank ({store.path}): learn one with "
            f"`clapd learn-normal -c CONFIG --stream {stream} --minutes N` (or --from FOLDER), or set "
            f"streams.{stream}.anomaly.learn_seconds"
        )
    if bank is not None:
        logger.info("%s: normal bank of %d windows loaded from %s", stream, bank.size, store.path)
    return bank


@dataclass(frozen=True, slots=True)
class Descriptions:
    """A stream's `anomaly.descriptions` and their text embeddings ((n, d) float32, unit rows)."""

    texts: tuple[str, ...]
    embeddings: np.ndarray

    @classmethod
    def embedded(cls, texts: Sequence[str], embed: Callable[[list[str]], np.ndarray]) -> Descriptions | None:
        """None for no texts; else their embeddings by `embed` (the text model's)."""
        return cls(tuple(texts), unit_rows(embed(list(texts)))) if texts else None

    def best(self, embedding: np.ndarray) -> str:
        """The text whose embedding is closest (cosine) to a window's audio embedding."""
        return self.texts[int(np.argmax(self.embeddings @ unit_rows(embedding[None, :])[0]))]


@dataclass(frozen=True, slots=True)
class AnomalyStatus:
    """A stream's anomaly monitoring as metrics read it (from another thread: plain values only)."""

    stream: str
    score: float | None  # the last window's normalised score; None before the first (or while learning)
    bank_size: int  # 0 while there is no bank
    learning: bool
    updates: dict[str, int]  # "learnt": banks fitted by the daemon; "admitted": windows added by the drift update


@dataclass(frozen=True, slots=True)
class AnomalyRules:
    """A stream's anomaly settings as the event tracker reads them (`clapd.daemon.events.EventRules`)."""

    threshold_on: float
    threshold_off: float
    smoothing_windows: int
    min_duration_seconds: float
    cooldown_seconds: float
    level: None = None

    @classmethod
    def of(cls, config: AnomalyConfig) -> AnomalyRules:
        return cls(
            config.threshold,
            config.threshold_off,
            config.smoothing_windows,
            config.min_duration_seconds,
            config.cooldown_seconds,
        )


@dataclass(frozen=True, slots=True)
class BankStore:
    """Where a stream's bank is kept, and what its rows are made with (`bank_made_with`); `path` None: in memory
    only (`clapd classify`)."""

    path: Path | None
    made_with: str

    def load(self) -> NormalBank | None:
        """The stored bank, None when there is none; `BankError` for one that cannot be used."""
        if self.path is None:
            return None
        try:
            return NormalBank.load(self.path, made_with=self.made_with)
        except FileNotFoundError:
            return None

    def save(self, bank: NormalBank) -> None:
        if self.path is not None:
            bank.save(self.path, made_with=self.made_with)

    def version(self) -> tuple[int, int, int] | None:
        """The stored file's (inode, modification time in ns, size): what tells a file another process wrote
        (`clapd learn-normal --rebaseline`) from the one this process last loaded or saved (each save is a new
        file renamed into place); None: no file."""
        if self.path is None:
            return None
        try:
            status = self.path.stat()
        except FileNotFoundError:
            return None
        return status.st_ino, status.st_mtime_ns, status.st_size


class StreamAnomaly:
    """One stream: windows and their embeddings in, `AnomalyReading`s and anomaly events out.

    Without a bank, it learns one from the first `learn_seconds` of audio (or the seconds a re-baseline asks for),
    scoring nothing meanwhile. `updates` counts what changed the bank: `learnt` (a bank fitted here), `admitted`
    (windows added by the drift update) and `reloaded` (a bank another process stored, taken at a reload or instead
    of overwriting it with a drift update)."""

    def __init__(
        self,
        stream: str,
        config: AnomalyConfig,
        bank: NormalBank | None,
        store: BankStore,
        clock: StreamClock,
        window: int,
        hop: int,
        descriptions: Descriptions | None = None,
    ) -> None:
        self.stream, self.config = stream, config
        self._descriptions = descriptions
        # (score, embedding) of the highest window of the run of scores that is, or may become, an event
        self._run_peak: tuple[float, np.ndarray] | None = None
        self._description: str | None = None  # the event in progress's
        self.bank = bank
        self._store = store
        self._stored_version = store.version() if bank is not None else None  # the file this process knows
        self._clock = clock
        self._hop = hop
        self._exclude = overlapping_windows(window, hop)
        self._tracker = DetectionTracker(stream, config.event, AnomalyRules.of(config), clock, hop)
        self._interval = round(config.publish_interval_seconds * clock.sample_rate)  # samples between due readings
        self._last_due: int | None = None
        self._peak = 0.0  # highest score since the last due reading
        self._learn_seconds = config.learn_seconds if bank is None else None
        self._learn_until: int | None = None  # sample where learning ends (set by the first window)
        self._learnt: list[np.ndarray] = []
        self._drift_spacing = round(SECONDS_PER_HOUR / config.drift.max_per_hour * clock.sample_rate)
        self._next_admit = 0
        self.updates: Counter[str] = Counter(learnt=0, admitted=0, reloaded=0)  # every key made here: read elsewhere
        self.last_score: float | None = None

    @property
    def needs_embedding(self) -> bool:
        """Whether `feed` needs the window's embedding: compared by it, or matched against descriptions."""
        return self.config.feature == "embedding" or self._descriptions is not None

    @property
    def learning(self) -> bool:
        return self._learn_seconds is not None

    def status(self) -> AnomalyStatus:
        bank = self.bank
        size = bank.size if bank is not None else 0
        return AnomalyStatus(self.stream, self.last_score, size, self.learning, dict(self.updates))

    def feed(self, window: Window, embedding: np.ndarray | None) -> tuple[AnomalyReading | None, list[DetectionEvent]]:
        """One window and its embedding (None: not embedded; only when not `needs_embedding`): its reading (None
        while learning) and the anomaly events it started or ended."""
        features = window_features(self.config, window, embedding, self._clock.sample_rate)
        if self._learn_seconds is not None:
            self._learn(window, features)
            return None, []
        if self.bank is None:
            return None, []
        score = float(self.bank.score(features[None, :])[0])
        self.last_score = score
        self._follow_run(score, embedding)
        events = self._described(self._tracker.feed(score, window.start_sample, window.end_sample))
        self._peak = max(self._peak, score)
        due = self._last_due is None or window.end_sample - self._last_due >= self._interval
        reading = AnomalyReading(
            self.stream, window.start_sample, window.end_sample, score, self._peak, self.bank.size, due
        )
        if due:
            self._last_due, self._peak = window.end_sample, 0.0
        self._drift(window, features, score)
        return reading, events

    def close(self, end_sample: int) -> list[DetectionEvent]:
        """The stream's audio ended at `end_sample`: an anomaly in progress ends there."""
        return self._described(self._tracker.close(end_sample))

    def _follow_run(self, score: float, embedding: np.ndarray | None) -> None:
        """Keep the highest-scoring window since the scores rose above `threshold_off` (what an event describes)."""
        if self._descriptions is None or embedding is None:
            return
        if score < self.config.threshold_off and not self._tracker.active:
            self._run_peak = None
        elif self._run_peak is None or score > self._run_peak[0]:
            self._run_peak = (score, embedding)

    def _described(self, events: list[DetectionEvent]) -> list[DetectionEvent]:
        """Events with the description best matching the run's highest window (chosen at the start, kept to the end)."""
        if self._descriptions is None:
            return events
        described = []
        for event in events:
            if event.kind == "start" and self._run_peak is not None:
                self._description = self._descriptions.best(self._run_peak[1])
            described.append(dataclasses.replace(event, description=self._description))
            if event.kind == "end":
                self._description, self._run_peak = None, None
        return described

    def relearn(self, seconds: float, end_sample: int) -> list[DetectionEvent]:
        """Re-baseline: learn a new bank from the next `seconds` of audio (normal operation), replacing the current
        one once learnt; an anomaly in progress ends at `end_sample`, and nothing is scored while learning."""
        logger.info("%s: re-baselining the normal bank from the next %.0f s of audio", self.stream, seconds)
        self._learn_seconds, self._learn_until, self._learnt = seconds, None, []
        self.last_score = None  # the old bank's: not this stream's score now
        return self._described(self._tracker.close(end_sample))

    def reload_stored(self, end_sample: int) -> list[DetectionEvent]:
        """Take the stored bank if another process has written it since this one last loaded or saved it (`clapd
        learn-normal --rebaseline` beside a running daemon); an anomaly in progress ends at `end_sample`, as the
        scores change scale. A file that cannot be used is reported and the current bank stays."""
        if not self._stored_elsewhere():
            return []
        try:
            bank = self._store.load()
        except BankError as e:
            logger.error(
                "%s: the stored normal bank changed but cannot be used (%s); the current one stays", self.stream, e
            )
            self._stored_version = self._store.version()
            return []
        if bank is None:
            return []
        self._learn_seconds, self._learn_until, self._learnt = None, None, []
        self.bank, self._stored_version, self.last_score = bank, self._store.version(), None
        self.updates["reloaded"] += 1
        logger.info("%s: normal bank reloaded from %s: %d windows", self.stream, self._store.path, bank.size)
        return self._described(self._tracker.close(end_sample))

    def _stored_elsewhere(self) -> bool:
        version = self._store.version()
        return version is not None and version != self._stored_version

    def _learn(self, window: Window, features: np.ndarray) -> None:
        assert self._learn_seconds is not None
        if self._learn_until is None:
            self._learn_until = window.start_sample + round(self._learn_seconds * self._clock.sample_rate)
            logger.info("%s: learning normal operation for %.0f s", self.stream, self._learn_seconds)
        self._learnt.append(np.array(features, dtype=np.float32))
        if window.end_sample < self._learn_until or len(self._learnt) < self.config.k + self._exclude + 1:
            return
        rows = np.stack(self._learnt)
        bank = fit_bank(self.config, rows, self._exclude)
        self._learn_seconds, self._learn_until, self._learnt = None, None, []
        self._install(bank, f"learnt from {len(rows)} windows")
        self.updates["learnt"] += 1

    def _drift(self, window: Window, features: np.ndarray, score: float) -> None:
        """The slow update: a clearly normal window, while no anomaly is in progress, at most `max_per_hour`."""
        drift = self.config.drift
        if not drift.enabled or score >= drift.admit_below or window.start_sample < self._next_admit:
            return
        if self._tracker.active or self.bank is None:
            return
        self._next_admit = window.start_sample + self._drift_spacing
        if self._stored_elsewhere():  # a new baseline written beside us: take it, never overwrite it
            self.reload_stored(window.start_sample)
            return
        self.bank = self.bank.admit(features[None, :], max_size=self.config.max_bank_size, seed=window.start_sample)
        self.updates["admitted"] += 1
        logger.info("%s: drift update admitted a window scored %.2f (bank %d)", self.stream, score, self.bank.size)
        self._save()

    def _install(self, bank: NormalBank, how: str) -> None:
        self.bank = bank
        logger.info(
            "%s: normal bank %s: %d windows, reference distance %.4f", self.stream, how, bank.size, bank.reference
        )
        self._save()

    def _save(self) -> None:
        assert self.bank is not None
        try:
            self._store.save(self.bank)
            self._stored_version = self._store.version()
        except OSError as e:  # a full or read-only disk: scoring goes on with the bank in memory
            logger.error("%s: cannot save the normal bank (%s); it is kept in memory only", self.stream, e)
