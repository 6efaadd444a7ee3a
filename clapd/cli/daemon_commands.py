"""The daemon's commands: run, listen, check-config, devices."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_check_config(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("check-config", help="validate a config file: every problem with its key path")
    parser.add_argument("config", type=Path)
    parser.set_defaults(run=_run_check_config)


def _run_check_config(args: argparse.Namespace) -> int:
    """The schema, then what can be checked without starting anything: pipe commands that cannot run. (Not the
    password file: under systemd it exists only inside the service, at /run/credentials/.)"""
    from clapd.daemon.config import ConfigError, load_config
    from clapd.daemon.sources import command_problems

    try:
        config = load_config(args.config)
        problems = command_problems(config.streams)
        if problems:
            raise ConfigError(str(args.config), problems)
    except ConfigError as e:
        print(f"{e.source}: {len(e.problems)} problem(s)", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    print(f"{args.config}: ok ({len(config.streams)} streams, {len(config.detections)} detections)")
    return 0


def add_run(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("run", help="listen and publish events (the daemon)")
    parser.add_argument(
        "-c", "--config", type=Path, help="YAML config (see configs/); none: the embedded demo model and sounds"
    )
    parser.set_defaults(run=_run_daemon)


def _run_daemon(args: argparse.Namespace) -> int:
    from clapd.daemon.service import run

    return run(args.config, verbose=args.verbose)


def add_listen(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "listen",
        help="a live terminal view of what the model hears (scores, thresholds, everyday matches, level)",
        description="Runs the config as `clapd run` would, publishing nothing: per stream, a bar per detection with "
        "its threshold marks, the everyday sound descriptions the audio matches best, and the input level, "
        "refreshed every hop. Ctrl-C quits.",
    )
    parser.add_argument(
        "-c", "--config", type=Path, help="YAML config (see configs/); none: the embedded demo model and sounds"
    )
    parser.add_argument("--stream", help="listen to this stream of the config only (default: all)")
    parser.set_defaults(run=_run_listen)


def _run_listen(args: argparse.Namespace) -> int:
    from clapd.daemon.listen import listen

    return listen(args.config, args.stream, verbose=args.verbose)


def add_devices(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("devices", help="list the audio input devices PortAudio sees")
    parser.set_defaults(run=_run_devices)


def _run_devices(args: argparse.Namespace) -> int:
    try:
        from clapd.daemon.sources.mic import describe_device, list_input_devices

        devices = list_input_devices()
    except OSError as e:  # sounddevice raises OSError when the PortAudio library is missing
        print(f"clapd devices: PortAudio is not available: {e}", file=sys.stderr)
        return 1
    for device in devices:
        print(describe_device(device))
    if not devices:
        print("no input devices", file=sys.stderr)
    return 0
