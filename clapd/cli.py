"""The `clapd` command line. Export-side commands import torch lazily, so the daemon's install works without it."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

logger = logging.getLogger("clapd")


def _precisions(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [p for p in chosen if p not in ("fp32", "fp16", "int8")]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"precisions are a comma list of fp32, fp16, int8; got {text!r}")
    return chosen


def _add_export(commands: argparse._SubParsersAction) -> None:
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


def _add_reference_model(commands: argparse._SubParsersAction) -> None:
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


def _add_check_config(commands: argparse._SubParsersAction) -> None:
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


def _add_classify(commands: argparse._SubParsersAction) -> None:
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


def _add_search(commands: argparse._SubParsersAction) -> None:
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


def _add_run(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("run", help="listen and publish events (the daemon)")
    parser.add_argument(
        "-c", "--config", type=Path, help="YAML config (see configs/); none: the embedded demo model and sounds"
    )
    parser.set_defaults(run=_run_daemon)


def _run_daemon(args: argparse.Namespace) -> int:
    from clapd.daemon.service import run

    return run(args.config, verbose=args.verbose)


def _add_listen(commands: argparse._SubParsersAction) -> None:
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


def _add_learn_normal(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "learn-normal",
        help="learn a stream's normal operation for anomaly monitoring",
        description="Embeds windows of normal operation, as the daemon cuts them, into the stream's normal bank in "
        "state_dir (with the audio model's sha256): from the live source for --minutes, or from the audio files in "
        "--from (recordings of every normal operating condition). The daemon loads the bank when it starts.",
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
    from clapd.daemon.config import ConfigError, load_config
    from clapd.daemon.manifest import BundleError

    if args.minutes is not None and not 0 < args.minutes <= 24 * 60:
        print("clapd learn-normal: --minutes must be above 0 and at most 1440", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"clapd learn-normal: {e}", file=sys.stderr)
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
        f"k {bank.k}, reference distance {bank.reference:.4f}"
    )
    return 0


def _add_calibrate(commands: argparse._SubParsersAction) -> None:
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
    parser.set_defaults(run=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from clapd.daemon.calibrate import run_calibration
    from clapd.daemon.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"clapd calibrate: {e}", file=sys.stderr)
        return 2
    return run_calibration(config, file=args.file, minutes=args.minutes, stream=args.stream, store=not args.dry_run)


def _add_devices(commands: argparse._SubParsersAction) -> None:
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


def _add_example_commands(commands: argparse._SubParsersAction) -> None:
    """enrol, false-alarm, forget-example: control requests to the running daemon over MQTT (`clapd.daemon.enrol`)."""
    daemon = "Talks to the running daemon over the MQTT control channel (the config's broker and credentials; "
    daemon += "mqtt.control.enabled) and prints its result as JSON; exits 1 when refused or unanswered."
    enrol = commands.add_parser(
        "enrol",
        help="the last seconds of a stream become an example of a detection",
        description="Takes a stream's newest audio from the running daemon's ring buffer, saves it as an example "
        f"file in state_dir/examples/DETECTION/ and adds it to the detection, live and kept across restarts. {daemon}",
    )
    enrol.add_argument("detection")
    enrol.add_argument("--stream", required=True, help="the stream to take the audio from")
    enrol.add_argument("--last", type=float, required=True, help="seconds of the newest audio (0.1 to 30)")
    enrol.add_argument("--negative", action="store_true", help="a sound that must not fire the detection")
    false_alarm = commands.add_parser(
        "false-alarm",
        help="the audio of a detection's last event becomes a negative example",
        description=f"Marks the detection's last event (on --stream, else on any stream) as a false alarm. {daemon}",
    )
    false_alarm.add_argument("detection")
    false_alarm.add_argument("--stream", help="the stream of the event (default: the last event on any stream)")
    forget = commands.add_parser(
        "forget-example",
        help="remove an enrolled example (its file and its entry)",
        description=f"FILE: the example's file name, as enrol printed it. {daemon}",
    )
    forget.add_argument("detection")
    forget.add_argument("file")
    for parser in (enrol, false_alarm, forget):
        parser.add_argument("-c", "--config", type=Path, required=True, help="the daemon's config")
        parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the result (default 30)")
        parser.set_defaults(run=_run_example_command)


def _run_example_command(args: argparse.Namespace) -> int:
    from clapd.daemon.mqtt.request import run_request

    fields: dict[str, object] = {"detection": args.detection}
    if args.command == "enrol":
        fields.update(action="enrol", stream=args.stream, last_seconds=args.last, negative=args.negative)
    elif args.command == "false-alarm":
        fields.update(action="false_alarm", **({"stream": args.stream} if args.stream else {}))
    else:
        fields.update(action="forget_example", file=args.file)
    return run_request(args.command, args.config, fields, args.timeout)


UNIT_FILE = Path("etc/systemd/system/clapd.service")
JETSON_DROP_IN = Path("etc/systemd/system/clapd.service.d/jetson.conf")
CONFIG_FILE = Path("etc/clapd/config.yaml")
# Paths the unit's sandbox hides (ProtectHome=yes, PrivateTmp=yes): an ExecStart= there cannot start.
HIDDEN_FROM_SERVICE = ("/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/")


def _add_install_service(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "install-service",
        help="install the systemd unit and /etc/clapd/config.yaml (as root)",
        description="Writes /etc/systemd/system/clapd.service running this clapd, creates /etc/clapd/config.yaml "
        "from the home example unless it exists, and runs systemctl daemon-reload.",
    )
    parser.add_argument("--root", type=Path, default=Path("/"), help="install under this directory (packagers, tests)")
    parser.add_argument("--no-systemctl", action="store_true", help="do not run systemctl daemon-reload")
    parser.add_argument("--force", action="store_true", help="replace an existing unit file")
    parser.set_defaults(run=_run_install_service)


def _run_install_service(args: argparse.Namespace) -> int:
    unit_path, config_path = args.root / UNIT_FILE, args.root / CONFIG_FILE
    if unit_path.exists() and not args.force:
        print(f"clapd install-service: {unit_path} exists (--force replaces it)", file=sys.stderr)
        return 1
    executable = _clapd_executable()
    try:
        _write(unit_path, _unit_text(_shipped_file("systemd", "clapd.service").read_text(), executable))
        if (args.root / "etc/nv_tegra_release").exists():  # a Jetson: its GPU nodes are not nvidia* (README)
            _write(args.root / JETSON_DROP_IN, _shipped_file("systemd", "jetson.conf").read_text())
        config_created = not config_path.exists()
        if config_created:
            _write(config_path, _shipped_file("configs", "home.yaml").read_text())
    except (OSError, ValueError) as e:
        print(f"clapd install-service: {e}", file=sys.stderr)
        return 1
    print(f"wrote {unit_path} (ExecStart: {executable})")
    print(f"{'created' if config_created else 'kept the existing'} {config_path}")
    if executable.startswith(HIDDEN_FROM_SERVICE):
        print(f"warning: the service cannot see {executable}: install clapd under /opt or /usr/local", file=sys.stderr)
    if not args.no_systemctl and args.root.resolve() == Path("/") and not _daemon_reload():
        return 1
    _print_next_steps(config_path)
    return 0


def _clapd_executable() -> str:
    """The clapd being run, so a virtual environment's install is the one the service starts."""
    invoked = Path(sys.argv[0])
    candidates = [invoked] if invoked.name == "clapd" else []
    candidates.append(Path(sys.executable).parent / "clapd")  # `python -m clapd`: the script next to python
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate.absolute())
    return shutil.which("clapd") or "/usr/local/bin/clapd"


def _shipped_file(folder: str, name: str) -> Path:
    """A file of the repository's systemd/ or configs/: package data in a wheel, the checkout in editable mode."""
    package = Path(__file__).resolve().parent
    candidates = [package / folder / name, package.parent / folder / name]
    return next((path for path in candidates if path.is_file()), candidates[0])  # a missing one: its OSError


def _unit_text(template: str, executable: str) -> str:
    escaped = executable.replace("%", "%%").replace("$", "$$")  # unit-file specifiers and variables
    if any(c.isspace() for c in escaped):
        escaped = f'"{escaped}"'
    text, count = re.subn(r"^ExecStart=\S+", lambda _: f"ExecStart={escaped}", template, flags=re.MULTILINE)
    if count != 1:
        raise ValueError(f"the unit template has {count} ExecStart= lines, not 1")
    return text


def _write(path: Path, text: str) -> None:
    """World-readable: the service's dynamic user reads the config (secrets go in credentials, not here)."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True)
        path.parent.chmod(0o755)  # whatever root's umask is, the service must be able to enter it
    path.write_text(text)
    path.chmod(0o644)


def _daemon_reload() -> bool:
    try:
        result = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"clapd install-service: systemctl daemon-reload: {e}", file=sys.stderr)
        return False
    if result.returncode != 0:
        print(f"clapd install-service: systemctl daemon-reload: {result.stderr.strip()}", file=sys.stderr)
    return result.returncode == 0


def _print_next_steps(config_path: Path) -> None:
    print(
        "next:\n"
        f"  edit {config_path} (model.bundle, streams, outputs.mqtt), then: clapd check-config {config_path}\n"
        "  put the MQTT password in /etc/clapd/mqtt-password (mode 600); without one the service does not start\n"
        "    unless a drop-in clears it (`systemctl edit clapd`: [Service] then LoadCredential=)\n"
        "  systemctl enable --now clapd && journalctl -u clapd -f"
    )


def _add_finetune(commands: argparse._SubParsersAction) -> None:
    from clapd.models.finetune_cli import add_finetune_parser  # imports no torch until it runs

    add_finetune_parser(commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clapd", description="On-device sound understanding with LAION CLAP.")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    adders: list[Callable[[argparse._SubParsersAction], None]] = [
        _add_run,
        _add_listen,
        _add_check_config,
        _add_devices,
        _add_learn_normal,
        _add_classify,
        _add_search,
        _add_calibrate,
        _add_example_commands,
        _add_export,
        _add_finetune,
        _add_reference_model,
        _add_install_service,
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


if __name__ == "__main__":
    raise SystemExit(main())
