"""Export-side commands: export, reference-model, finetune. Each imports torch only when it runs, so the daemon's
install, which has no torch, can build the parser."""

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
