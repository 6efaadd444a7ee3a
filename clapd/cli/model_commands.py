"""Model-side commands: export, example-margin, reference-model, finetune. Each imports torch only when it runs (and
example-margin never does), so the daemon's install, which has no torch, can build the parser."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _precisions(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [p for p in chosen if p not in ("fp32", "fp16", "int8")]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"precisions are a comma list of fp32, fp16, int8; got {text!r}")
    return chosen


def add_export(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export",
        help="turn a LAION CLAP checkpoint into a verified ONNX bundle",
        description="SOURCE: a Hugging Face id (laion/clap-htsat-unfused), a local Hugging Face model "
        "directory, or one of LAION's .pt checkpoints (630k-audioset-best.pt).",
    )
    parser.add_argument("source")
    parser.add_argument("-o", "--output", type=Path, required=True, help="bundle directory to write")
    parser.add_argument(
        "--precision",
        type=_precisions,
        default=("fp32", "fp16", "int8"),
        help="comma list of fp32, fp16, int8 (default: all three)",
    )
    parser.add_argument("--tokenizer", help="tokenizer id or directory (default: the checkpoint's, or roberta-base)")
    parser.add_argument("--trust-pickle", action="store_true", help="allow .pt files with pickled objects")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle directory")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from clapd.export.bundle import ExportRequest, export_bundle
    from clapd.export.verify import VerificationError
    from clapd.models.checkpoints import CheckpointError

    request = ExportRequest(
        source=args.source,
        out_dir=args.output,
        precisions=args.precision,
        tokenizer=args.tokenizer,
        trust_pickle=args.trust_pickle,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    try:
        manifest = export_bundle(request)
    except (CheckpointError, VerificationError, FileExistsError) as e:
        print(f"clapd export: {e}", file=sys.stderr)
        return 1
    for precision, entry in manifest.audio.items():
        parity = entry.parity
        print(
            f"{entry.file}: {precision}, min cosine {parity.min_cosine:.7f}, "
            f"relative error {parity.relative_error:.2g} on {parity.inputs} clips"
        )
    text = manifest.text.parity
    print(f"{manifest.text.file}: min cosine {text.min_cosine:.7f} on {text.inputs} prompts")
    print(f"bundle written to {args.output}")
    return 0


def add_example_margin(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "example-margin",
        help="measure a bundle's example margin on your own labelled recordings",
        description="Measures how much closer a recording of a sound comes to other recordings of it than to its "
        "caption (the median over sounds), the default of the bundle's detections' example_margin and "
        "negative_example_margin, and writes it into the bundle's manifest. A bundle exported from a checkpoint "
        "declares none (its detections use 0.3). FOLDER holds one subfolder per sound, named by its caption "
        "(underscores read as spaces), each with more than 3 recordings; each is embedded as the daemon embeds an "
        "example file. Needs no torch.",
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("folder", type=Path)
    for option in ("--window-seconds", "--hop-seconds"):
        parser.add_argument(option, type=float, help="as the config's windows (default: the config's default)")
    parser.add_argument("--dry-run", action="store_true", help="print the margin; leave the manifest as it is")
    parser.set_defaults(run=_run_example_margin)


def _run_example_margin(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from clapd.daemon.config import WindowConfig, describe_error
    from clapd.daemon.examples import ExampleError
    from clapd.daemon.manifest import BundleError
    from clapd.export import example_margin

    try:
        given = {"window_seconds": args.window_seconds, "hop_seconds": args.hop_seconds}
        windows = WindowConfig(**{key: value for key, value in given.items() if value is not None})
        labelled = example_margin.labelled_recordings(args.folder)
        margin = example_margin.measure_recordings(args.bundle, labelled, windows.window_seconds, windows.hop_seconds)
    except ValidationError as e:
        print(f"clapd example-margin: windows.{describe_error(e.errors()[0])}", file=sys.stderr)
        return 2
    except (example_margin.MarginSourceError, ExampleError, BundleError) as e:
        print(f"clapd example-margin: {e}", file=sys.stderr)
        return 2
    recordings = sum(len(files) for files in labelled.values())
    print(f"example margin: {margin:g} (median over {len(labelled)} sounds, {recordings} recordings)")
    if not args.dry_run:
        how = (
            f"measured by clapd example-margin on {len(labelled)} sounds ({recordings} recordings, "
            f"{windows.window_seconds:g} s windows every {windows.hop_seconds:g} s)"
        )
        try:
            example_margin.record(args.bundle, margin, how)
        except OSError as e:
            print(f"clapd example-margin: cannot write {args.bundle / 'manifest.json'}: {e}", file=sys.stderr)
            return 1
        print(f"written to {args.bundle / 'manifest.json'}")
    return 0


def add_reference_model(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "reference-model",
        help="write a random-weight CLAP of a real architecture as a Hugging Face directory (for tests/demos)",
    )
    parser.add_argument("--size", choices=("small", "default", "base"), default="small")
    parser.add_argument("--fused", action="store_true", help="the fusion variant of the architecture")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.set_defaults(run=_run_reference_model)


def _run_reference_model(args: argparse.Namespace) -> int:
    from clapd.models.reference import save_reference_model

    save_reference_model(args.size, args.output, seed=args.seed, fused=args.fused)
    print(f"random-weight {args.size} CLAP written to {args.output}")
    return 0


def add_finetune(commands: argparse._SubParsersAction) -> None:
    from clapd.models.finetune_cli import add_finetune_parser  # imports no torch until it runs

    add_finetune_parser(commands)
