"""Commands that change a running daemon's examples over MQTT: enrol, false-alarm, forget-example."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_example_commands(commands: argparse._SubParsersAction) -> None:
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
