"""A config wired into parts: the model, the detection preparer, the streams, the Detector, the outputs and the
control channel, handed over as one `Assembly` whose `Runner` is ready to start.

Everything that can fail before audio is opened happens here (bundle, model, prompts, warm-up, output set-up), so
`clapd run` fails fast with one message. Nothing here starts a thread.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from clapd.daemon.anomaly.monitor import anomaly_events, build_anomalies
from clapd.daemon.calibration import AutoThresholds, CalibrationStore, scoring_models
from clapd.daemon.clips import (
    build_clip_recorder,
    clips_directory,
    largest_pre_roll,
    privacy_matcher,
    ring_need_seconds,
    windows_view,
)
from clapd.daemon.config import ClapdConfig, FileSource
from clapd.daemon.control import ControlChannel
from clapd.daemon.demo import installed_demo_bundle
from clapd.daemon.detector import Detector
from clapd.daemon.enrol import ENROL_RING_SECONDS, Enroller
from clapd.daemon.events import StreamClock
from clapd.daemon.examples import ExampleEmbedder
from clapd.daemon.history import build_history_recorder
from clapd.daemon.inference import AudioModel, LazyTextModel, open_bundle
from clapd.daemon.manifest import BundleError, Manifest, window_samples_for
from clapd.daemon.output import Output
from clapd.daemon.prompts import DetectionPreparer
from clapd.daemon.ring import RingBuffer
from clapd.daemon.runner import Runner
from clapd.daemon.sources import build_source
from clapd.daemon.stdout_output import StdoutOutput
from clapd.daemon.streams import Stream
from clapd.daemon.web import WebPage, build_web
from clapd.daemon.windows import BEHIND_SHARE, StreamWindows

logger = logging.getLogger(__name__)

WINDOW_RING_SECONDS = 30  # the longest window plus generous slack for a slow model call
PROMPT_CACHE_DIR = "prompt-cache"  # in the state directory
EXAMPLE_CACHE_DIR = "example-cache"  # in the state directory


@dataclass(frozen=True, slots=True)
class Assembly:
    runner: Runner
    preparer: DetectionPreparer  # embeds the prompts of detections swapped in later (reload, control)
    outputs: list[Output]
    control: ControlChannel | None  # None unless mqtt.control is enabled
    enroller: Enroller | None = None  # example actions (enrol, false_alarm, forget_example) on the running streams
    web: WebPage | None = None  # the local web page (`web.enabled`): its output is among `outputs`


def assemble(
    config: ClapdConfig,
    *,
    utc_now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    outputs: Sequence[Output] | None = None,
) -> Assembly:
    """Load and check the model, embed the prompts and examples, warm up, and build streams, outputs and the
    runner. `outputs`: these instead of the configured ones, with no control channel (`clapd listen` renders)."""
    bundle_dir = resolve_bundle(config)
    manifest = open_bundle(bundle_dir)
    window, hop = window_samples_for(config.windows, manifest, bundle=bundle_dir)
    audio = AudioModel(bundle_dir, manifest, config.model)
    text = LazyTextModel(bundle_dir, manifest, config.model)
    examples = ExampleEmbedder.for_model(audio, manifest, window, hop, config.state_dir / EXAMPLE_CACHE_DIR)
    preparer = DetectionPreparer(
        text,
        config.state_dir / PROMPT_CACHE_DIR,
        manifest.text_side_sha256(),
        manifest.logit_scale,
        manifest.embedding_size,
        examples=examples,
        thresholds=AutoThresholds(CalibrationStore(config.state_dir), scoring_models(audio.entry.sha256, manifest)),
    )
    detections = preparer.prepare(config.detections, list(config.background_prompts))
    audio.warm_up()
    logger.info("model ready: %s %s on %s", manifest.source, audio.precision, audio.providers[0])
    streams = build_streams(config, manifest, window, hop, utc_now())
    gates = {name: stream.min_level_dbfs for name, stream in config.streams.items()}
    clocks = {s.name: s.clock for s in streams}
    anomalies = build_anomalies(
        config.streams, config.state_dir, clocks, audio.entry.sha256, window, hop, embed_text=text.embed
    )
    text.release()  # loaded only if anomaly descriptions were embedded
    hidden = privacy_matcher(config, text, manifest, config.state_dir / PROMPT_CACHE_DIR)
    keep = config.history.enabled  # the history stores every embedded window; privacy prompts keep them too
    detector = Detector(
        audio, detections, clocks, hop, gates=gates, anomalies=anomalies, hidden=hidden, keep_embedded=keep
    )
    clips = build_clip_recorder(config, {s.name: s.ring for s in streams}, manifest.sample_rate, hidden is not None)
    history = build_history_recorder(config, clocks, manifest.text_side_sha256())
    web = build_web(config, bundle_dir, manifest) if config.web.enabled and outputs is None else None
    outputs, control = build_outputs(config, manifest.sample_rate) if outputs is None else (list(outputs), None)
    if web is not None:
        outputs.append(web.output)
        if clips is not None:
            clips.link = web.clip_url
    mqtt = config.outputs.mqtt
    runner = Runner(
        streams,
        detector,
        outputs,
        sample_rate=manifest.sample_rate,
        level_interval=mqtt.level_interval_seconds if mqtt is not None else 0.0,
        utc_now=utc_now,
        recorders=[r for r in (clips, history) if r is not None],
        cancel_model=audio.cancel,
    )
    enroller = Enroller(runner, config.state_dir, window, clips_directory(config), manifest.sample_rate)
    return Assembly(runner, preparer, outputs, control, enroller, web)


def resolve_bundle(config: ClapdConfig) -> Path:
    bundle = config.model.bundle or installed_demo_bundle()
    if bundle is None:
        raise BundleError("model.bundle is not set and this install has no demo bundle: set model.bundle")
    return bundle


def ring_seconds(config: ClapdConfig) -> float:
    """Capture kept per stream for windows, and for enrolment where a request can ask for it (MQTT control or the
    web page): 50 s of float32 at 48 kHz is 9.6 MB a stream, 30 s 5.8 MB (bench_daemon: 64 streams)."""
    return max(WINDOW_RING_SECONDS, ENROL_RING_SECONDS) if config.takes_control_requests else WINDOW_RING_SECONDS


def build_streams(config: ClapdConfig, manifest: Manifest, window: int, hop: int, started: datetime) -> list[Stream]:
    """Each configured stream's source, ring, windows and clock; no source started yet. Pipe commands do not see
    the MQTT password's environment variable."""
    rate = manifest.sample_rate
    mqtt = config.outputs.mqtt
    secrets = [mqtt.password_env] if mqtt is not None and mqtt.password_env is not None else []
    streams = []
    pre_roll = largest_pre_roll(config.detections)  # None: no clips
    seconds = max(ring_seconds(config), ring_need_seconds(pre_roll, window, hop, rate))  # clips' need included
    for name, source_config in config.streams.items():
        ring = RingBuffer(round(seconds * rate), sanitize=True)  # where audio enters the stream: corrupt samples stop
        source = build_source(name, source_config, ring, rate, hidden_env=secrets)
        lossless = isinstance(source_config, FileSource) and not source_config.realtime
        view = windows_view(ring, pre_roll, window, hop, rate) if lossless else ring  # keeps the pre-roll
        behind = round(BEHIND_SHARE * WINDOW_RING_SECONDS * rate)  # the lag a ring of windows alone would allow
        windows = StreamWindows(name, view, window, hop, manifest.window_samples, lossless=lossless, behind_at=behind)
        streams.append(Stream(name, ring, source, windows, StreamClock(started, rate)))
    return streams


def build_outputs(config: ClapdConfig, sample_rate: int) -> tuple[list[Output], ControlChannel | None]:
    """The configured outputs (stdout when no broker is configured) and the control channel, not yet started."""
    outputs: list[Output] = []
    control: ControlChannel | None = None
    mqtt = config.outputs.mqtt
    if mqtt is not None:
        from clapd.daemon.mqtt import build_mqtt

        link = build_mqtt(
            mqtt,
            config.state_dir,
            client_id_default=f"clapd-{socket.gethostname()}"[:64],
            anomaly_events=anomaly_events(config.streams),
        )
        outputs.append(link.output)
        control = link.control
    if config.outputs.stdout or (config.outputs.stdout is None and mqtt is None):
        scores_rate = sample_rate if config.outputs.stdout_scores else None
        outputs.append(StdoutOutput(scores_rate=scores_rate))
    return outputs, control
