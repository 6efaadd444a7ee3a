"""`clapd classify`: scores over time for one recording, to choose prompts and thresholds before deploying."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clapd.daemon.config import DetectionConfig, ModelConfig
from clapd.daemon.inference import AudioModel, TextModel, open_bundle
from clapd.daemon.matcher import Matcher, PromptCache, build_detections
from clapd.daemon.windows import repeat_pad


@dataclass(frozen=True, slots=True)
class ScoreTable:
    prompts: list[str]
    starts: np.ndarray  # [windows] seconds
    ends: np.ndarray  # [windows] seconds
    scores: np.ndarray  # [windows, prompts] in [0, 1]


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


def classify(
    bundle: Path, audio_path: Path, prompts: list[str], background: list[str], window_s: float, hop_s: float
) -> ScoreTable:
    manifest = open_bundle(bundle)
    config = ModelConfig(bundle=bundle, providers=["cpu"], precision="fp32")
    audio_model = AudioModel(bundle, manifest, config)
    cache = PromptCache(TextModel(bundle, manifest, config), None, manifest.text.sha256)
    detections = build_detections({f"p{i}": DetectionConfig(prompts=[p]) for i, p in enumerate(prompts)}, cache)
    matcher = Matcher(detections, cache.embed(background), manifest.logit_scale)
    rate = manifest.sample_rate
    audio = read_audio(audio_path, rate)
    window, hop = int(window_s * rate), int(hop_s * rate)
    starts = list(range(0, max(len(audio) - window, 0) + 1, hop))
    rows = []
    for start in starts:
        clip = audio[start : start + window]
        embedding = audio_model.embed(repeat_pad(clip, manifest.window_samples)[None])[0]
        values = matcher.score("file", embedding)
        rows.append([values[f"p{i}"] for i in range(len(prompts))])
    ends = [min(s + window, len(audio)) for s in starts]
    return ScoreTable(prompts, np.array(starts) / rate, np.array(ends) / rate, np.array(rows).reshape(-1, len(prompts)))


def format_table(table: ScoreTable) -> str:
    header = ["start_s", "end_s", *table.prompts]
    lines = ["\t".join(header)]
    for start, end, row in zip(table.starts, table.ends, table.scores, strict=True):
        lines.append("\t".join([f"{start:.2f}", f"{end:.2f}", *(f"{v:.3f}" for v in row)]))
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
