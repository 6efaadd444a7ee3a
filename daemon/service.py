"""`clapd run`: validate, load, warm up, then run until a signal (or until every file source has ended)."""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from clapd.daemon.config import ClapdConfig, ConfigError, DetectionConfig, load_config
from clapd.daemon.control import CONTROL_FILE, ControlError, ControlRequest, ControlResult, ControlStore, apply_request
from clapd.daemon.logs import configure_logging
from clapd.daemon.manifest import BundleError
from clapd.daemon.metrics import MetricsServer
from clapd.daemon.notify import Notifier
from clapd.daemon.runner import Daemon, Publisher
from clapd.daemon.sources import SourceError

logger = logging.getLogger(__name__)

EXIT_CONFIG = 2  # bad configuration: nothing was started
EXIT_STARTUP = 1  # bundle, device or model problems at start-up
EXIT_CRASHED = 3  # the inference loop died: non-zero so that systemd's Restart=on-failure restarts us
STOP_SECONDS = 2.0  # SIGTERM to exit: systemd's TimeoutStopSec is longer, this is our own promise
INFERENCE_JOIN_SHARE = 0.4  # of the stop time given to a model call in progress
CONTROL_POLL_SECONDS = 0.1  # the main thread's reaction time to signals and control requests
RESTART_KEYS = ("model", "windows", "streams", "outputs", "state_dir", "metrics", "logging")  # not reloadable


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
# The demo model's event settings on 2 s windows at a 0.5 s hop: a 1.5 s moving average above 0.7. On 30 min of
# held-out demo stream every planted sound started within a hop and nothing started between the sounds; a single
# window's score (no smoothing) woke other detections on windows holding the cut-off end of a sound.
DEMO_EVENT_SETTINGS = {"threshold_on": 0.7, "threshold_off": 0.3, "smoothing_windows": 3}


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
    detections = {name: {"prompts": [prompt], **DEMO_EVENT_SETTINGS} for name, prompt in DEMO_DETECTIONS.items()}
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


def run(config_path: Path | None, *, verbose: bool = False) -> int:
    if config_path is None:
        config = default_config(default_state_dir())
    else:
        try:
            config = load_config(config_path)
        except ConfigError as e:
            _print_problems(e)
            return EXIT_CONFIG
    configure_logging(config.logging, verbose=verbose)
    return run_config(config, config_path)


def _print_problems(error: ConfigError) -> None:
    print(f"{error.source}: {len(error.problems)} problem(s); nothing started", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


def run_config(config: ClapdConfig, config_path: Path | None = None) -> int:
    """Start everything, serve until SIGTERM/SIGINT (or until every file source has ended), stop within 2 s."""
    notifier = Notifier.from_environment()
    signals = _Signals()
    notifier.status("loading the model")
    try:
        service = Service.start(config, config_path, notifier)
    except (BundleError, SourceError, OSError, ValueError) as e:
        print(f"clapd run: {e}", file=sys.stderr)
        notifier.stopping(f"start-up failed: {e}")
        return EXIT_STARTUP
    try:
        service.serve(signals)
    finally:
        service.stop()
    code = EXIT_CRASHED if service.crashed else 0
    _exit_now_if_audio_hangs(code)
    return code


def _exit_now_if_audio_hangs(code: int) -> None:
    """A stalled microphone's stream may still be closing in the background; PortAudio's exit handler would wait for
    it, possibly for ever. Everything of ours has stopped by now: exit without running the exit handlers."""
    mic = sys.modules.get("clapd.daemon.sources.mic")
    if mic is None or mic.open_stream_count() == 0:
        return
    logger.warning("a stalled audio device is still closing; exiting without waiting for PortAudio")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _Signals:
    """SIGTERM/SIGINT and SIGHUP as flags: a handler only sets a flag, the main loop acts on it."""

    def __init__(self) -> None:
        self.terminate = False
        self.reload = False
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_terminate)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_terminate(self, signum: int, frame: object) -> None:
        self.terminate = True

    def _on_reload(self, signum: int, frame: object) -> None:
        self.reload = True


class Service:
    """The main thread's side of a running daemon: the inference thread, reloads, metrics, systemd messages."""

    def __init__(
        self,
        config: ClapdConfig,
        config_path: Path | None,
        daemon: Daemon,
        publishers: list[Publisher],
        notifier: Notifier,
        control: ControlStore | None = None,
        file_detections: dict[str, DetectionConfig] | None = None,
    ) -> None:
        self._config = config
        self._config_path = config_path
        self._daemon = daemon
        self._publishers = publishers
        self._notifier = notifier
        self._stop = threading.Event()
        self._metrics: MetricsServer | None = None
        # The config file's detections, before the changes made over MQTT (`control`) are laid over them.
        self._file_detections = dict(file_detections if file_detections is not None else config.detections)
        self._control = control
        self._requests: queue.Queue[ControlRequest] = queue.Queue()  # from paho's thread to this one
        self.crashed = False
        self._inference = threading.Thread(target=self._run_inference, name="inference", daemon=True)

    @classmethod
    def start(cls, config: ClapdConfig, config_path: Path | None, notifier: Notifier) -> Service:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        file_detections = dict(config.detections)
        store = _control_store(config)
        if store is not None:
            config = config.model_copy(update={"detections": _merged(store, file_detections, config)})
        publishers = build_publishers(config)
        daemon = Daemon(config, resolve_bundle(config), publishers)
        service = cls(config, config_path, daemon, publishers, notifier, store, file_detections)
        try:
            daemon.load()
            if config.metrics.enabled:
                service._metrics = MetricsServer(config.metrics, daemon, publishers)
            daemon.start()
        except BaseException:
            service.stop()
            raise
        service._announce()
        if service._control is not None:
            for publisher in publishers:
                if hasattr(publisher, "set_control_handler"):
                    publisher.set_control_handler(service._requests.put)
        service._inference.start()
        notifier.ready(service._status_line())
        logger.info("running: %d streams, %d detections", len(config.streams), len(config.detections))
        return service

    def serve(self, signals: _Signals) -> None:
        """Until a stop signal or the end of every (finite) source; reloads on SIGHUP."""
        while self._inference.is_alive() and not signals.terminate:
            if signals.reload:
                signals.reload = False
                self.reload()
            self._serve_control_requests()
            time.sleep(CONTROL_POLL_SECONDS)  # a signal cuts the sleep short only for its handler: poll briefly

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Stop capture, end open events, flush or persist what is queued, say "offline"; within `timeout` s."""
        deadline = time.monotonic() + timeout
        self._notifier.stopping("stopping")
        self._stop.set()
        if self._inference.is_alive():
            self._inference.join(INFERENCE_JOIN_SHARE * timeout)  # a model call in progress finishes first
        self._daemon.shutdown(max(0.1, deadline - time.monotonic()), close_events=not self._inference.is_alive())
        if self._metrics is not None:
            self._metrics.close()
        self._notifier.close()

    def reload(self) -> None:
        """Re-read the config file: new detections and prompts go live between two model calls, audio keeps
        flowing; an invalid file is reported and the running config stays."""
        if self._config_path is None:
            logger.warning("SIGHUP: running on the embedded default, no config file to reload")
            return
        self._notifier.reloading("reloading the config")
        try:
            new = load_config(self._config_path)
            self._check_restart_needed(new)
            detections = dict(new.detections)
            if self._control is not None:
                detections = _merged(self._control, detections, new)
            self._apply(detections, list(new.background_prompts))
            self._file_detections = dict(new.detections)
        except (ConfigError, ControlError) as e:
            logger.error(
                "reload: %s has %d problem(s); the running config stays: %s",
                e.source,
                len(e.problems),
                "; ".join(e.problems),
            )
        except Exception:
            logger.exception("reload failed; the running config stays")
        self._notifier.ready(self._status_line())

    def _serve_control_requests(self) -> None:
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return
            self._publish_result(self._control_request(request))

    def _control_request(self, request: ControlRequest) -> ControlResult:
        """Apply one change made over MQTT: validated as the config is, live from the next model call, saved."""
        assert self._control is not None
        try:
            detections = apply_request(self._daemon.detections, request, list(self._config.streams))
            self._apply(detections, list(self._config.background_prompts))
            self._control.save(detections, self._file_detections)
        except ControlError as e:
            logger.warning("control: refused %s of %r: %s", request.action, request.detection, "; ".join(e.problems))
            return ControlResult.failure(request, e.problems)
        except OSError as e:  # applied, but not saved: say so, the change is lost at the next restart
            logger.error("control: %s of %r applied but not saved: %s", request.action, request.detection, e)
            return ControlResult.failure(request, [f"applied, but not saved in {self._control.path}: {e}"])
        except Exception as e:
            logger.exception("control: %s of %r failed", request.action, request.detection)
            return ControlResult.failure(request, [f"failed: {e}"])
        logger.info("control: %s of %r applied", request.action, request.detection)
        return ControlResult.success(request)

    def _publish_result(self, result: ControlResult) -> None:
        for publisher in self._publishers:
            if hasattr(publisher, "publish_control_result"):
                publisher.publish_control_result(result)

    def _apply(self, detections: dict[str, DetectionConfig], background: list[str]) -> None:
        prepared = self._daemon.prepare(detections, background)  # embeds new prompts while audio flows
        self._daemon.swap(prepared)
        self._config = self._config.model_copy(update={"detections": detections, "background_prompts": background})
        self._announce()
        logger.info("reloaded: %d detections", len(detections))

    def _check_restart_needed(self, new: ClapdConfig) -> None:
        changed = [key for key in RESTART_KEYS if getattr(new, key) != getattr(self._config, key)]
        if changed:
            logger.warning("reload: %s changed; that takes effect after a restart", ", ".join(changed))

    def _announce(self) -> None:
        """Tell publishers which (stream, detection) pairs exist (Home Assistant discovery)."""
        for publisher in self._publishers:
            if hasattr(publisher, "announce"):
                publisher.announce(list(self._config.streams), self._daemon.detections)

    def _run_inference(self) -> None:
        try:
            self._daemon.run(self._stop, self._notifier.watchdog)
        except Exception:
            logger.exception("the inference loop failed; stopping")  # systemd restarts us (Restart=on-failure)
            self.crashed = True

    def _status_line(self) -> str:
        detections = self._daemon.detections
        return f"listening: {len(self._config.streams)} streams, {len(detections)} detections"


def _control_store(config: ClapdConfig) -> ControlStore | None:
    """The saved MQTT changes, when control is on; with it off they are ignored (and say so)."""
    store = ControlStore(config.state_dir / CONTROL_FILE)
    mqtt = config.outputs.mqtt
    if mqtt is not None and mqtt.control.enabled:
        return store
    if store.path.exists():
        logger.warning("%s holds detection changes made over MQTT; ignored while mqtt.control is off", store.path)
    return None


def _merged(store: ControlStore, detections: dict[str, DetectionConfig], config: ClapdConfig) -> dict:
    """The config file's detections with the changes saved from MQTT laid over them."""
    return store.merge(detections, list(config.streams))
