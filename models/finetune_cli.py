"""`clapd finetune`'s command line. Importing this module does not import torch (the daemon's install has none)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clapd.models.finetune import FinetuneRequest

SCRATCH_CONFIGS = ("demo", "tiny")
TRAIN_PARTS = ("projection", "last-blocks", "all")
SCRATCH_LR = 1e-3
CHECKPOINT_LR = 1e-4


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), not {value}")
    return value


def add_finetune_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "finetune",
        help="contrastive training on (audio, caption) pairs; writes a model directory `clapd export` takes",
        description="DATA: a CSV with a 'path,caption[,label]' header (paths relative to the CSV), or a folder "
        "ROOT/<label>/*.wav whose sub-folder names are the captions (underscores as spaces; a captions.txt in "
        "a sub-folder lists other captions, one a line). Audio is downmixed, resampled to 48 kHz and fitted to "
        "10 s (shorter clips repeat-padded, longer ones cropped at random).",
    )
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("data", nargs="?", type=Path, help="CSV file or folder of training pairs")
    data.add_argument("--synthetic", type=_positive_int, metavar="N", help="train on N generated clips instead")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--from", dest="source", metavar="SOURCE", help="any checkpoint `clapd export` accepts")
    start.add_argument("--from-scratch", choices=SCRATCH_CONFIGS, help="a new small model with a BPE tokenizer")
    parser.add_argument("-o", "--output", type=Path, required=True, help="model directory to write")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --output (give the same data and --epochs)"
    )
    parser.add_argument("--train", choices=TRAIN_PARTS, default="all", help="what to train (default: all)")
    parser.add_argument("--epochs", type=_positive_int, default=10)
    parser.add_argument("--batch-size", type=_positive_int, default=32)
    parser.add_argument(
        "--lr", type=float, help=f"peak learning rate (default {SCRATCH_LR} from scratch, else {CHECKPOINT_LR})"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=_fraction, default=0.1, help="held out for per-epoch metrics")
    parser.add_argument("--strict-audio", action="store_true", help="stop at a missing or unreadable file")
    parser.add_argument(
        "--word-noise",
        type=_fraction,
        default=0.0,
        help="chance to drop each caption word or swap it for a made-up one",
    )
    parser.add_argument("--caption-templates", action="store_true", help="wrap captions in random frames")
    parser.add_argument("--gain-jitter", type=float, default=0.0, metavar="DB", help="random level change, +-DB")
    parser.add_argument(
        "--audio-contrast",
        type=float,
        default=0.0,
        metavar="W",
        help="weight of a loss that tells two views of each clip apart from the other clips (keeps detail)",
    )
    parser.add_argument("--workers", type=_positive_int, default=min(2, os.cpu_count() or 1), help="for --synthetic")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--tokenizer", help="tokenizer id or directory for a LAION .pt source")
    parser.add_argument("--trust-pickle", action="store_true", help="allow .pt files with pickled objects")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    from clapd.models.checkpoints import CheckpointError
    from clapd.models.finetune import finetune, format_report
    from clapd.models.finetune_data import DataError, PairsDataset

    if not (args.resume or args.source or args.from_scratch):
        print("clapd finetune: give --from SOURCE or --from-scratch NAME (or --resume)", file=sys.stderr)
        return 1
    if args.batch_size < 2:
        print("clapd finetune: --batch-size must be at least 2 (contrastive pairs)", file=sys.stderr)
        return 1
    try:
        request = build_request(args)
        finetune(request, report=lambda report: print(format_report(report), flush=True))
    except (DataError, CheckpointError) as e:
        print(f"clapd finetune: {e}", file=sys.stderr)
        return 1
    for dataset in (request.train_data, request.val_data):
        if isinstance(dataset, PairsDataset) and dataset.bad_files:
            print(f"clapd finetune: {dataset.bad_summary()}", file=sys.stderr)
    print(f"model written to {args.output}; export it with: clapd export {args.output} -o BUNDLE")
    return 0


def build_request(args: argparse.Namespace) -> FinetuneRequest:
    from clapd.models.finetune import FinetuneRequest, TrainSettings
    from clapd.models.finetune_data import PairsDataset, SyntheticDataset

    if args.synthetic is not None:
        n_val = int(round(args.synthetic * args.val_fraction))
        train = SyntheticDataset(args.synthetic - n_val, args.seed, part=0, workers=args.workers)
        val = SyntheticDataset(n_val, args.seed, part=1, workers=args.workers) if n_val else None
    else:
        train, val = PairsDataset.open(args.data, strict=args.strict_audio, seed=args.seed).split(
            args.val_fraction, args.seed
        )
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else (SCRATCH_LR if args.from_scratch else CHECKPOINT_LR),
        train=args.train,
        seed=args.seed,
        word_noise=args.word_noise,
        templates=args.caption_templates,
        gain_jitter_db=args.gain_jitter,
        audio_contrast=args.audio_contrast,
        threads=args.threads,
        progress=not args.no_progress,
    )
    return FinetuneRequest(
        out_dir=args.output,
        train_data=train,
        val_data=val if val is not None and len(val) else None,
        source=args.source,
        scratch=args.from_scratch,
        settings=settings,
        resume=args.resume,
        tokenizer=args.tokenizer,
        trust_pickle=args.trust_pickle,
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m clapd.models.finetune_cli ...`: the same command before it is wired into `clapd`."""
    parser = argparse.ArgumentParser(prog="clapd")
    add_finetune_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["finetune", *(sys.argv[1:] if argv is None else argv)])
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
