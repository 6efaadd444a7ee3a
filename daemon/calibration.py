"""Thresholds chosen from the room's own sound (`clapd calibrate`), kept in `state_dir` and applied where a detection
says `threshold_on: auto`.

A calibration belongs to the models that scored it (`scoring_models`: the audio model's sha256, as another model or
another precision of it scores otherwise, and the text side's, as prompts are scored against it) and to each
detection as it was calibrated: everything that moves its scores or its count of event starts (prompts, examples,
negatives, margin, smoothing, timing, the background prompts, the target rate) is hashed into a fingerprint. A
detection with `threshold_on: auto` whose calibration is missing or was made with other models or for another
version of it is refused with the command that fixes it, as any bad setting is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from clapd.daemon.config import DetectionConfig
from clapd.daemon.manifest import Manifest
from clapd.daemon.matcher import margins_for
from clapd.daemon.state_files import read_json, write_json_atomically

CALIBRATION_FILE = "calibration.json"  # in the state directory
FORMAT_VERSION = 2  # 1 named the audio model only: its calibrations are refused, as made with other models
OFF_SHARE = 0.7  # an auto threshold_off is at most this share of the chosen threshold_on (the default 0.35 / 0.5)
# The fields that change a detection's scores or how many events they start; display-only ones (name) are left out.
FINGERPRINT_FIELDS = (
    "prompts",
    "negative_prompts",
    "examples",
    "negative_examples",
    "example_margin",
    "negative_example_margin",
    "smoothing_windows",
    "min_duration_seconds",
    "cooldown_seconds",
    "false_alarms_per_day",
    "threshold_off",
)


class CalibrationError(ValueError):
    """A detection asks for `threshold_on: auto` and no usable calibration is stored for it."""


@dataclass(frozen=True, slots=True)
class AmbientScores:
    """A detection's smoothed score over the ambient recording."""

    p50: float
    p99: float
    max: float


@dataclass(frozen=True, slots=True)
class ChosenThreshold:
    """What `clapd calibrate` chose for one detection, and why."""

    fingerprint: str
    threshold_on: float
    threshold_off: float
    starts_per_day: float | None  # expected on audio like the ambient recording at threshold_on; None: unknown
    method: str  # observed | extrapolated | capped | above_ambient | floor | ceiling: see clapd.daemon.calibrate
    ambient: AmbientScores


def fingerprint(config: DetectionConfig, background: Sequence[str], bundle_margin: float | None = None) -> str:
    """sha256 of what a calibration depends on: the detection's scoring and timing fields and the background. Its
    margins as it scores with them (`margins_for`: a detection with examples takes the bundle's margin unless it
    sets its own; one without examples the defaults, so its calibration is the same whatever the bundle declares)."""
    fields = {name: getattr(config, name) for name in FINGERPRINT_FIELDS}
    fields["example_margin"], fields["negative_example_margin"] = margins_for(config, bundle_margin)
    fields["background"] = list(background)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def scoring_models(audio_sha256: str, manifest: Manifest) -> str:
    """What a calibration's scores were made with: the audio model (this precision) and the whole text side (the
    text model, and the sentence encoder in front of it if any): a bundle whose text side changed scores prompts
    otherwise although its audio model is the same file."""
    return f"{audio_sha256}+{manifest.text_side_sha256()}"


def auto_threshold_off(config: DetectionConfig, threshold_on: float) -> float:
    """The configured threshold_off, lowered under an auto threshold_on that came out below it."""
    return min(config.threshold_off, round(OFF_SHARE * threshold_on, 4))


class CalibrationStore:
    """`state_dir/calibration.json`: the chosen thresholds made with one set of models, by detection."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / CALIBRATION_FILE

    def load(self, models: str) -> dict[str, ChosenThreshold]:
        """The stored thresholds made with these models (`scoring_models`); none if the file is missing or was made
        with others.
        A file that cannot be read or parsed raises `CalibrationError` naming it."""
        try:
            data = read_json(self.path)
        except (OSError, ValueError) as e:
            raise CalibrationError(f"{self.path}: cannot read the calibration: {e}") from e
        if data is None:
            return {}
        try:
            if not isinstance(data, dict) or data.get("models") != models:
                return {}
            return {name: _chosen(entry) for name, entry in data["detections"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"{self.path}: not a calibration clapd wrote ({e}); run `clapd calibrate`") from e

    def save(self, models: str, chosen: Mapping[str, ChosenThreshold], source: str) -> None:
        """Store `chosen`, keeping other detections' thresholds made with the same models."""
        kept = self.load(models) if self.path.exists() else {}
        merged = {**kept, **chosen}
        write_json_atomically(
            self.path,
            {
                "version": FORMAT_VERSION,
                "models": models,
                "source": source,
                "detections": {name: asdict(entry) for name, entry in sorted(merged.items())},
            },
        )


def _chosen(entry: dict) -> ChosenThreshold:
    ambient = AmbientScores(**entry.pop("ambient"))
    chosen = ChosenThreshold(ambient=ambient, **entry)
    if not 0.0 < chosen.threshold_on < 1.0 or not 0.0 <= chosen.threshold_off <= chosen.threshold_on:
        raise ValueError(f"thresholds out of range: {chosen.threshold_on}, {chosen.threshold_off}")
    return chosen


class AutoThresholds:
    """Replaces `threshold_on: auto` by the stored calibration of each detection (`resolve`); without a store
    (`clapd classify` without a config), every auto threshold is refused."""

    def __init__(self, store: CalibrationStore | None, models: str) -> None:
        self._store = store
        self._models = models  # `scoring_models`

    def resolve(
        self, detections: Mapping[str, DetectionConfig], background: Sequence[str], bundle_margin: float | None = None
    ) -> dict[str, DetectionConfig]:
        """The detections with every auto threshold made a number; `CalibrationError` names each one that cannot be.
        `bundle_margin`: the manifest's `example_margin`, which detections with examples score with by default."""
        auto = {name: config for name, config in detections.items() if config.threshold_on == "auto"}
        if not auto:
            return dict(detections)
        needed = self._store is not None and any(c.level is None for c in auto.values())
        stored = self._store.load(self._models) if needed and self._store is not None else {}
        where = self._store.path if self._store is not None else "(no state directory)"
        resolved, problems = dict(detections), []
        for name, config in auto.items():
            if config.level is not None:  # a level detection's score is 0 or 1: any threshold between will do
                resolved[name] = config.model_copy(update={"threshold_on": 0.5, "threshold_off": 0.0})
                continue
            chosen = stored.get(name)
            if chosen is None or chosen.fingerprint != fingerprint(config, background, bundle_margin):
                why = "no calibration for it" if chosen is None else "it changed since it was calibrated"
                problems.append(
                    f"detections.{name}.threshold_on = 'auto': {why} with this model in {where}; "
                    "run `clapd calibrate -c CONFIG --file AMBIENT.wav` (or --minutes N)"
                )
                continue
            threshold_on = chosen.threshold_on
            update = {"threshold_on": threshold_on, "threshold_off": auto_threshold_off(config, threshold_on)}
            resolved[name] = config.model_copy(update=update)
        if problems:
            raise CalibrationError("; ".join(problems))
        return resolved
