"""The `clapd` command line. Export-side commands import torch lazily, so the daemon's install works without it."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

from clapd.cli.audio_commands import add_calibrate, add_classify, add_learn_normal, add_search
from clapd.cli.daemon_commands import add_check_config, add_devices, add_listen, add_run
from clapd.cli.example_commands import add_example_commands
from clapd.cli.model_commands import add_example_margin, add_export, add_finetune, add_reference_model
from clapd.cli.service_commands import CONFIG_FILE, JETSON_DROP_IN, UNIT_FILE, add_install_service

__all__ = ["CONFIG_FILE", "JETSON_DROP_IN", "UNIT_FILE", "build_parser", "main"]

logger = logging.getLogger("clapd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clapd", description="On-device sound understanding with LAION CLAP.")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    adders: list[Callable[[argparse._SubParsersAction], None]] = [
        add_run,
        add_listen,
        add_check_config,
        add_devices,
        add_learn_normal,
        add_classify,
        add_search,
        add_calibrate,
        add_example_commands,
        add_export,
        add_example_margin,
        add_finetune,
        add_reference_model,
        add_install_service,
    ]
    for add in adders:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.run(args))
