"""Commands that score or learn from audio through the config: classify, search, learn-normal, calibrate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clapd.daemon.config import ClapdConfig


def add_classify(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "classify",
        help="scores over time for a recording, to choose prompts and thresholds",
        description="Scores a recording window by window through the daemon's own Detector: with -c, the config's "
        "model, detections, windows and background prompts, as `clapd run -c` would; without, the embedded demo "
        "bundle (or --bundle) on the CPU in fp32. --prompt replaces the detections by ad-hoc prompts.",
    )
    parser.add_argument("audio", type=Path)
    parser.add_argument("-c", "--config", type=Path, help="score with this config's model and detections")
    parser.add_argument("--prompt", action="append", help="a text prompt (repeat for several)")
    parser.add_argument("--bundle", type=Path, help="model bundle directory (default: the config's, else the demo)")
    parser.add_argument(
        "--window",
        type=float,
        help="window seconds, 1-10 (default: the config's, else 2 s with the demo bundle and 10 s with another)",
    )
    parser.add_argument("--hop", type=float, help="hop seconds (default: the config's, else 0.5 s / 1 s)")
    parser.add_argument("--background", action="append", help="background prompts (default: the config's)")
    parser.add_argument(
        "--stream",
        help="score anomalies as this stream of the config does, with its normal bank (default: the config's one "
        "stream with anomaly monitoring, if only one has it)",
    )
    parser.add_argument("--json", action="store_true", help="full-precision scores and the events, as JSON")
    parser.add_argument("--plot", type=Path, help="also write a PNG plot here")
    parser.set_defaults(run=_run_classify)


def _run_classify(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from clapd.daemon.classify import classify, format_json, format_table, plot, scoring_from
    from clapd.daemon.config import ConfigError, describe_error, load_config
    from clapd.daemon.manifest import BundleError

    try:
        config = load_config(args.config) if args.config is not None else None
        scoring = scoring_from(
            config,
            prompts=args.prompt,
            bundle=args.bundle,
            window_s=args.window,
            hop_s=args.hop,
            background=args.background,
            anomaly_stream=args.stream,
        )
    except ConfigError as e:
        print(f"clapd classify: {e}", file=sys.stderr)
        return 2
    except ValidationError as e:
        problems = "; ".join(describe_error(error) for error in e.errors())
        print(f"clapd classify: --window/--hop: {problems}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"clapd classify: {e}", file=sys.stderr)
        return 2
    try:
        table = classify(args.audio, scoring)
        print(format_json(table) if args.json else format_table(table))
        if args.plot:
            plot(table, args.plot)
    except (BundleError, ValueError, RuntimeError) as e:
        print(f"clapd classify: {e}", file=sys.stderr)
        return 1
    return 0


def add_search(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "search",
        help="past moments that sound like a text or an example, from the embedding history",
        description="Ranks the windows kept by `history:` (the daemon's state_dir) by cosine with the text (through "
        "the config's bundle's text model) or the example (embedded as a detection's examples are), or both, and "
        "prints the best time ranges, adjacent windows merged, with the clip of an event there if one exists.",
    )
    parser.add_argument("text", nargs="?", help='what to look for, e.g. "glass breaking"')
    parser.add_argument("--example", type=Path, help="an audio file of what to look for")
    parser.add_argument("--since", help="only after this: 30m, 24h, 7d, or an ISO 8601 time (default: all)")
    parser.add_argument("--stream", help="only this stream")
    parser.add_argument("--top", type=int, default=20, help="time ranges to show (default 20)")
    parser.add_argument("--json", action="store_true", help="JSON for scripts")
    parser.add_argument("-c", "--config", type=Path, required=True, help="the daemon's config")
    parser.set_defaults(run=_run_search)


def _run_search(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from clapd.daemon.config import ConfigError, load_config
    from clapd.daemon.history import HISTORY_FILE, HistoryUnavailable
    from clapd.daemon.manifest import BundleError
    from clapd.daemon.search import format_json, format_table, parse_since, query_embedding, search_history

    if args.text is None and args.example is None:
        print("clapd search: give a text, --example FILE, or both", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        since = parse_since(args.since, datetime.now(timezone.utc)) if args.since else None
        if args.top < 1:
            raise ValueError(f"--top {args.top}: must be at least 1")
        path = config.state_dir / HISTORY_FILE
        if not path.is_file():
            raise ValueError(f"no history at {path}: is `history: {{enabled: true}}` in the config?")
        query, space = query_embedding(config, args.text, args.example)
        matches = search_history(path, query, space, since=since, stream=args.stream, top=args.top)
    except ConfigError as e:
        print(f"clapd search: {e}", file=sys.stderr)
        return 2
    except (BundleError, HistoryUnavailable, ValueError, RuntimeError) as e:
        print(f"clapd search: {e}", file=sys.stderr)
        return 1
    print(format_json(matches) if args.json else format_table(matches))
    return 0


def add_learn_normal(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "learn-normal",
        help="learn a stream's normal operation for anomaly monitoring",
        description="Embeds windows of normal operation, as the daemon cuts them, into the stream's normal bank in "
        "state_dir (with the audio model's sha256): from the live source for --minutes, or from the audio files in "
        "--from (recordings of every normal operating condition). The daemon loads the bank when it starts, and "
        "a running one takes a bank replaced with --rebaseline at its next reload (SIGHUP).",
    )
    parser.add_argument("-c", "--config", type=Path, required=True)
    parser.add_argument("--stream", required=True, help="the stream (it needs an `anomaly:` section)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--minutes", type=float, help="listen to the live source for this many minutes")
    source.add_argument("--from", dest="folder", type=Path, help="a folder of recordings of normal operation")
    parser.add_argument("--rebaseline", action="store_true", help="replace the stream's bank if it has one")
    parser.set_defaults(run=_run_learn_normal)


def _run_learn_normal(args: argparse.Namespace) -> int:
    from clapd.daemon.anomaly.learn import learn_normal
    from clapd.daemon.manifest import BundleError

    if args.minutes is not None and not 0 < args.minutes <= 24 * 60:
        print("clapd learn-normal: --minutes must be above 0 and at most 1440", file=sys.stderr)
        return 2
    config = _load_config_or_report(args)
    if config is None:
        return 2
    seconds = None if args.minutes is None else 60 * args.minutes
    try:
        learnt = learn_normal(config, args.stream, seconds=seconds, folder=args.folder, replace=args.rebaseline)
    except (BundleError, ValueError, RuntimeError, OSError) as e:
        print(f"clapd learn-normal: {e}", file=sys.stderr)
        return 1
    bank = learnt.bank
    print(
        f"{learnt.path}: {bank.size} embeddings of normal operation (from {learnt.windows} windows), "
        f"k {bank.k}, reference distance {bank.reference:.4f}; a daemon running this config takes it at its next "
        "reload (SIGHUP: systemctl reload clapd)"
    )
    return 0


def add_calibrate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "calibrate",
        help="set thresholds from the room's ambient sound (for threshold_on: auto)",
        description="Scores ambient audio (a recording, or --minutes of a configured stream) through the daemon's "
        "own Detector, prints each detection's ambient score distribution, and chooses each detection's threshold_on "
        "so it would start at most its false_alarms_per_day events a day on audio like it; stored in state_dir and "
        "used where a detection says `threshold_on: auto` (restart or reload the daemon to apply).",
    )
    parser.add_argument("-c", "--config", type=Path, required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help="a recording of the room's ordinary sound")
    source.add_argument("--minutes", type=float, help="record this many minutes of a configured stream")
    parser.add_argument("--stream", help="the stream to record with --minutes (default: the first)")
    parser.add_argument("--dry-run", action="store_true", help="print the thresholds, store nothing")
    parser.add_argument(
        "--sound",
        action="append",
        default=[],
        metavar="DETECTION=FILE",
        help="a recording of a detection's own sound, or a folder of them (repeatable): a warning says where the "
        "chosen threshold would not fire on it, as for the detection's examples",
    )
    parser.set_defaults(run=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from clapd.daemon.calibrate_command import run_calibration

    config = _load_config_or_report(args)
    if config is None:
        return 2
    return run_calibration(
        config, file=args.file, minutes=args.minutes, stream=args.stream, store=not args.dry_run, sounds=args.sound
    )


def _load_config_or_report(args: argparse.Namespace) -> ClapdConfig | None:
    """learn-normal's and calibrate's config, or None once the error is printed as `clapd COMMAND: ...` (exit 2)."""
    from clapd.daemon.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as e:
        print(f"clapd {args.command}: {e}", file=sys.stderr)
        return None
