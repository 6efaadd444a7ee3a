"""`clapd run`: validate, load, warm up, then run until a signal (or until every file source has ended)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from clapd.daemon.config import ClapdConfig, ConfigError, load_config
from clapd.daemon.manifest import BundleError
from clapd.daemon.runner import Daemon, Publisher
from clapd.daemon.sources import SourceError

logger = logging.getLogger(__name__)

EXIT_CONFIG = 2  # bad configuration: nothing was started
EXIT_STARTUP = 1  # bundle, device or model problems at start-up


def build_publishers(config: ClapdConfig) -> list[Publisher]:
    from clapd.daemon.stdout_publisher import StdoutPublisher

    publishers: list[Publisher] = []
    mqtt = config.outputs.mqtt
    if mqtt is not None:
        from clapd.daemon.mqtt_publisher import MqttPublisher

        queue = config.state_dir / "event-queue.sqlite3"
        publishers.append(MqttPublisher(mqtt, queue, client_id_default=f"clapd-{socket.gethostname()}"[:64]))
    if config.outputs.stdout or (config.outputs.stdout is None and mqtt is None):
        publishers.append(StdoutPublisher(sys.stdout))
    return publishers


# The demo model's sounds, with prompts worded unlike its training captions.
DEMO_DETECTIONS = {
    "smoke_alarm": "a smoke detector going off",
    "glass_breaking": "a window pane smashing",
    "siren": "an ambulance siren",
    "dog_barking": "a dog barking",
    "knocking": "knocking on a door",
    "phone_ringing": "a telephone ringing",
    "running_water": "water running from a tap",
}


def resolve_bundle(config: ClapdConfig) -> Path:
    bundle = config.model.bundle or _installed_demo_bundle()
    if bundle is None:
        raise BundleError("model.bundle is not set and this install has no demo bundle: set model.bundle")
    return bundle


def _installed_demo_bundle() -> Path | None:
    import clapd

    bundle = Path(clapd.__file__).parent / "demo_bundle"
    return bundle if (bundle / "manifest.json").is_file() else None


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "clapd"


def default_config(state_dir: Path) -> ClapdConfig:
    """The embedded default: the demo model on the default microphone if there is one, else on the demo stream."""
    detections = {
        name: {"prompts": [prompt], "threshold_on": 0.5, "threshold_off": 0.3, "smoothing_windows": 1}
        for name, prompt in DEMO_DETECTIONS.items()
    }
    stream = {"type": "mic"} if _has_default_microphone() else {"type": "file", "path": str(_demo_stream(state_dir))}
    logger.warning("no config: the demo model (synthetic sounds only) on %s", stream.get("path", "the microphone"))
    return ClapdConfig.model_validate(
        {
            "windows": {"window_seconds": 2, "hop_seconds": 0.5},
            "streams": {"demo": stream},
            "detections": detections,
            "outputs": {"stdout": True},
            "state_dir": str(state_dir),
        }
    )


def _has_default_microphone() -> bool:
    try:
        from clapd.daemon.sources.mic import find_input_device

        find_input_device(None)
        return True
    except Exception:  # no PortAudio, no device, no default: all mean "use the demo stream"
        return False


def _demo_stream(state_dir: Path) -> Path:
    """The bundled two-minute demo recording (planted sounds over room tone), generated once."""
    path = state_dir / "demo-stream.wav"
    if not path.is_file():
        from clapd.models.demo_stream import make_demo_stream

        state_dir.mkdir(parents=True, exist_ok=True)
        stream = make_demo_stream(seed=0)
        stream.write_wav(path)
        (state_dir / "demo-stream.json").write_text(stream.ground_truth_json())
    return path


def run(config_path: Path | None) -> int:
    if config_path is None:
        return run_config(default_config(default_state_dir()))
    try:
        config = load_config(config_path)
    except ConfigError as e:
        print(f"{e.source}: {len(e.problems)} problem(s); nothing started", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    return run_config(config)


def run_config(config: ClapdConfig) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    daemon: Daemon | None = None
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        daemon = Daemon(config, resolve_bundle(config), build_publishers(config))
        daemon.load()
        daemon.start()
    except (BundleError, SourceError, OSError, ValueError) as e:
        print(f"clapd run: {e}", file=sys.stderr)
        if daemon is not None:
            daemon.shutdown()
        return EXIT_STARTUP
    logger.info("running: %d streams, %d detections", len(config.streams), len(config.detections))
    try:
        daemon.run(stop)
    finally:
        daemon.shutdown()
    return 0
