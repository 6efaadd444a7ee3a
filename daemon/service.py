"""`clapd run`: validate, load, warm up, then run until a signal (or until every file source has ended)."""

from __future__ import annotations

import functools
import logging
import os
import queue
import signal
import sys
import time
from pathlib import Path

from clapd.daemon.assembly import Assembly, assemble
from clapd.daemon.config import ClapdConfig, ConfigError, DetectionConfig, load_config
from clapd.daemon.control import (
    CONTROL_FILE,
    EXAMPLE_ACTIONS,
    ControlChannel,
    ControlError,
    ControlRequest,
    ControlResult,
    ControlStore,
    apply_request,
)
from clapd.daemon.demo import default_config, default_state_dir
from clapd.daemon.enrol import ExampleChange
from clapd.daemon.logs import configure_logging
from clapd.daemon.manifest import BundleError
from clapd.daemon.metrics import MetricsServer
from clapd.daemon.mqtt.connection import MqttSetupError
from clapd.daemon.mqtt.spool import SpoolError
from clapd.daemon.notify import Notifier
from clapd.daemon.sources import SourceError
from clapd.daemon.state_files import private_folder

logger = logging.getLogger(__name__)

EXIT_CONFIG = 2  # bad configuration: nothing was started
EXIT_STARTUP = 1  # bundle, device or model problems at start-up
EXIT_CRASHED = 3  # the inference loop died: non-zero so that systemd's Restart=on-failure restarts us
# SIGTERM to exit, at most; a stop usually takes well under a second, as each step ends when its work is done. Ample
# because a loaded machine (a model call in progress, a slow broker ack) once left the last events in the spool at 2 s;
# systemd's TimeoutStopSec (20 s) is longer.
STOP_SECONDS = 10.0
CONTROL_POLL_SECONDS = 0.1  # the main thread's reaction time to signals and control requests
RELOADABLE_KEYS = ("detections", "background_prompts")  # SIGHUP applies these; every other section needs a restart
RESTART_KEYS = tuple(key for key in ClapdConfig.model_fields if key not in RELOADABLE_KEYS)


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
    except ControlError as e:  # a bad control.json: like a bad config, a restart cannot fix it
        print(f"clapd run: {e}; nothing started", file=sys.stderr)
        notifier.stopping(f"start-up failed: {e}")
        return EXIT_CONFIG
    except (BundleError, SourceError, MqttSetupError, SpoolError, OSError, ValueError) as e:
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
    """The main thread's side of a running daemon: start-up, reloads, control requests, metrics, systemd messages.

    Detection changes (SIGHUP, control requests) all take one path, `_apply`: prompts are embedded here while audio
    flows, and the runner swaps the new detections into its Detector between two model calls.
    """

    def __init__(
        self,
        config: ClapdConfig,
        config_path: Path | None,
        assembly: Assembly,
        notifier: Notifier,
        saved_changes: ControlStore | None = None,
        file_detections: dict[str, DetectionConfig] | None = None,
    ) -> None:
        self._config = config
        self._config_path = config_path
        self._assembly = assembly
        self._runner = assembly.runner
        self._notifier = notifier
        self._metrics: MetricsServer | None = None
        # The config file's detections, before the changes made over MQTT (`saved_changes`) are laid over them.
        self._file_detections = dict(file_detections if file_detections is not None else config.detections)
        self._saved_changes = saved_changes
        # From the control channels' threads (MQTT, the web page), each with the channel that answers it.
        self._requests: queue.Queue[tuple[ControlRequest, ControlChannel]] = queue.Queue()
        web = assembly.web.control if assembly.web is not None else None
        self._channels: list[ControlChannel] = [c for c in (assembly.control, web) if c is not None]

    @property
    def crashed(self) -> bool:
        return self._runner.crashed

    @classmethod
    def start(cls, config: ClapdConfig, config_path: Path | None, notifier: Notifier) -> Service:
        private_folder(config.state_dir)  # 0700 if made here: it holds event payloads and settings
        file_detections = dict(config.detections)
        store = _control_store(config)
        if store is not None:
            config = config.model_copy(update={"detections": _merged(store, file_detections, config)})
        service = cls(config, config_path, assemble(config), notifier, store, file_detections)
        for channel in service._channels if store is not None else []:
            # Before connecting: "online" means requests are heard.
            channel.listen(functools.partial(service._take_request, channel))
        service._announce()  # before connecting too: the first connect publishes it, once
        try:
            if config.metrics.enabled:
                service._metrics = MetricsServer(config.metrics, service._runner, service._assembly.outputs)
            service._runner.start(heartbeat=notifier.watchdog)
            if service._assembly.web is not None:
                service._assembly.web.start()
        except BaseException:
            service.stop()
            raise
        notifier.ready(service._status_line())
        logger.info("running: %d streams, %d detections", len(config.streams), len(config.detections))
        return service

    def serve(self, signals: _Signals) -> None:
        """Until a stop signal or the end of every (finite) source; reloads on SIGHUP. The signals are looked at
        between two control requests, so a queue of them holds up neither a stop nor a reload."""
        while self._runner.running() and not signals.terminate:
            if signals.reload:
                signals.reload = False
                self.reload()
            self._serve_control_requests(signals)
            time.sleep(CONTROL_POLL_SECONDS)  # a signal cuts the sleep short only for its handler: poll briefly

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Stop capture, end open events, flush or persist what is queued, say "offline"; within `timeout` s."""
        self._notifier.stopping("stopping")
        self._runner.stop(timeout)
        self._drop_control_requests()
        if self._assembly.web is not None:
            self._assembly.web.close()
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
            if self._saved_changes is not None:
                detections = _merged(self._saved_changes, detections, new)
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
        self._runner.reload_banks()  # a bank `clapd learn-normal --rebaseline` stored meanwhile
        self._notifier.ready(self._status_line())

    def _serve_control_requests(self, signals: _Signals) -> None:
        """The queued requests, one at a time, until none is left or a signal (or the runner's end) needs the loop."""
        while self._channels and self._runner.running() and not (signals.terminate or signals.reload):
            try:
                request, channel = self._requests.get_nowait()
            except queue.Empty:
                return
            channel.answer(self._control_request(request))

    def _take_request(self, channel: ControlChannel, request: ControlRequest) -> None:
        """A channel's handler (in the channel's thread): only enqueue, with the channel that answers it."""
        self._requests.put((request, channel))

    def _rebaseline(self, request: ControlRequest) -> ControlResult:
        """A stream's normal bank learnt anew from its coming audio (the bank is replaced, on disk too, once learnt)."""
        assert request.stream is not None and request.seconds is not None  # parse_request checked them
        try:
            self._runner.rebaseline(request.stream, request.seconds)
        except ValueError as e:
            logger.warning("control: refused rebaseline of %r: %s", request.stream, e)
            return ControlResult.failure(request, [f"stream = {request.stream!r}: {e}"])
        logger.info("control: rebaseline of %r from its next %.0f s", request.stream, request.seconds)
        return ControlResult.success(request)

    def _drop_control_requests(self) -> None:
        """Requests still queued at the stop are dropped: not applied, not answered (a result for each would hold up
        the outputs' last messages within the stop time); a requester without a result must not assume success."""
        dropped = 0
        while True:
            try:
                self._requests.get_nowait()
            except queue.Empty:
                break
            dropped += 1
        if dropped:
            logger.warning("stopping: %d queued control request(s) dropped, not applied and not answered", dropped)

    def _control_request(self, request: ControlRequest) -> ControlResult:
        """Apply one change made over MQTT or the web page: validated as the config is, live from the next model
        call, saved."""
        assert self._saved_changes is not None, "requests are taken only with a store"
        if request.action == "rebaseline":
            return self._rebaseline(request)
        mqtt = self._config.outputs.mqtt
        limit = mqtt.control.max_detections if mqtt is not None else None
        change = ExampleChange({})
        try:
            change = self._changed(request, limit)
            self._apply(change.detections, list(self._config.background_prompts))
            self._saved_changes.save(change.detections, self._file_detections)
        except ControlError as e:
            change.undo()
            logger.warning("control: refused %s of %r: %s", request.action, request.detection, "; ".join(e.problems))
            return ControlResult.failure(request, e.problems)
        except OSError as e:  # applied, but not saved: say so, the change is lost at the next restart
            logger.error("control: %s of %r applied but not saved: %s", request.action, request.detection, e)
            return ControlResult.failure(request, [f"applied, but not saved in {self._saved_changes.path}: {e}"])
        except Exception as e:
            change.undo()
            logger.exception("control: %s of %r failed", request.action, request.detection)
            return ControlResult.failure(request, [f"failed: {e}"])
        change.finish()
        logger.info("control: %s of %r applied", request.action, request.detection)
        return ControlResult.success(request, change.example)

    def _changed(self, request: ControlRequest, limit: int | None) -> ExampleChange:
        """The detections after the request (an example action's with the example file it adds or removes)."""
        streams, enroller = list(self._config.streams), self._assembly.enroller
        if request.action in EXAMPLE_ACTIONS and enroller is not None:
            return enroller.change(self._runner.detections, request, streams, limit)
        return ExampleChange(apply_request(self._runner.detections, request, streams, limit))

    def _apply(self, detections: dict[str, DetectionConfig], background: list[str]) -> None:
        """The one path of every detection change: embed while audio flows, swap in between two model calls."""
        self._runner.swap(self._assembly.preparer.prepare(detections, background))
        self._config = self._config.model_copy(update={"detections": detections, "background_prompts": background})
        self._announce()
        logger.info("reloaded: %d detections", len(detections))

    def _check_restart_needed(self, new: ClapdConfig) -> None:
        changed = [key for key in RESTART_KEYS if getattr(new, key) != getattr(self._config, key)]
        if changed:
            logger.warning("reload: %s changed; that takes effect after a restart", ", ".join(changed))

    def _announce(self) -> None:
        """Tell the outputs which streams and detections exist (Home Assistant discovery)."""
        for output in self._assembly.outputs:
            output.announce(list(self._config.streams), self._runner.detections)

    def _status_line(self) -> str:
        return f"listening: {len(self._config.streams)} streams, {len(self._runner.detections)} detections"


def _control_store(config: ClapdConfig) -> ControlStore | None:
    """The saved control changes, when a control channel is on (MQTT control, the web page's buttons); with none
    on they are ignored (and say so)."""
    store = ControlStore(config.state_dir / CONTROL_FILE)
    if config.takes_control_requests:
        return store
    if store.path.exists():
        logger.warning(
            "%s holds detection changes made over MQTT or the web page; ignored while mqtt.control and web are off",
            store.path,
        )
    return None


def _merged(store: ControlStore, detections: dict[str, DetectionConfig], config: ClapdConfig) -> dict:
    """The config file's detections with the changes saved from MQTT laid over them."""
    return store.merge(detections, list(config.streams))
