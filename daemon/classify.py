"""`clapd classify`: scores over time for one recording, to choose prompts and thresholds before deploying."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from clapd.daemon.anomaly import NormalBank
from clapd.daemon.anomaly.monitor import (
    BankStore,
    Descriptions,
    StreamAnomaly,
    bank_made_with,
    bank_path,
    stored_bank,
)
from clapd.daemon.calibration import AutoThresholds, CalibrationStore, scoring_models
from clapd.daemon.config import AnomalyConfig, ClapdConfig, DetectionConfig, ModelConfig, WindowConfig
from clapd.daemon.demo import DEMO_WINDOWS, installed_demo_bundle
from clapd.daemon.detector import Detector
from clapd.daemon.events import StreamClock
from clapd.daemon.examples import ExampleEmbedder
from clapd.daemon.inference import AudioModel, LazyTextModel, open_bundle
from clapd.daemon.manifest import window_samples_for
from clapd.daemon.mqtt.payloads import EventPayload
from clapd.daemon.prompts import DetectionPreparer
from clapd.daemon.records import DetectionEvent
from clapd.daemon.windows import clip_windows

STREAM = "file"  # the recording's stream name in events
BATCH_WINDOWS = 8  # windows per model call


@dataclass(frozen=True, slots=True)
class ScoreTable:
    prompts: list[str]  # the detections' names, one column each
    starts: np.ndarray  # [windows] seconds
    ends: np.ndarray  # [windows] seconds
    scores: np.ndarray  # [windows, prompts] in [0, 1]
    events: list[DetectionEvent]  # what the daemon would have published for this recording
    anomaly: np.ndarray | None = None  # [windows] normalised anomaly scores (NaN: not scored); None: no monitoring


@dataclass(frozen=True, slots=True)
class Scoring:
    """What to score with: the model and the detections, as a config gives them."""

    bundle: Path
    model: ModelConfig
    detections: Mapping[str, DetectionConfig]
    background: list[str]
    windows: WindowConfig
    min_level_dbfs: float | None = None  # the level gate of the stream the recording stands for
    state_dir: Path | None = None  # where `threshold_on: auto` finds its calibration, and anomaly banks are
    anomaly_stream: str | None = None  # the stream whose anomaly monitoring (and normal bank) scores the recording
    anomaly: AnomalyConfig | None = None


def scoring_from(
    config: ClapdConfig | None,
    *,
    prompts: list[str] | None = None,
    bundle: Path | None = None,
    window_s: float | None = None,
    hop_s: float | None = None,
    background: list[str] | None = None,
    anomaly_stream: str | None = None,
) -> Scoring:
    """What `clapd run` would use with this config (None: the embedded default's model, on the CPU in fp32), with
    the given options laid over it; `prompts` replace the detections, each named by its text.

    The recording stands for every stream of the config: each detection scores it whichever streams it watches, and
    the streams' level gate applies when they share one (`min_level_dbfs`). It is scored for anomalies as
    `anomaly_stream` is (default: the one stream with anomaly monitoring, if only one has it)."""
    demo = installed_demo_bundle()
    gate = None
    if config is not None:
        model, detections = (
            config.model,
            {n: d.model_copy(update={"streams": None}) for n, d in config.detections.items()},
        )
        windows, default_background = config.windows, list(config.background_prompts)
        gate = _shared_gate(config)
    else:
        model = ModelConfig(providers=["cpu"], precision="fp32")
        detections, default_background = {}, _default_background()
        windows = WindowConfig.model_validate(DEMO_WINDOWS if bundle is None else {})
    if prompts:
        detections = {prompt: DetectionConfig(prompts=[prompt]) for prompt in prompts}
    if not detections:
        raise ValueError("nothing to score: give --prompt (one or more) or -c CONFIG")
    if window_s is not None or hop_s is not None:
        changed = {"window_seconds": window_s or windows.window_seconds, "hop_seconds": hop_s or windows.hop_seconds}
        windows = WindowConfig.model_validate(changed)
    chosen = bundle or model.bundle or demo
    if chosen is None:
        raise ValueError("no bundle: give --bundle (this install has no demo bundle)")
    state_dir = config.state_dir if config is not None else None
    monitored = _monitored_stream(config, anomaly_stream)
    anomaly = config.streams[monitored].anomaly if config is not None and monitored is not None else None
    return Scoring(
        chosen, model, detections, background or default_background, windows, gate, state_dir, monitored, anomaly
    )


def _monitored_stream(config: ClapdConfig | None, chosen: str | None) -> str | None:
    monitored = [] if config is None else [n for n, s in config.streams.items() if s.anomaly and s.anomaly.enabled]
    if chosen is not None and chosen not in monitored:
        raise ValueError(f"stream {chosen!r} has no anomaly monitoring (monitored: {', '.join(monitored) or 'none'})")
    return chosen if chosen is not None else (monitored[0] if len(monitored) == 1 else None)


def _shared_gate(config: ClapdConfig) -> float | None:
    gates = {stream.min_level_dbfs for stream in config.streams.values()}
    return gates.pop() if len(gates) == 1 else None


def _default_background() -> list[str]:
    return ClapdConfig.model_fields["background_prompts"].get_default(call_default_factory=True)


def read_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 at `sample_rate`, whatever the file's rate and channels."""
    import soundfile
    import soxr

    try:
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as e:  # soundfile raises LibsndfileError (a RuntimeError) for bad files
        raise ValueError(f"{path}: cannot read audio: {e}") from e
    mono = audio.mean(axis=1)
    return mono if rate == sample_rate else soxr.resample(mono, rate, sample_rate).astype(np.float32)


def classify(audio_path: Path, scoring: Scoring) -> ScoreTable:
    """The recording's windows through the daemon's own `Detector`: the same windows, scores and events."""
    classifier = Classifier(scoring)
    return classifier.score(read_audio(audio_path, classifier.sample_rate))


class Classifier:
    """The model and the prepared detections of a `Scoring`, loaded once, to score any number of recordings."""

    def __init__(self, scoring: Scoring) -> None:
        manifest = open_bundle(scoring.bundle)
        self._window, self._hop = window_samples_for(scoring.windows, manifest, bundle=scoring.bundle)
        self._model_window = manifest.window_samples
        self.audio_model = AudioModel(scoring.bundle, manifest, scoring.model)
        self.sample_rate = manifest.sample_rate
        examples = ExampleEmbedder.for_model(self.audio_model, manifest, self._window, self._hop)
        text = LazyTextModel(scoring.bundle, manifest, scoring.model)
        store = CalibrationStore(scoring.state_dir) if scoring.state_dir is not None else None
        self.scoring_models = scoring_models(self.audio_model.entry.sha256, manifest)  # what a calibration is made with
        self.bundle_margin = manifest.example_margin  # detections with examples score with it by default
        thresholds = AutoThresholds(store, self.scoring_models)
        preparer = DetectionPreparer(
            text, None, manifest.text_side_sha256(), manifest.logit_scale, examples=examples, thresholds=thresholds
        )
        self.detections = preparer.prepare(scoring.detections, scoring.background)
        self._scoring = scoring
        self._bank = self._anomaly_bank(scoring)
        texts = scoring.anomaly.descriptions if scoring.anomaly is not None else []
        self._descriptions = Descriptions.embedded(texts, text.embed)

    def _anomaly_bank(self, scoring: Scoring) -> NormalBank | None:
        """The monitored stream's stored bank (read, never written here); None when none is stored (a learning
        period then learns one from the recording's start, as `clapd run` would)."""
        if scoring.anomaly is None or scoring.anomaly_stream is None or scoring.state_dir is None:
            return None
        path = bank_path(scoring.state_dir, scoring.anomaly_stream)
        return stored_bank(scoring.anomaly_stream, scoring.anomaly, BankStore(path, self._made_with(scoring.anomaly)))

    def _made_with(self, anomaly: AnomalyConfig) -> str:
        return bank_made_with(anomaly, self.audio_model.entry.sha256, self.sample_rate)

    def _anomalies(self, clock: StreamClock) -> dict[str, StreamAnomaly]:
        anomaly = self._scoring.anomaly
        if anomaly is None or (self._bank is None and anomaly.learn_seconds is None):
            return {}
        memory_only = BankStore(None, self._made_with(anomaly))  # learning and drift stay in this run
        monitor = StreamAnomaly(
            STREAM, anomaly, self._bank, memory_only, clock, self._window, self._hop, self._descriptions
        )
        return {STREAM: monitor}

    @property
    def hop_seconds(self) -> float:
        return self._hop / self.sample_rate

    def score(self, audio: np.ndarray) -> ScoreTable:
        """Mono float32 audio at `sample_rate` through a fresh `Detector` (events start from nothing)."""
        clock = StreamClock(datetime.now(timezone.utc), self.sample_rate)
        gates = {STREAM: self._scoring.min_level_dbfs}
        anomalies = self._anomalies(clock)
        detector = Detector(
            self.audio_model, self.detections, {STREAM: clock}, self._hop, gates=gates, anomalies=anomalies
        )
        windows = clip_windows(STREAM, audio, self._window, self._hop, self._model_window)
        scores, events, anomaly = [], [], {}
        for first in range(0, len(windows), BATCH_WINDOWS):
            found = detector.process(windows[first : first + BATCH_WINDOWS])
            scores.extend(found.scores)
            events.extend(found.events)
            anomaly.update({reading.start_sample: reading.score for reading in found.anomalies})
        events.extend(detector.close(STREAM, len(audio)))
        names = list(self._scoring.detections)
        rows = np.array([[s.values[name] for name in names] for s in scores]).reshape(-1, len(names))
        starts = np.array([s.start_sample for s in scores]) / self.sample_rate
        ends = np.array([s.end_sample for s in scores]) / self.sample_rate
        column = np.array([anomaly.get(s.start_sample, np.nan) for s in scores]) if anomalies else None
        return ScoreTable(names, starts, ends, rows, events, column)


def format_json(table: ScoreTable) -> str:
    """Every window's scores (full precision) and the events, as one JSON document."""
    windows = [
        {"start_s": float(start), "end_s": float(end), "scores": dict(zip(table.prompts, map(float, row), strict=True))}
        for start, end, row in zip(table.starts, table.ends, table.scores, strict=True)
    ]
    if table.anomaly is not None:  # NaN (not scored: learning, gated) as null
        for window, value in zip(windows, table.anomaly, strict=True):
            window["anomaly"] = None if np.isnan(value) else float(value)
    events = [json.loads(EventPayload.from_event(e).model_dump_json()) for e in table.events]
    return json.dumps({"windows": windows, "events": events}, indent=1)


def format_table(table: ScoreTable) -> str:
    header = ["start_s", "end_s", *table.prompts, *(["anomaly"] if table.anomaly is not None else [])]
    lines = ["\t".join(header)]
    for i, (start, end, row) in enumerate(zip(table.starts, table.ends, table.scores, strict=True)):
        anomaly = [f"{table.anomaly[i]:.2f}"] if table.anomaly is not None else []
        lines.append("\t".join([f"{start:.2f}", f"{end:.2f}", *(f"{v:.3f}" for v in row), *anomaly]))
    return "\n".join(lines)


def plot(table: ScoreTable, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib: pip install 'clapd[plot]'") from e
    figure, axes = plt.subplots(figsize=(10, 3.5))
    centres = (table.starts + table.ends) / 2
    for column, prompt in enumerate(table.prompts):
        axes.plot(centres, table.scores[:, column], label=prompt)
    axes.set(xlabel="time (s, window centre)", ylabel="score", ylim=(0, 1))
    axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
