r"""The whole daemon on the CPU: event latency to a real broker, streams kept in real time, resident memory.

Full-size random-weight reference model (the `laion/clap-htsat-unfused` architecture). Every stream is a `pipe`
source whose command is a small Python writer pacing s16le audio by the clock, as a live source would deliver it.

1. Latency: `clapd run` (a subprocess) on one stream into mosquitto on loopback; onsets of a loud noise burst are
   planted at random phases against the hop grid, and the writer logs the wall-clock time it wrote each onset.
   The latency is from then until a subscriber has the detection's start event. The background is hiss repeating
   with the hop as period, so every window without the burst is bit-identical and scores exactly the same. The
   prompts, a single background prompt (with which a score rises exactly when (prompt - background) . embedding
   does) and thresholds just above the background's score are chosen from the scores the daemon's own `Detector`
   gives offline for the same audio's windows, which also say on which window each start event must come, so a
   window fires as soon as it holds any of the burst: the figure is the daemon's, not the model's. The daemon's
   debug log dates each model call, which splits the time after the window.
2. Capacity: N streams in one daemon (`assemble(config)` in a worker process, `daemon_capacity.py`) for a minute
   each, N doubling until windows get skipped, then one bisection step; on a busy workload (every window runs the
   model) and a quiet room's (the level gate keeps most windows from the model).
3. Memory: VmRSS and VmHWM of the daemon's process after warm-up and after the run.

    .venv/bin/python benchmarks/bench_daemon.py --write docs/benchmarks.md
    .venv/bin/python benchmarks/bench_daemon.py --size small --wait-minutes 0 --latency-windows 2:0.5 \
        --precisions int8 --onsets 3 --capacity-windows 2:1 --capacity-streams 1 --seconds 10   # a quick check
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml
from common import (
    CachedEmbedder,
    arg_parser,
    detect_offline,
    detection_preparer,
    header_lines,
    launch_daemon,
    memory_mib,
    mosquitto,
    publish,
    reference_bundle,
    stop_daemon,
    subscriber,
)
from daemon_capacity import (
    CAPACITY_CHUNK,
    MAX_LAG_S,
    QUIET_CHUNK,
    QUIET_GATE_DBFS,
    QUIET_LOOP_S,
    QUIET_SOUND_S,
    QUIET_START_STREAMS,
    RATE,
    TOPIC_PREFIX,
    WRITER,
    Capacity,
    CapacityRun,
    best_streams,
    capacity_table,
    median,
    quantile,
    search_capacity,
    to_s16,
    write_raw,
    write_workload,
)

from clapd.daemon.config import ModelConfig
from clapd.daemon.detector import Detections
from clapd.daemon.mqtt.spool import SPOOL_FILE

if TYPE_CHECKING:
    from mqtt_broker import Received, Subscriber  # the tests' subscriber (`common.subscriber`)

    from clapd.daemon.prompts import DetectionPreparer

S16_SCALE = np.float32(1.0 / 32768.0)  # the pipe source's s16le -> float scale
LATENCY_CHUNK = 480  # samples per write in the latency runs: 10 ms, a whole fraction of every hop
HISS = 0.003  # background amplitude (about -50 dBFS)
BURST = 0.5  # planted noise burst amplitude
MARGIN_S = 1.0  # background after the last window that holds a burst (and two hops), so every event ends
TAU_MIN = 1e-6  # smallest score step above the background score that counts as "heard"
MAX_PROMPTS = 4  # detections used to catch the bursts
CANDIDATE_PROMPTS = (
    "a loud bang",
    "white noise",
    "glass breaking",
    "a dog barking",
    "a smoke alarm",
    "a siren",
    "speech",
    "a loud beep",
    "rain",
    "a car horn",
    "a baby crying",
    "music",
    "footsteps",
    "a door slamming",
    "thunder",
    "static",
)
IDLE_LOAD = 1.0  # 1-min load average below which the machine counts as idle
BUSY_PATTERN = "build_demo_model"  # another engineer's training run: timings taken meanwhile are worthless
START, END = "<!-- bench_daemon:start -->", "<!-- bench_daemon:end -->"
DEFAULTS = {name: ModelConfig.model_fields[name].default for name in ("threads", "parallel_calls", "cpu_batch")}
STREAM = "s"  # the latency stream's name, offline and in the daemon
PACKAGES = ("onnxruntime", "numpy", "paho-mqtt", "pydantic", "prometheus-client")

# --- assets ---


def bundle_for(args: argparse.Namespace) -> Path:
    """--bundle, else the reference model of --size with fp32 and int8 (shared with bench_audio_cpu.py)."""
    return args.bundle or reference_bundle(args.size, ("fp32", "int8")).bundle


def as_daemon_sees_it(s16: np.ndarray) -> np.ndarray:
    return s16.astype(np.float32) * S16_SCALE


# --- the latency stream ---


@dataclass(frozen=True, slots=True)
class Plan:
    """One latency stream: background hiss with `hop` as period, and noise bursts at `onsets` (samples)."""

    window_s: float
    hop_s: float
    burst_s: float
    spacing: int  # samples between onsets' hops: the burst, a window, two hops and MARGIN_S, in whole hops
    onsets: list[int]
    audio: np.ndarray  # int16 [samples]

    @property
    def window(self) -> int:
        return round(self.window_s * RATE)

    @property
    def hop(self) -> int:
        return round(self.hop_s * RATE)


def make_plan(window_s: float, hop_s: float, n_onsets: int, seed: int = 7) -> Plan:
    """The first onset after one clean window; each onset at a random phase within its hop."""
    rng = np.random.default_rng(seed)
    hop, window = round(hop_s * RATE), round(window_s * RATE)
    burst_s = min(1.0, window_s / 4)
    spacing = round((burst_s + window_s + MARGIN_S) * RATE) + 2 * hop  # the phases shift onsets by < 1 hop
    spacing -= spacing % hop  # onsets on the same phase grid as the windows, plus their own random phase
    total = window + n_onsets * spacing + hop
    period = HISS * rng.standard_normal(hop)
    audio = np.tile(period, total // hop + 1)[:total]
    onsets = []
    for j in range(n_onsets):
        onset = window + j * spacing + int(rng.integers(0, hop))
        burst = round(burst_s * RATE)
        audio[onset : onset + burst] += BURST * rng.standard_normal(burst)
        onsets.append(onset)
    return Plan(window_s, hop_s, burst_s, spacing, onsets, to_s16(audio))


# --- offline scores and thresholds ---


@dataclass(frozen=True, slots=True)
class Expected:
    detections: dict[str, dict]  # name -> DetectionConfig fields
    background: list[str]  # the config's background_prompts
    window_ends: dict[int, int]  # onset -> end sample of the window whose start event comes first (offline)
    first_window: int  # onsets caught by the first window that holds them


@dataclass(frozen=True, slots=True)
class Offline:
    """The latency stream's audio as the daemon gets it, and what the daemon's `Detector` needs to score it."""

    embedder: CachedEmbedder  # the daemon's `AudioModel`, each distinct window run once, one per call
    preparer: DetectionPreparer  # the daemon's prompt cache in the state directory: the daemon then finds them
    audio: np.ndarray  # float32 [samples], as the pipe source converts the s16le
    model_window: int  # samples: the model's input

    def detect(self, plan: Plan, detections: dict[str, dict], background: list[str]) -> Detections:
        """The recording through the daemon's `Detector` with these detections (config fields) and background."""
        from clapd.daemon.config import DetectionConfig

        configs = {name: DetectionConfig.model_validate(fields) for name, fields in detections.items()}
        prepared = self.preparer.prepare(configs, background)
        return detect_offline(
            self.embedder, prepared, STREAM, self.audio, plan.window, plan.hop, self.model_window, RATE
        )


def offline(bundle: Path, state_dir: Path, precision: str, plan: Plan) -> Offline:
    """The daemon's model at `precision` (its `model` config), its prompts, and the plan's windows checked against
    those the daemon will take."""
    from clapd.daemon.assembly import PROMPT_CACHE_DIR
    from clapd.daemon.config import ModelConfig, WindowConfig
    from clapd.daemon.inference import AudioModel, open_bundle
    from clapd.daemon.manifest import window_samples_for

    manifest = open_bundle(bundle)
    windows = WindowConfig(window_seconds=plan.window_s, hop_seconds=plan.hop_s)
    if (manifest.sample_rate, *window_samples_for(windows, manifest)) != (RATE, plan.window, plan.hop):
        raise SystemExit(f"{bundle}: a {manifest.sample_rate} Hz model; this benchmark writes {RATE} Hz")
    model_config = ModelConfig.model_validate(model_settings(bundle, precision))
    model = AudioModel(bundle, manifest, model_config)
    model.warm_up()
    preparer = detection_preparer(bundle, manifest, model_config, state_dir / PROMPT_CACHE_DIR)
    audio = as_daemon_sees_it(plan.audio)
    return Offline(CachedEmbedder(model), preparer, audio, manifest.window_samples)


def candidate_scores(scoring: Offline, plan: Plan) -> np.ndarray:
    """[background q, windows, detection p]: prompt p's score against the single background prompt q, by the
    daemon's Detector. With one background prompt the score rises exactly when (p - q) . e does."""
    candidates = {f"p{k}": {"prompts": [prompt]} for k, prompt in enumerate(CANDIDATE_PROMPTS)}
    scores = []
    for background in CANDIDATE_PROMPTS:
        found = scoring.detect(plan, candidates, [background])
        scores.append([[window.values[name] for name in candidates] for window in found.scores])
    return np.array(scores)


def choose_detections(plan: Plan, scores: np.ndarray, q: int) -> tuple[dict[str, dict], int]:
    """Prompts (greedily, at most MAX_PROMPTS) whose score against background q rises above the background's in the
    first window that holds each onset, with thresholds just above it; and how many onsets they catch so."""
    starts = np.arange(scores.shape[0]) * plan.hop
    burst = round(plan.burst_s * RATE)
    holds = np.zeros(scores.shape[0], dtype=bool)
    for onset in plan.onsets:
        holds |= (starts < onset + burst) & (starts + plan.window > onset)
    clean = scores[~holds]
    base = clean.max(axis=0)
    tau = max(TAU_MIN, 2 * float((clean.max(axis=0) - clean.min(axis=0)).max()))
    first = [int(np.argmax(starts + plan.window > onset)) for onset in plan.onsets]
    heard = scores[first] - base > 2 * tau  # [onsets, candidates]
    heard[:, q] = False  # a prompt against itself scores 0.5 whatever it hears
    chosen: list[int] = []
    covered = np.zeros(len(plan.onsets), dtype=bool)
    while len(chosen) < MAX_PROMPTS:
        gain = (heard & ~covered[:, None]).sum(axis=0)
        best = int(np.argmax(gain))
        if gain[best] == 0:
            break
        chosen.append(best)
        covered |= heard[:, best]
    if not chosen:  # no prompt hears any first window: take the one that rises most over the bursts' windows
        rise = (scores[holds] - base).max(axis=0)
        rise[q] = -np.inf
        chosen = [int(np.argmax(rise))]
    detections = {
        f"p{k}": {
            "prompts": [CANDIDATE_PROMPTS[k]],
            "threshold_on": float(base[k] + tau),
            "threshold_off": float(base[k] + tau / 2),
            "smoothing_windows": 1,
        }
        for k in chosen
    }
    return detections, int(covered.sum())


def expected_events(scoring: Offline, plan: Plan, detections: dict[str, dict], background: list[str]) -> dict[int, int]:
    """Onset -> end sample of the window whose start event the daemon must publish first, by its own Detector."""
    ends: dict[int, int] = {}
    for event in scoring.detect(plan, detections, background).events:
        end = event.start_sample + plan.hop // 2  # smoothing 1: the onset is placed half a hop before the end
        onset = onset_of(plan, end)
        if event.kind == "start" and onset is not None:
            ends.setdefault(onset, end)
    return ends


def expect(bundle: Path, state_dir: Path, precision: str, plan: Plan) -> Expected:
    """Offline, on the audio the daemon will get: the background prompt and detections that catch the most onsets
    on their first window, and the events the daemon must then publish."""
    scoring = offline(bundle, state_dir, precision, plan)
    scores = candidate_scores(scoring, plan)
    options = [(*choose_detections(plan, scores[q], q), q) for q in range(len(CANDIDATE_PROMPTS))]
    detections, caught, q = max(options, key=lambda o: (o[1], -len(o[0])))
    background = [CANDIDATE_PROMPTS[q]]
    ends = expected_events(scoring, plan, detections, background)
    first = sum(1 for onset, end in ends.items() if end - onset <= plan.hop)
    return Expected(detections, background, ends, first)


def onset_of(plan: Plan, window_end: int) -> int | None:
    """The planted onset whose burst a window ending at `window_end` holds (None: a false start)."""
    burst = round(plan.burst_s * RATE)
    for onset in plan.onsets:
        if onset < window_end < onset + burst + plan.window:
            return onset
    return None


# --- 1. latency ---


@dataclass(frozen=True, slots=True)
class Latency:
    window_s: float
    hop_s: float
    precision: str
    onsets: int
    detected: int
    as_offline: int  # detected on exactly the window the offline run predicts
    first_window: int  # offline: onsets caught by the first window that holds them
    false_starts: int
    latency_s: list[float]  # the onset written -> the start event at the subscriber
    wait_s: list[float]  # the onset written -> the last chunk of the detecting window written
    to_model_s: list[float]  # that chunk written -> the model call on its window begins
    model_s: list[float]  # the model call (the batch holding the window), from the daemon's debug log
    to_subscriber_s: list[float]  # the model call done -> the event at the subscriber
    prompts: int
    startup_s: float  # `clapd run` started -> "online" at the broker (hashes, both models, warm-up)
    memory_start: dict[str, float]
    memory_end: dict[str, float]
    errors: list[str] = field(default_factory=list)


# The runner's debug line after each model call (`common.launch_daemon(batch_log=True)`): it dates every call, which
# the metrics' histogram cannot, and so splits each onset's latency into its parts.
BATCH_LINE = re.compile(r"^(\S+ \S+) DEBUG clapd\.daemon\.runner: (\d+) windows in (\d+) ms")


def model_settings(bundle: Path, precision: str) -> dict:
    """The latency runs' `model` config, offline and in the daemon."""
    return {"bundle": str(bundle), "providers": ["cpu"], "precision": precision}  # threads etc.: the defaults


def latency_config(plan: Plan, files: dict[str, Path], precision: str, expected: Expected, port: int) -> dict:
    onsets = ",".join(map(str, plan.onsets))
    loop_from = 2 * (plan.audio.size - plan.hop)  # keep writing the last hop: background
    command = [sys.executable, "-c", WRITER, str(files["raw"]), str(LATENCY_CHUNK), str(loop_from)]
    command += [str(files["side"]), onsets]
    return {
        "model": model_settings(files["bundle"], precision),
        "windows": {"window_seconds": plan.window_s, "hop_seconds": plan.hop_s},
        "streams": {STREAM: {"type": "pipe", "command": command, "sample_rate": RATE, "sample_format": "s16le"}},
        "detections": expected.detections,
        "background_prompts": expected.background,
        "outputs": {"mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": TOPIC_PREFIX, "qos": 1}},
        "state_dir": str(files["state"]),
    }


def read_side(side: Path) -> tuple[dict[int, float], float | None]:
    """The writer's log: onset sample -> wall time written, and when the planned audio was all written."""
    onsets, done = {}, None
    if side.exists():
        for line in side.read_text().splitlines():
            record = json.loads(line)
            if "onset" in record:
                onsets[record["onset"]] = record["t"]
            else:
                done = record["t"]
    return onsets, done


def model_calls(log: Path) -> list[tuple[float, float]]:
    """Per window, in order (one stream, none skipped): (wall time its model call was done, that call's seconds)."""
    calls = []
    for line in log.read_text().splitlines():
        if match := BATCH_LINE.match(line):
            done = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as logged
            calls += [(done, int(match[3]) / 1000)] * int(match[2])
    return calls


def run_latency(plan: Plan, precision: str, expected: Expected, bundle: Path, port: int, work_dir: Path) -> Latency:
    name = f"latency-{plan.window_s:g}s-{precision}"
    files = {"raw": work_dir / f"latency-{plan.window_s:g}s.s16le", "side": work_dir / f"{name}.jsonl"}
    files |= {"state": work_dir / "state", "bundle": bundle, "config": work_dir / f"{name}.yaml"}
    write_raw(files["raw"], plan.audio)
    files["side"].unlink(missing_ok=True)
    for stale in files["state"].glob(f"{SPOOL_FILE}*"):
        stale.unlink()  # unsent messages of an earlier run would be replayed
    files["config"].write_text(yaml.safe_dump(latency_config(plan, files, precision, expected, port)))
    listener = subscriber(port, f"{TOPIC_PREFIX}/#", client_id=f"bench-{os.getpid()}")
    print(f"latency: {name}, {len(plan.onsets)} onsets, {plan.audio.size / RATE:.0f} s ...", file=sys.stderr)
    log = work_dir / f"{name}.log"
    try:
        watched = watch_daemon(files, listener, log, plan.audio.size / RATE + 60)
    finally:
        listener.close()
    watched["errors"] += [line for line in log.read_text().splitlines() if " WARNING " in line][:5]
    measured = measure_latency(plan, expected, listener.received(), read_side(files["side"])[0], model_calls(log))
    return Latency(window_s=plan.window_s, hop_s=plan.hop_s, precision=precision, **measured, **watched)


def watch_daemon(files: dict[str, Path], subscriber: Subscriber, log: Path, timeout: float) -> dict:
    """Run `clapd run` until its writer has written all the planned audio: start-up time, memory, errors."""
    errors: list[str] = []
    with log.open("w") as stderr:
        launched = time.monotonic()
        daemon = launch_daemon(files["config"], stdout=None, stderr=stderr, batch_log=True)
        try:
            try:
                subscriber.wait_for(lambda got: any(m.payload == b"online" for m in got), 180, "online")
            except AssertionError:
                errors.append("the daemon never said online")
            startup = time.monotonic() - launched
            memory_start = memory_mib(daemon.pid) if daemon.poll() is None else {}
            deadline = time.monotonic() + timeout
            while read_side(files["side"])[1] is None and time.monotonic() < deadline and daemon.poll() is None:
                time.sleep(0.5)
            time.sleep(2.0)  # the last window's event, if any, is long published by now
            memory_end = memory_mib(daemon.pid) if daemon.poll() is None else {}
        finally:
            if stop_daemon(daemon) != 0:
                errors.append(f"clapd run exited with {daemon.returncode}")
    return {"startup_s": startup, "memory_start": memory_start, "memory_end": memory_end, "errors": errors}


def measure_latency(
    plan: Plan,
    expected: Expected,
    messages: list[Received],
    written: dict[int, float],
    calls: list[tuple[float, float]],
) -> dict:
    """The fields of `Latency` from the events received, the onsets' write times and the daemon's model calls."""
    first: dict[int, tuple[float, int]] = {}  # onset -> (arrival, window end) of its earliest start event
    false_starts = 0
    for message in messages:
        if not message.topic.endswith("/event") or (event := json.loads(message.payload))["kind"] != "start":
            continue
        arrival = message.at
        end = round(event["start_offset_seconds"] * RATE) + plan.hop // 2  # smoothing 1: onset = end - hop/2
        onset = onset_of(plan, end)
        if onset is None:
            false_starts += 1
        elif onset not in first or arrival < first[onset][0]:
            first[onset] = (arrival, end)
    parts: dict[str, list[float]] = {k: [] for k in ("latency_s", "wait_s", "to_model_s", "model_s", "to_subscriber_s")}
    for onset, (arrival, end) in sorted(first.items()):
        index = (end - plan.window) // plan.hop
        if onset not in written or index >= len(calls):
            continue
        chunk_end = (onset // LATENCY_CHUNK + 1) * LATENCY_CHUNK  # the onset was written with its chunk
        window_written = written[onset] + (end - chunk_end) / RATE  # the writer is paced by the clock
        done, seconds = calls[index]
        parts["latency_s"].append(arrival - written[onset])
        parts["wait_s"].append(window_written - written[onset])
        parts["to_model_s"].append(done - seconds - window_written)
        parts["model_s"].append(seconds)
        parts["to_subscriber_s"].append(arrival - done)
    return parts | {
        "onsets": len(plan.onsets),
        "detected": len(first),
        "as_offline": sum(1 for onset, (_, end) in first.items() if expected.window_ends.get(onset) == end),
        "first_window": expected.first_window,
        "false_starts": false_starts,
        "prompts": len(expected.detections),
    }


# --- the machine ---


def wait_until_idle(max_minutes: float, poll_s: float = 30.0) -> tuple[float, float, bool]:
    """Until nothing matches BUSY_PATTERN and the 1-min load is below IDLE_LOAD: (waited s, load, idle?)."""
    started = time.monotonic()
    while True:
        busy = subprocess.run(["pgrep", "-f", BUSY_PATTERN], capture_output=True, check=False).returncode == 0
        load = os.getloadavg()[0]
        waited = time.monotonic() - started
        if not busy and load < IDLE_LOAD:
            return waited, load, True
        if waited >= 60 * max_minutes:
            return waited, load, False
        print(f"waiting for an idle machine: {BUSY_PATTERN} running: {busy}, load {load:.2f}", file=sys.stderr)
        time.sleep(poll_s)


def busy_now() -> bool:
    return subprocess.run(["pgrep", "-f", BUSY_PATTERN], capture_output=True, check=False).returncode == 0


# --- the report ---


def latency_table(results: list[Latency]) -> str:
    rows = [
        "| window / hop | precision | onsets | detected (as offline) | false starts | latency p50 | p95 | max "
        "| wait for the window p50 / max | then to the model call p50 | model call p50 | then to the subscriber p50 "
        "| p95 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r.window_s:g} s / {r.hop_s:g} s | {r.precision} | {r.onsets} | {r.detected} ({r.as_offline}) "
            f"| {r.false_starts} | {median(r.latency_s):.3f} s | {quantile(r.latency_s, 0.95):.3f} s "
            f"| {max(r.latency_s, default=math.nan):.3f} s | {median(r.wait_s):.3f} / "
            f"{max(r.wait_s, default=math.nan):.3f} s | {1000 * median(r.to_model_s):.0f} ms "
            f"| {1000 * median(r.model_s):.0f} ms | {1000 * median(r.to_subscriber_s):.0f} ms "
            f"| {1000 * quantile(r.to_subscriber_s, 0.95):.0f} ms |"
        )
    return "\n".join(rows)


def memory_table(latency: list[Latency], capacity: list[Capacity]) -> str:
    rows = [
        "| process | start-up | VmRSS after warm-up | VmHWM after warm-up | VmRSS after the run | VmHWM after the run "
        "| VmRSS after malloc_trim |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def mib(d: dict[str, float], key: str) -> str:
        return f"{d[key]:.0f} MiB" if key in d else "-"

    def row(label: str, startup: float, start: dict[str, float], end: dict[str, float], trimmed: str) -> str:
        cells = (mib(start, "VmRSS"), mib(start, "VmHWM"), mib(end, "VmRSS"), mib(end, "VmHWM"), trimmed)
        return f"| {label} | {startup:.1f} s | " + " | ".join(cells) + " |"

    for r in latency:
        label = f"`clapd run`, 1 stream, {r.window_s:g} s window, {r.precision}"
        rows.append(row(label, r.startup_s, r.memory_start, r.memory_end, "-"))
    best = best_streams(capacity)
    for r in capacity:
        if r.streams in (1, best.get((r.workload, r.window_s))):
            label = f"daemon (worker, {r.workload}), {r.streams} stream(s), {r.window_s:g} s window, int8"
            rows.append(row(label, r.startup_s, r.memory_start, r.memory_end, f"{r.rss_trimmed:.0f} MiB"))
    return "\n".join(rows)


def summary(latency: list[Latency], capacity: list[Capacity]) -> list[str]:
    """What the numbers mean, with the figures of this run."""
    lines = []
    for r in latency:
        lines.append(
            f"- {r.window_s:g} s / {r.hop_s:g} s, {r.precision}: median {median(r.latency_s):.2f} s = "
            f"{median(r.wait_s):.2f} s waiting for the window that holds the onset to be complete (uniform over "
            f"one hop, {r.hop_s:g} s, where the first such window fires: offline {r.first_window}/{r.onsets} did) "
            f"+ {1000 * median(r.to_model_s):.0f} ms until its model call starts (pipe read, the idle poll, a call "
            f"still running) + {1000 * median(r.model_s):.0f} ms model call + {1000 * median(r.to_subscriber_s):.0f}"
            " ms to the subscriber (matching, event tracking with `smoothing_windows: 1`, the spool's fsyncs, "
            "MQTT QoS 1 on loopback)."
        )
    for (workload, window_s), n in sorted(best_streams(capacity).items()):
        run = next(r for r in capacity if (r.workload, r.window_s, r.streams) == (workload, window_s, n))
        per_window, ran = run.ms_per_model_window, run.model_share
        lines.append(
            f"- {workload}, {window_s:g} s window at a 1 s hop: {n} streams in real time; a window run costs "
            f"{per_window:.0f} ms there and {100 * ran:.0f} % of the windows ran the model, so the model alone would "
            f"allow about {1000 / per_window / ran:.0f}. The window length changes nothing for a window that runs: "
            "every window is repeat-padded to the model's 10 s input."
        )
    trimmed = [r for r in capacity if r.memory_start]
    if trimmed:
        r = trimmed[0]
        lines.append(
            f"- memory: VmHWM {r.memory_start['VmHWM']:.0f} MiB after start-up (the text model, about 500 MB at full "
            "size, is loaded only for prompts missing from the prompt cache, and released after them); VmRSS "
            f"{r.memory_end['VmRSS']:.0f} MiB after the run, {r.rss_trimmed:.0f} MiB after malloc_trim(0) (heap freed "
            "but kept by glibc). "
            "Each stream adds its ring (float32 at 48 kHz: 30 s, 5.5 MiB; 50 s, 9.2 MiB where MQTT control or the "
            "web page can ask for enrolment) and its windows in flight."
        )
    return lines


def section(latency: list[Latency], capacity: list[Capacity], model: str, notes: list[str], seconds: float) -> str:
    best = best_streams(capacity)
    capacity_line = ", ".join(f"{k}, {w:g} s window: {n} streams" for (k, w), n in sorted(best.items())) or "none"
    problems = [f"- {r.window_s:g} s {r.precision}: {e}" for r in latency for e in r.errors]
    lines = [
        START,
        "## The whole daemon on the CPU: event latency, streams in real time, memory",
        "",
        f"Written by `benchmarks/bench_daemon.py`: {model}, CPUExecutionProvider, "
        f"the daemon's model settings (latency: the defaults, {DEFAULTS['threads']} thread(s) per model call x "
        f"{DEFAULTS['parallel_calls']} calls at once, at most {DEFAULTS['cpu_batch']} window(s) per call; capacity: "
        "threads per call x calls at once as its table says); every stream a `pipe` source whose writer paces "
        "s16le at 48 kHz by the clock "
        f"({LATENCY_CHUNK // 48} ms writes for latency, {CAPACITY_CHUNK // 48} ms for capacity); mosquitto on "
        "loopback, QoS 1 (the daemon's spool, `synchronous=FULL`, in between).",
        "",
        *header_lines(PACKAGES, mosquitto=True),
        f"- whole run: {seconds / 60:.0f} min",
        *[f"- {note}" for note in notes],
        "",
        "### 1. Latency: a planted onset to the start event at a subscriber (`clapd run`, one stream)",
        "",
        f"Noise bursts ({BURST} amplitude) planted over hiss that repeats with the hop as period, each onset at a "
        "random phase against the hop grid. The writer logs when it wrote each onset; the daemon's debug log dates "
        "each model call. Every window without a burst is bit-identical, so it scores exactly the same; the "
        "detections (at most 4 prompts) and the single background prompt are chosen offline, from the scores the "
        "daemon's own `Detector` gives the same audio's windows, so that a score rises in the first window that "
        "holds a burst, thresholds just above the background's score, `smoothing_windows: 1`: a window fires once "
        "it holds any of the burst, and with random weights the figure is the daemon's, not a model's sensitivity. "
        "*As offline*: fired on exactly the window on which the offline `Detector` started its event. *Wait for the "
        "window*: from the onset written to the last chunk of the detecting window written.",
        "",
        latency_table(latency),
        "",
        "### 2. Streams kept in real time at a 1 s hop (int8, one daemon)",
        "",
        "N pipe streams in one daemon process for the given seconds; N doubles until the daemon does not keep up "
        '(windows skipped, i.e. the daemon logged "inference is behind", or a result lag over '
        f"{MAX_LAG_S:g} s), then one bisection step. *Result lag*: audio written after a batch's oldest window "
        "ended, by the time the batch was done. "
        "*Writers CPU*: the N writer processes, which share the same 2 cores. Workloads: *busy*, every window "
        "runs the model (hiss with tones and bursts, no level gate), the worst case; *quiet*, a quiet room (room "
        f"tone about -60 dBFS RMS) with one {QUIET_SOUND_S:g} s sound per {QUIET_LOOP_S} s, each stream at its own "
        f"phase, written in {QUIET_CHUNK // 48} ms blocks, and the streams' level gate at {QUIET_GATE_DBFS:g} dBFS "
        "(`min_level_dbfs`): *gated* windows skip the model.",
        "",
        capacity_table(capacity),
        "",
        f"Largest N kept up: {capacity_line}.",
        "",
        "### 3. Resident memory of the daemon's process",
        "",
        memory_table(latency, capacity),
        "",
        "### What the numbers mean",
        "",
        *summary(latency, capacity),
        "",
        *(["Warnings logged by the daemon:", "", *problems, ""] if problems else []),
        END,
    ]
    return "\n".join(lines)


# --- the parent ---


def parse_windows(text: str) -> list[tuple[float, float]]:
    return [(float(w), float(h)) for w, h in (part.split(":") for part in text.split(",") if part)]


def run_latency_all(args: argparse.Namespace, bundle: Path, port: int) -> list[Latency]:
    results = []
    for window_s, hop_s in parse_windows(args.latency_windows):
        n = args.onsets or (16 if window_s <= 2 else 10)
        plan = make_plan(window_s, hop_s, n)
        for precision in args.precisions.split(","):
            print(f"offline scores: {window_s:g} s window, {precision} ...", file=sys.stderr)
            expected = expect(bundle, args.work_dir / "state", precision, plan)
            gc.collect()
            results.append(run_latency(plan, precision, expected, bundle, port, args.work_dir))
            r = results[-1]
            print(f"  -> detected {r.detected}/{r.onsets}, p50 {median(r.latency_s):.3f} s", file=sys.stderr)
    return results


def run_capacity_all(args: argparse.Namespace, bundle: Path, port: int) -> list[Capacity]:
    results: list[Capacity] = []
    for workload in args.workloads.split(","):
        write_workload(args.work_dir, workload)
        run = CapacityRun(workload, args.seconds, bundle, port, args.work_dir, args.threads, args.parallel_calls)
        results += capacity_search(args, workload, run)
    return results


def capacity_search(args: argparse.Namespace, workload: str, run: CapacityRun) -> list[Capacity]:
    results: list[Capacity] = []
    start, limit, refine = (QUIET_START_STREAMS if workload == "quiet" else 1), args.max_streams, args.refine
    windows = parse_windows(args.capacity_windows if workload == "busy" else args.quiet_windows)
    for i, (window_s, hop_s) in enumerate(windows):

        def at(n: int, window_s: float = window_s, hop_s: float = hop_s) -> Capacity:
            return run(n, window_s, hop_s)

        if args.capacity_streams:
            found = [at(int(n)) for n in args.capacity_streams.split(",")]
        else:
            found = search_capacity(start, at, refine, limit)
        results += found
        if i == 0:
            # The model input is 10 s whatever the window: later window sizes check the first one's answer and the
            # smallest count it could not keep, no more.
            start = max([r.streams for r in found if r.real_time], default=1)
            limit = min([r.streams for r in found if not r.real_time], default=args.max_streams)
            refine = 0
    return results


def run_parent(args: argparse.Namespace) -> None:
    began = time.monotonic()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    bundle = bundle_for(args)
    waited, load, idle = wait_until_idle(args.wait_minutes) if args.wait_minutes > 0 else (0.0, 0.0, True)
    notes = [
        f"bundle: `{bundle}`; load before the run: {load:.2f} after waiting {waited / 60:.0f} min"
        + ("" if idle else f" (**not idle**: {BUSY_PATTERN} running or load >= {IDLE_LOAD}; figures are suspect)")
    ]
    broker = mosquitto(args.work_dir / "broker", persistence=False)
    broker.start()
    try:
        latency = [] if args.skip_latency else run_latency_all(args, bundle, broker.port)
        busy_mid = busy_now()
        capacity = [] if args.skip_capacity else run_capacity_all(args, bundle, broker.port)
    finally:
        broker.stop()
    if busy_mid or busy_now():
        notes.append(f"**{BUSY_PATTERN} was running during part of the run; figures are suspect**")
    notes.append(f"1-min load average at the end: {os.getloadavg()[0]:.2f} (this benchmark's own load included)")
    publish(section(latency, capacity, model_words(args), notes, time.monotonic() - began), args.write, START, END)


def model_words(args: argparse.Namespace) -> str:
    if args.bundle is not None:
        return f"the bundle `{args.bundle}`"
    size = "full-size" if args.size == "default" else f"`{args.size}`"
    return f"random-weight {size} reference model"


def parse_args() -> argparse.Namespace:
    parser = arg_parser(__doc__)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/clapd-bench-daemon"), help="audio, state, logs")
    parser.add_argument("--bundle", type=Path, help="a bundle with fp32 and int8 (default: the reference model's)")
    parser.add_argument(
        "--size", choices=("small", "default", "base"), default="default", help="the reference model (small: a check)"
    )
    parser.add_argument("--latency-windows", default="2:0.5,10:1", help="window:hop seconds, comma-separated")
    parser.add_argument("--precisions", default="int8,fp32", help="for the latency runs")
    parser.add_argument("--onsets", type=int, help="planted onsets per latency run (default 16 at 2 s, 10 at 10 s)")
    parser.add_argument("--capacity-windows", default="10:1,2:1", help="window:hop seconds, comma-separated")
    parser.add_argument("--capacity-streams", help="comma-separated stream counts instead of the search")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each capacity run")
    parser.add_argument("--refine", type=int, default=1, help="bisection steps after doubling")
    parser.add_argument("--max-streams", type=int, default=64)
    parser.add_argument("--wait-minutes", type=float, default=40.0, help="at most this long for an idle machine")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-capacity", action="store_true")
    parser.add_argument("--write", type=Path, help="markdown file whose bench_daemon section to update")
    parser.add_argument("--workloads", default="busy,quiet", help="capacity workloads, of: busy, quiet")
    parser.add_argument("--threads", type=int, default=DEFAULTS["threads"], help="model.threads of the capacity runs")
    parser.add_argument(
        "--parallel-calls", type=int, default=DEFAULTS["parallel_calls"], help="model.parallel_calls, capacity runs"
    )
    parser.add_argument("--quiet-windows", default="10:1", help="window:hop seconds for the quiet workload")
    return parser.parse_args()


def main() -> None:
    run_parent(parse_args())


if __name__ == "__main__":
    main()
