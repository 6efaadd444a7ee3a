"""Accuracy of the shipped demo bundle on held-out generated clips, through the daemon's own onnxruntime path.

The clips come from `clapd.models.synthetic` with seeds that training never uses ([BENCH_SEED, set, index]; the
build draws [seed, part, chunk] with seed 0), so every parameter draw and every noise sample is new. Prompts:
  - held-out: the caption of each class that the build keeps out of training (`finetune_data.split_captions`: the
    plain description, "a dog barking", whose words training sees only in other phrasings);
  - paraphrases: each class's paraphrases, in words no caption uses (their embeddings averaged): reported only.
Zero-shot accuracy: each clip's nearest class prompt is its class (10 classes, chance 10 %); a second figure adds
the daemon's default background prompts as wrong answers, as a detection must beat them. Text-to-audio R@1:
the clips are dealt into galleries of one clip per class; each class prompt's top clip in its gallery is the
right one. Level and length: the same sound over the same background mixed at -30 and at -6 dBFS peak, and
sounds lasting 1 s and 10 s in a 10 s window (and a 1 s clip repeat-padded, the daemon's shortest window).

    .venv/bin/python benchmarks/bench_demo_accuracy.py --write docs/benchmarks.md
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import arg_parser, header_lines, publish

from clapd.daemon.config import ClapdConfig, ModelConfig
from clapd.daemon.inference import AudioModel, TextModel, open_bundle
from clapd.daemon.manifest import Manifest
from clapd.daemon.windows import repeat_pad
from clapd.models import synthetic
from clapd.models.finetune_data import split_captions

BUNDLE = Path(__file__).resolve().parents[1] / "clapd" / "demo_bundle"
BENCH_SEED = 20_261_127  # never a training seed
SAMPLE_RATE = synthetic.SAMPLE_RATE  # Hz
WINDOW_SECONDS = 10.0  # s: the daemon's default window
SNR_DB = (5.0, 30.0)  # dB: level and length sets, a clearly present sound
THREADS = 2
START, END = "<!-- bench_demo_accuracy:start -->", "<!-- bench_demo_accuracy:end -->"
PACKAGES = ("onnxruntime", "numpy")
WANT_ZERO_SHOT, WANT_RECALL = 0.95, 0.90
BACKGROUND_PROMPTS: list[str] = ClapdConfig.model_fields["background_prompts"].get_default(call_default_factory=True)


@dataclass(frozen=True, slots=True)
class ClipSet:
    """Held-out clips of one condition: windows [n, window_samples] and their class names."""

    name: str
    windows: np.ndarray
    classes: list[str]


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    clips: int
    zero_shot: float  # held-out prompts
    zero_shot_background: float  # the same, with the daemon's background prompts as further (wrong) answers
    paraphrase: float
    recall_at_1: float  # text -> audio, galleries of one clip per class


def window(audio: np.ndarray, window_samples: int) -> np.ndarray:
    return repeat_pad(audio.astype(np.float32), window_samples)


def standard_set(per_class: int, window_samples: int) -> ClipSet:
    """`make_clip` as the generator defines it: its durations, SNRs (0-30 dB), gains and backgrounds."""
    windows, classes = [], []
    for i in range(per_class):
        for k, name in enumerate(synthetic.CLASSES):
            clip = synthetic.make_clip(np.random.default_rng([BENCH_SEED, 0, i, k]), name, WINDOW_SECONDS)
            windows.append(window(clip.audio, window_samples))
            classes.append(name)
    return ClipSet("generator's mix (make_clip)", np.stack(windows), classes)


def paired_sets(
    set_id: int,
    variants: dict[str, Callable[[np.random.Generator, str], np.ndarray]],
    per_class: int,
    window_samples: int,
) -> list[ClipSet]:
    """One set per variant; clip i of every variant starts from the same seed, so only the variant differs."""
    sets = {label: ([], []) for label in variants}
    for i in range(per_class):
        for k, class_name in enumerate(synthetic.CLASSES):
            for label, make in variants.items():
                audio = make(np.random.default_rng([BENCH_SEED, set_id, i, k]), class_name)
                sets[label][0].append(window(audio, window_samples))
                sets[label][1].append(class_name)
    return [ClipSet(label, np.stack(w), c) for label, (w, c) in sets.items()]


def mixed(rng: np.random.Generator, class_name: str, sound_s: float, clip_s: float, gain_db: float) -> np.ndarray:
    """A `sound_s` sound at a random onset over a random background of `clip_s`, at `gain_db` dBFS peak."""
    kinds = list(synthetic.BACKGROUND_WEIGHTS)
    kind = str(rng.choice(kinds, p=list(synthetic.BACKGROUND_WEIGHTS.values())))
    bed = synthetic.BACKGROUNDS[kind](rng, clip_s)
    sound = synthetic.CLASSES[class_name].make(rng, sound_s)
    onset = int(rng.integers(0, len(bed) - len(sound) + 1))
    return synthetic.mix(sound, bed, float(rng.uniform(*SNR_DB)), gain_db, onset)


def level_sets(per_class: int, window_samples: int) -> list[ClipSet]:
    def at(gain_db: float) -> Callable[[np.random.Generator, str], np.ndarray]:
        return lambda rng, c: mixed(rng, c, float(rng.uniform(2.0, 10.0)), WINDOW_SECONDS, gain_db)

    return paired_sets(1, {"-30 dBFS peak": at(-30.0), "-6 dBFS peak": at(-6.0)}, per_class, window_samples)


def length_sets(per_class: int, window_samples: int) -> list[ClipSet]:
    def lasting(sound_s: float, clip_s: float) -> Callable[[np.random.Generator, str], np.ndarray]:
        return lambda rng, c: mixed(rng, c, sound_s, clip_s, float(rng.uniform(-30.0, -6.0)))

    variants = {
        "1 s sound in a 10 s window": lasting(1.0, WINDOW_SECONDS),
        "10 s sound in a 10 s window": lasting(10.0, WINDOW_SECONDS),
        "1 s sound as a 1 s window (repeat-padded)": lasting(1.0, 1.0),
    }
    return paired_sets(2, variants, per_class, window_samples)


@dataclass(frozen=True, slots=True)
class Prompts:
    """Unit text embeddings: one per class for each prompt kind, and the daemon's background prompts."""

    held_out: np.ndarray  # [classes, dim]
    paraphrase: np.ndarray  # [classes, dim]
    background: np.ndarray  # [background prompts, dim]


def class_vectors(text: TextModel, prompts: dict[str, list[str]]) -> np.ndarray:
    """One unit vector per class: the mean of its prompts' embeddings."""
    vectors = np.stack([text.embed(prompts[name]).mean(axis=0) for name in synthetic.CLASSES])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def evaluate(clips: ClipSet, audio: np.ndarray, prompts: Prompts) -> Result:
    names = list(synthetic.CLASSES)
    truth = np.array([names.index(c) for c in clips.classes])
    held_out, paraphrase = prompts.held_out, prompts.paraphrase
    zero_shot = float(np.mean((audio @ held_out.T).argmax(axis=1) == truth))
    with_background = np.concatenate([held_out, prompts.background])
    zero_shot_background = float(np.mean((audio @ with_background.T).argmax(axis=1) == truth))
    para = float(np.mean((audio @ paraphrase.T).argmax(axis=1) == truth))
    # Clips are ordered class by class within each round: round i is one gallery.
    rounds = audio.reshape(-1, len(names), audio.shape[1])
    top = np.einsum("cd,rkd->rck", held_out, rounds).argmax(axis=2)  # [round, query class] -> clip
    recall = float(np.mean(top == np.arange(len(names))[None, :]))
    return Result(clips.name, len(clips.classes), zero_shot, zero_shot_background, para, recall)


def per_class(clips: ClipSet, audio: np.ndarray, vectors: np.ndarray) -> dict[str, float]:
    names = list(synthetic.CLASSES)
    predicted = (audio @ vectors.T).argmax(axis=1)
    return {
        name: float(np.mean([names[p] == name for p, c in zip(predicted, clips.classes, strict=True) if c == name]))
        for name in names
    }


@dataclass(frozen=True, slots=True)
class Report:
    manifest: Manifest
    precision: str
    results: list[Result]
    by_class: dict[str, dict[str, float]]  # set name -> class -> zero-shot accuracy with the held-out prompts
    paraphrase_by_class: dict[str, float]  # on the first set
    prompts: dict[str, str]
    seconds: float
    load: float


def run(bundle: Path, precision: str, per_class_clips: int) -> Report:
    began, load = time.perf_counter(), os.getloadavg()[0]
    manifest = open_bundle(bundle)
    config = ModelConfig(bundle=bundle, precision=precision, providers=["cpu"], threads=THREADS)
    audio_model, text_model = AudioModel(bundle, manifest, config), TextModel(bundle, manifest, config)
    prompts = {name: split_captions(c.captions)[1] for name, c in synthetic.CLASSES.items()}
    vectors = Prompts(
        held_out=class_vectors(text_model, {n: [p] for n, p in prompts.items()}),
        paraphrase=class_vectors(text_model, {n: list(c.paraphrases) for n, c in synthetic.CLASSES.items()}),
        background=text_model.embed(BACKGROUND_PROMPTS),
    )
    samples = manifest.window_samples
    builders = [
        lambda: [standard_set(per_class_clips, samples)],
        lambda: level_sets(per_class_clips, samples),
        lambda: length_sets(per_class_clips, samples),
    ]
    results, by_class, paraphrase_by_class = [], {}, {}
    for build in builders:  # one condition's audio in memory at a time
        for clips in build():
            embedded = audio_model.embed(clips.windows)
            results.append(evaluate(clips, embedded, vectors))
            by_class[clips.name] = per_class(clips, embedded, vectors.held_out)
            paraphrase_by_class = paraphrase_by_class or per_class(clips, embedded, vectors.paraphrase)
    elapsed = time.perf_counter() - began
    return Report(manifest, audio_model.precision, results, by_class, paraphrase_by_class, prompts, elapsed, load)


def percent(x: float) -> str:
    return f"{100 * x:.1f} %"


def results_table(results: list[Result]) -> list[str]:
    lines = [
        "| held-out clips | clips | zero-shot, held-out prompts | + background prompts | text-to-audio R@1 "
        "| zero-shot, paraphrases |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        figures = (r.zero_shot, r.zero_shot_background, r.recall_at_1, r.paraphrase)
        lines.append(f"| {r.name} | {r.clips} | " + " | ".join(percent(x) for x in figures) + " |")
    return lines


CLASS_TABLE_SETS = ("generator's mix (make_clip)", "-30 dBFS peak", "1 s sound in a 10 s window")


def class_table(report: Report) -> list[str]:
    shown = [name for name in CLASS_TABLE_SETS if name in report.by_class] + [report.results[-1].name]
    lines = [
        "| class | held-out prompt | " + " | ".join(shown) + " | paraphrases (make_clip) |",
        "|---|---|" + "---:|" * (len(shown) + 1),
    ]
    for name, prompt in report.prompts.items():
        figures = [report.by_class[s][name] for s in shown] + [report.paraphrase_by_class[name]]
        lines.append(f"| {name} | {prompt} | " + " | ".join(percent(x) for x in figures) + " |")
    return lines


def section(report: Report, bundle: Path) -> str:
    main = report.results[0]
    verdict = (
        f"zero-shot {percent(main.zero_shot)} (wanted >= {WANT_ZERO_SHOT:.0%}), text-to-audio R@1 "
        f"{percent(main.recall_at_1)} (wanted >= {WANT_RECALL:.0%}), paraphrases {percent(main.paraphrase)}"
    )
    lines = [
        START,
        "## Demo bundle accuracy on held-out generated clips",
        "",
        "Written by `benchmarks/bench_demo_accuracy.py`: the shipped demo bundle through the daemon's onnxruntime "
        "path (`AudioModel`/`TextModel`, CPU), on clips generated with seeds training never used. Zero-shot: each "
        "clip's nearest class prompt, 10 classes (+ background: the daemon's background prompts are wrong "
        "answers too). Held-out prompts: the caption of each class kept out of training (its words are seen only "
        "in other phrasings). Paraphrases: descriptions in words no training caption uses. R@1: galleries of one "
        "clip per class, the top clip for each class prompt.",
        "",
        *header_lines(PACKAGES, machine_note=f" (1-min load average at start: {report.load:.2f})"),
        f"- run time: {report.seconds:.0f} s",
        f"- bundle: `{bundle.name}`, {report.precision} audio model, created {report.manifest.created_utc}",
        f"- result: {verdict}",
        "",
        *results_table(report.results),
        "",
        *class_table(report),
        END,
    ]
    return "\n".join(lines)


def main() -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--bundle", type=Path, default=BUNDLE)
    parser.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto", help="as the daemon")
    parser.add_argument("--clips-per-class", type=int, default=30, help="per condition")
    parser.add_argument("--write", type=Path, help="markdown file whose bench_demo_accuracy section to update")
    args = parser.parse_args()
    report = run(args.bundle, args.precision, args.clips_per_class)
    publish(section(report, args.bundle), args.write, START, END)
    main_result = report.results[0]
    return 0 if main_result.zero_shot >= WANT_ZERO_SHOT and main_result.recall_at_1 >= WANT_RECALL else 1


if __name__ == "__main__":
    raise SystemExit(main())
