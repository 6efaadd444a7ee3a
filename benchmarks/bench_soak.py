"""Soak: half an hour of audio through `clapd run` into a real mosquitto that is restarted every few minutes.

The shipped demo bundle and the demo detections (`clapd.daemon.demo.demo_detections`: each with its rivals as
negative prompts, `DEMO_EVENT_SETTINGS`, on `DEMO_WINDOWS`) on a generated demo stream (`models.demo_stream`, fixed
seed) with a planted sound every ~23 s.
The stream is a `file` source with `realtime: false`: that source waits for the windower before it overwrites the
ring, so the daemon sees every sample exactly once, as fast as the model runs, and the events it must publish can
be computed offline. (A `pipe` fed faster than real time is a live source: where inference falls behind on the
shared cores, windows are skipped by design, which would blur "lost" between the windower and the MQTT path.)
The daemon publishes to mosquitto on loopback (QoS 1, through its spool) and writes the same events to
stdout. The broker (persistence on) is stopped for a few seconds every few minutes of audio; a subscriber with a
persistent QoS 1 session keeps its subscription across the restarts. Three truths are compared:

- transport: every event the daemon wrote to stdout (by event id and kind) must reach the subscriber;
- offline: the events the daemon's own `Detector` gives for the same recording's windows (`clip_windows`, the
  same model, detections and thresholds) must be exactly the events the daemon wrote;
- plan: the planted sounds, for context (what the demo model finds, misses and invents).

How far the daemon has got, its broker connection and its spool's depth are read from its metrics endpoint;
its VmRSS, VmHWM, threads and open files from /proc.

    .venv/bin/python benchmarks/bench_soak.py --write docs/benchmarks.md          # 30 min of audio
    .venv/bin/python benchmarks/bench_soak.py --minutes 5 --restart-every 0.25 --down-seconds 1  # a quick check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile
import yaml
from common import (
    METRICS_CONFIG,
    CachedEmbedder,
    DaemonMetrics,
    arg_parser,
    detect_offline,
    detection_preparer,
    header_lines,
    launch_daemon,
    mosquitto,
    proc_status,
    publish,
    stop_daemon,
    subscriber,
)

import clapd
from clapd.daemon.config import parse_config
from clapd.daemon.demo import DEMO_DETECTIONS, DEMO_EVENT_SETTINGS, DEMO_WINDOWS, demo_detections
from clapd.daemon.inference import AudioModel, open_bundle
from clapd.daemon.manifest import window_samples_for
from clapd.daemon.mqtt.spool import SPOOL_FILE
from clapd.models.demo_stream import DEFAULT_LAYOUT, PlannedEvent, make_demo_stream

if TYPE_CHECKING:
    from mqtt_broker import (  # the tests' (`common.mosquitto`, `common.subscriber`)
        MosquittoBroker,
        Received,
        Subscriber,
    )

RATE = 48_000  # Hz: the demo model's rate and the stream's
WINDOW_S, HOP_S = DEMO_WINDOWS["window_seconds"], DEMO_WINDOWS["hop_seconds"]
WINDOW, HOP = round(WINDOW_S * RATE), round(HOP_S * RATE)
THRESHOLDS = DEMO_EVENT_SETTINGS  # what demo_detections() gives every detection
DEMO_BUNDLE = Path(clapd.__file__).parent / "demo_bundle"
SEED = 31  # the stream's seed: neither the demo model's training seed (0) nor the tests' (11-13)
GAP_S = (10.0, 25.0)  # s of background before each planted sound: one sound every ~23 s on average
SOUND_S = {e.class_name: e.end_s - e.start_s for e in DEFAULT_LAYOUT}  # the demo layout's lengths, 2-10 s
WARM_UP_AUDIO_S = 60.0  # memory "at the start" is the first sample after this much audio
POLL_S = 0.2  # how often the metrics are read and a broker restart considered
END_MARGIN_S = 3.0  # s of wall time the daemon keeps, beyond twice the outage, before its file ends
CATCH_UP_S = 30.0  # after the daemon exits, how long the subscriber may take to receive the rest
STREAM = "soak"
TOPIC_PREFIX = "soak/clapd"
START, END = "<!-- bench_soak:start -->", "<!-- bench_soak:end -->"
PACKAGES = ("clapd", "onnxruntime", "numpy", "paho-mqtt", "prometheus-client")
STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "  # the daemon's text log: each line's date


# --- the recording and what the daemon must publish ---


def plan_events(seconds: float, seed: int) -> list[PlannedEvent]:
    """The demo detections' sounds in shuffled rounds, each after GAP_S of background, the demo layout's lengths."""
    rng = np.random.default_rng([seed, 1])
    events: list[PlannedEvent] = []
    end = 0.0
    while True:
        for name in rng.permutation(list(DEMO_DETECTIONS)):
            start = round(end + rng.uniform(*GAP_S), 1)
            end = start + SOUND_S[str(name)]
            if end > seconds - GAP_S[0]:
                return events
            events.append(PlannedEvent(str(name), start, end))


def ensure_recording(work_dir: Path, minutes: float, seed: int) -> tuple[Path, list[PlannedEvent]]:
    """The stream as 32-bit float wav (bit-exact) and its plan; generated once per (minutes, seed)."""
    wav = work_dir / f"stream-{minutes:g}min-seed{seed}.wav"
    truth = wav.with_suffix(".json")
    if not (wav.is_file() and truth.is_file()):
        print(f"generating {minutes:g} min of demo stream (seed {seed}) ...", file=sys.stderr)
        stream = make_demo_stream(seed, 60 * minutes, events=plan_events(60 * minutes, seed))
        stream.write_wav(wav)
        truth.write_text(stream.ground_truth_json())
    planned = [PlannedEvent(**e) for e in json.loads(truth.read_text())["events"]]
    return wav, planned


def soak_config(wav: Path, port: int, state_dir: Path) -> dict:
    return {
        "model": {"bundle": str(DEMO_BUNDLE), "providers": ["cpu"], "threads": 2},
        "windows": DEMO_WINDOWS,
        "streams": {STREAM: {"type": "file", "path": str(wav), "realtime": False}},
        "detections": demo_detections(),
        "outputs": {
            "mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": TOPIC_PREFIX, "qos": 1, "client_id": "soak"},
            "stdout": True,
        },
        "metrics": METRICS_CONFIG,
        "state_dir": str(state_dir),
    }


def event_key(detection: str, kind: str, start: int, end: int | None) -> tuple:
    return (detection, kind, start, end)


def payload_key(p: dict) -> tuple:
    end = None if p["end_offset_seconds"] is None else round(p["end_offset_seconds"] * RATE)
    return event_key(p["detection"], p["kind"], round(p["start_offset_seconds"] * RATE), end)


@dataclass(frozen=True, slots=True)
class Offline:
    events: list[tuple]  # event_key of every event, sorted
    windows: int  # in the whole file


def offline_events(wav: Path, config: dict) -> Offline:
    """What the daemon must publish for the file: the daemon's `Detector` with the config's model, detections and
    windows, on the file's windows as a stream gets them, one window per model call."""
    parsed = parse_config(config)
    manifest = open_bundle(DEMO_BUNDLE)
    window, hop = window_samples_for(parsed.windows, manifest)
    if (manifest.sample_rate, window, hop) != (RATE, WINDOW, HOP):
        raise RuntimeError(f"the demo bundle's rate and windows {manifest.sample_rate, window, hop} are not this one's")
    model = AudioModel(DEMO_BUNDLE, manifest, parsed.model)  # int8 on the CPU, as the daemon
    preparer = detection_preparer(DEMO_BUNDLE, manifest, parsed.model)
    detections = preparer.prepare(parsed.detections, list(parsed.background_prompts))
    audio, rate = soundfile.read(wav, dtype="float32")
    assert rate == RATE, rate
    found = detect_offline(CachedEmbedder(model), detections, STREAM, audio, window, hop, manifest.window_samples, RATE)
    keys = sorted(event_key(e.detection, e.kind, e.start_sample, e.end_sample) for e in found.events)
    return Offline(keys, len(found.scores))


# --- watching the daemon ---


@dataclass(frozen=True, slots=True)
class Sample:
    wall_s: float  # since the daemon was launched
    audio_s: float  # end of the last window the daemon has taken
    rss_mib: float
    hwm_mib: float
    threads: int
    fds: int
    cpu_s: float  # user + system, all threads
    queued: int | None  # messages in the daemon's spool (None: not read yet)
    load: float  # 1-min load average


def process_sample(pid: int, wall_s: float, progress: Progress) -> Sample | None:
    try:
        status = proc_status(pid)
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None  # it has just exited
    mib = {k: int(status[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}  # kB -> MiB
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    threads, load = int(status["Threads"]), os.getloadavg()[0]
    return Sample(wall_s, progress.audio_s, mib["VmRSS"], mib["VmHWM"], threads, fds, cpu_s, progress.queued, load)


def queue_depth(path: Path) -> int | None:
    """A read-only look at the daemon's SQLite spool (after it has exited: what it left there)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.2) as db:
            return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    except sqlite3.Error:
        return None


@dataclass(slots=True)
class Progress:
    """How far the daemon has got, from its metrics endpoint: windows taken, and its sessions with the broker."""

    metrics: DaemonMetrics
    windows: int = 0  # `clapd_windows_total{outcome="processed"}`: taken from the ring for the model
    read_s: float = math.nan  # wall s since launch of the last successful read
    connected: bool = False
    queued: int | None = None  # `clapd_queue_depth`: messages in the spool
    connects: list[tuple[float, int | None]] = field(default_factory=list)  # (read at, queued the read before)

    def read(self, wall_s: float) -> bool:
        reading = self.metrics.read()
        if reading is None:
            return False
        self.windows = int(reading.total("clapd_windows_total", stream=STREAM, outcome="processed"))
        connected = reading.total("clapd_broker_connected") > 0
        if connected and not self.connected:  # the broker is down for seconds, reads come every POLL_S
            self.connects.append((wall_s, self.queued))
        self.connected, self.read_s = connected, wall_s
        self.queued = int(reading.total("clapd_queue_depth")) if reading.has("clapd_queue_depth") else None
        return True

    @property
    def audio_s(self) -> float:
        return ((self.windows - 1) * HOP + WINDOW) / RATE if self.windows else 0.0


@dataclass(slots=True)
class BrokerCycler:
    """Stops the broker `every_s` of audio after the last stop, once the daemon has reconnected since then and
    while the rest of the file takes longer than `margin_s`; starts it `down_s` wall seconds later.
    (Restarts closer together than the daemon's reconnect back-off would keep it off the broker for good.)"""

    broker: MosquittoBroker
    every_s: float
    total_s: float
    down_s: float
    restarts: list[dict] = field(default_factory=list)  # audio_s, stopped and started (wall s since launch)

    @property
    def margin_s(self) -> float:
        """Wall seconds the file must still last at a stop: the outage, the back-off (about as long again)."""
        return 2 * self.down_s + END_MARGIN_S

    def step(self, progress: Progress, wall_s: float, speed: float) -> None:
        if not self.broker.running:
            if wall_s >= self.restarts[-1]["stopped"] + self.down_s:
                self.broker.start()
                self.restarts[-1]["started"] = wall_s
            return
        due = (self.restarts[-1]["audio_s"] if self.restarts else 0.0) + self.every_s
        rest_wall_s = (self.total_s - progress.audio_s) / speed if speed > 0 else 0.0
        reconnected = len(progress.connects) > len(self.restarts)
        if progress.audio_s >= due and reconnected and rest_wall_s > self.margin_s:
            self.broker.stop()
            self.restarts.append({"audio_s": progress.audio_s, "stopped": wall_s, "started": None})


@dataclass(slots=True)
class Run:
    """What one soak run observed."""

    returncode: int | None
    wall_s: float  # launch -> exit
    first_window_s: float  # launch -> the first window taken (loading, warm-up)
    windows: int  # taken at the last read of the metrics
    read_s: float  # launch -> that read
    samples: list[Sample]
    restarts: list[dict]
    connects: list[tuple[float, int | None]]  # sessions with the broker: (seen at, s since launch; queued before)
    left_queued: int | None  # messages in the spool after the daemon exited
    produced: list[dict]  # the daemon's stdout
    received: list[dict]  # event payloads at the subscriber, duplicates included, with "_at" (s since launch), "_dup"
    others: dict[str, int]  # other messages at the subscriber by the topic's last level (state, status, level)
    states: dict[str, str]  # state topic -> the last payload received there
    launched_at: float  # time.time() at launch


def run_soak(config_path: Path, broker: MosquittoBroker, paths: dict[str, Path], args: argparse.Namespace) -> Run:
    listener = subscriber(broker.port, f"{TOPIC_PREFIX}/#", client_id="soak-subscriber", persistent=True)
    cycler = BrokerCycler(broker, 60 * args.restart_every, 60 * args.minutes, args.down_seconds)
    try:
        with paths["stdout"].open("w") as out, paths["log"].open("w") as log:
            launched, launched_at = time.monotonic(), time.time()
            daemon = launch_daemon(config_path, stdout=out, stderr=log)
            try:
                samples, first, progress = watch(daemon, cycler, paths, launched, args)
            finally:
                if daemon.poll() is None:
                    print("the daemon did not finish in time: stopping it", file=sys.stderr)
                stop_daemon(daemon)
            wall_s = time.monotonic() - launched
        if not broker.running:
            broker.start()
        produced = [json.loads(line) for line in paths["stdout"].read_text().splitlines()]
        messages = catch_up(listener, {(p["event_id"], p["kind"]) for p in produced})
    finally:
        listener.close()
    others, states = other_messages(messages)
    return Run(
        returncode=daemon.returncode,
        wall_s=wall_s,
        first_window_s=first,
        windows=progress.windows,
        read_s=progress.read_s,
        samples=samples,
        restarts=cycler.restarts,
        connects=progress.connects,
        left_queued=queue_depth(paths["queue"]),
        produced=produced,
        received=[{**json.loads(r.payload), "_at": r.at - launched_at, "_dup": r.dup} for r in messages if is_event(r)],
        others=others,
        states=states,
        launched_at=launched_at,
    )


def watch(
    daemon: subprocess.Popen, cycler: BrokerCycler, paths: dict[str, Path], launched: float, args: argparse.Namespace
) -> tuple[list[Sample], float, Progress]:
    """Until the daemon exits (its file has ended): read its progress, restart the broker on schedule, sample
    the process."""
    progress, samples = Progress(DaemonMetrics(paths["log"])), []
    first, next_sample = math.nan, 0.0
    timeout = 60 * args.minutes + 300  # slower than real time plus start-up would be a failure in itself
    while daemon.poll() is None and (wall_s := time.monotonic() - launched) < timeout:
        if progress.read(wall_s) and progress.windows and math.isnan(first):
            first = wall_s
        cycler.step(progress, wall_s, progress.audio_s / (wall_s - first) if wall_s > first else 0.0)
        if wall_s >= next_sample and (sample := process_sample(daemon.pid, wall_s, progress)):
            samples.append(sample)
            next_sample = wall_s + args.sample_seconds
        time.sleep(POLL_S)
    return samples, first, progress


def catch_up(subscriber: Subscriber, produced: set[tuple[str, str]]) -> list[Received]:
    """Everything received, once every produced event is in or CATCH_UP_S has passed."""
    deadline = time.monotonic() + CATCH_UP_S
    while True:
        received = subscriber.received()
        got = {(p["event_id"], p["kind"]) for p in map(json.loads, (r.payload for r in received if is_event(r)))}
        if produced <= got or time.monotonic() > deadline:
            return received
        time.sleep(POLL_S)


def is_event(message: Received) -> bool:
    return message.topic.endswith("/event")


def other_messages(received: list[Received]) -> tuple[dict[str, int], dict[str, str]]:
    """Messages other than events, counted by their topic's last level; each state topic's last payload."""
    counts = Counter(r.topic.rsplit("/", 1)[-1] for r in received if not is_event(r))
    states = {r.topic: r.payload.decode() for r in received if r.topic.endswith("/state")}
    return dict(counts.most_common()), states


# --- the figures ---


def transport(run: Run) -> dict:
    """Stdout (what the daemon published) against the subscriber (what arrived), by event id and kind."""
    produced = Counter((p["event_id"], p["kind"]) for p in run.produced)
    received = Counter((p["event_id"], p["kind"]) for p in run.received)
    return {
        "produced": sum(produced.values()),
        "produced_twice": sum(n - 1 for n in produced.values()),
        "received": sum(received.values()),
        "lost": sorted(produced.keys() - received.keys()),
        "duplicates": sum(n - 1 for n in received.values()),
        "duplicated": duplicated(run),
        "unknown": sorted(received.keys() - produced.keys()),
        "others": run.others,
        "states_not_off": sorted(topic for topic, payload in run.states.items() if payload != "OFF"),
        "state_topics": len(run.states),
    }


def duplicated(run: Run) -> list[dict]:
    """Each event received more than once: its arrivals (s since launch, DUP flag), and the broker stop last
    before the first copy and before the repeat (s since launch)."""
    arrivals: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    for p in run.received:
        arrivals.setdefault((p["event_id"], p["kind"]), []).append((round(p["_at"], 3), p["_dup"]))
    stops = [r["stopped"] for r in run.restarts]

    def stop_before(at: float) -> float | None:
        return max((t for t in stops if t <= at), default=None)

    return [
        {
            "event": list(key),
            "arrivals": copies,
            "stop_before_first": stop_before(copies[0][0]),
            "stop_before_repeat": stop_before(copies[1][0]),
        }
        for key, copies in arrivals.items()
        if len(copies) > 1
    ]


def versus_offline(expected: list[tuple], run: Run) -> dict:
    """The offline events against the daemon's, as (detection, kind, start sample, end sample)."""
    want, got = Counter(expected), Counter(payload_key(p) for p in run.produced)
    return {
        "expected": len(expected),
        "same": sum((want & got).values()),
        "missing": sorted((want - got).elements()),
        "extra": sorted((got - want).elements()),
    }


def versus_plan(planned: list[PlannedEvent], run: Run) -> dict:
    """Planted sounds against the daemon's start events: on time (within a hop), later in the sound, missed;
    starts during another class's sound (or in the window length after it, while windows still hold its end),
    and starts during background alone."""
    starts = {p["event_id"]: (p["detection"], p["start_offset_seconds"]) for p in run.produced if p["kind"] == "start"}

    def within(e: PlannedEvent, t: float) -> bool:
        return e.start_s - HOP_S <= t <= e.end_s

    on_time = late = 0
    missed = []
    for e in planned:
        found = [t for name, t in starts.values() if name == e.class_name and within(e, t)]
        if not found:
            missed.append(asdict(e))
        elif min(abs(t - e.start_s) for t in found) <= HOP_S:
            on_time += 1
        else:
            late += 1

    def heard(e: PlannedEvent, t: float) -> bool:  # a window ending up to WINDOW_S after the sound still holds it
        return e.start_s - HOP_S <= t <= e.end_s + WINDOW_S

    false = [(n, t) for n, t in starts.values() if not any(e.class_name == n and within(e, t) for e in planned)]
    during = [(n, t, next((e.class_name for e in planned if heard(e, t)), None)) for n, t in false]
    wrong = [(n, t, c) for n, t, c in during if c is not None]  # (detection, start s, the class planted then)
    background = [(n, t) for n, t, c in during if c is None]
    return {
        "planted": len(planned),
        "on_time": on_time,
        "late": late,
        "missed": missed,
        "wrong_class": sorted(wrong, key=lambda s: s[1]),
        "background": sorted(background, key=lambda s: s[1]),
    }


def memory(samples: list[Sample]) -> dict:
    """Resident memory after warm-up: start, end, range and the least-squares slope against audio time."""
    final = max(s.audio_s for s in samples)
    running = [s for s in samples if s.audio_s < final] or samples  # the last window's run and shutdown left out
    after = [s for s in running if s.audio_s >= WARM_UP_AUDIO_S] or running
    hours = np.array([s.audio_s / 3600 for s in after])
    rss = np.array([s.rss_mib for s in after])
    slope = float(np.polyfit(hours, rss, 1)[0]) if len(after) >= 3 and np.ptp(hours) > 0 else math.nan
    return {
        "first": asdict(next((s for s in samples if s.audio_s > 0), samples[0])),
        "start": asdict(after[0]),
        "end": asdict(after[-1]),
        "rss_min": float(rss.min()),
        "rss_max": float(rss.max()),
        "slope_mib_per_audio_hour": slope,
        "half": asdict(next(s for s in after if s.audio_s >= final / 2)),
        "threads_max": max(s.threads for s in after),
        "fds_max": max(s.fds for s in after),
        "queued_max": max((s.queued for s in samples if s.queued is not None), default=None),
        "load_max": max(s.load for s in samples),
        "samples": len(after),
    }


def broker_outages(run: Run) -> dict:
    """Per restart: how long after the broker was back the daemon was seen connected again (to within POLL_S), and
    what its spool held at the last read before (while it was away)."""
    reconnect_s, queued = [], []
    for r in run.restarts:
        later = [c for c in run.connects if r["started"] is not None and c[0] >= r["started"]]
        if later:
            reconnect_s.append(later[0][0] - r["started"])
            queued.append(later[0][1])
    down_s = [r["started"] - r["stopped"] for r in run.restarts if r["started"] is not None]
    return {
        "restarts": len(run.restarts),
        "connects": len(run.connects),
        "down_s": down_s,
        "reconnect_after_back_s": reconnect_s,
        "queued_at_reconnect": [q for q in queued if q is not None],
    }


def log_findings(log: Path) -> dict:
    """Warnings and errors of the daemon, by message with numbers blanked; tracebacks."""
    kinds: Counter[str] = Counter()
    tracebacks = 0
    for line in log.read_text().splitlines():
        if m := re.match(STAMP + r"(WARNING|ERROR|CRITICAL) (.*)$", line):
            kinds[f"{m[2]} " + re.sub(r"\d+", "N", m[3])] += 1
        tracebacks += line.startswith("Traceback")
    return {"messages": dict(kinds.most_common()), "tracebacks": tracebacks}


def figures(run: Run, expected: Offline, planned: list[PlannedEvent], log: Path) -> dict:
    busy_s = run.wall_s - run.first_window_s
    audio_s = ((expected.windows - 1) * HOP + WINDOW) / RATE  # the whole file: its windows all run, see "offline"
    return {
        "returncode": run.returncode,
        "windows": expected.windows,
        "windows_last_read": run.windows,
        "last_read_before_exit_s": run.wall_s - run.read_s,
        "audio_s": audio_s,
        "wall_s": run.wall_s,
        "first_window_s": run.first_window_s,
        "speed": audio_s / busy_s if busy_s > 0 else math.nan,
        "cpu_s": run.samples[-1].cpu_s if run.samples else math.nan,
        "transport": transport(run),
        "offline": versus_offline(expected.events, run),
        "plan": versus_plan(planned, run),
        "memory": memory(run.samples),
        "broker": broker_outages(run),
        "log": log_findings(log),
        "left_queued": run.left_queued,
    }


# --- the report ---


def bundle_line() -> str:
    manifest = json.loads((DEMO_BUNDLE / "manifest.json").read_text())
    int8 = manifest["audio"]["int8"]
    return f"demo bundle: created {manifest['created_utc']}, {int8['file']} sha256 {int8['sha256'][:12]}"


def results_table(f: dict) -> list[str]:
    t, o, p, m, b = f["transport"], f["offline"], f["plan"], f["memory"], f["broker"]
    start, end = m["start"], m["end"]
    wrong = most(f"{n} in {c}" for n, _, c in p["wrong_class"])
    rows = [
        (
            "audio run",
            f"{f['audio_s'] / 60:.1f} min, {f['windows']} windows ({WINDOW_S:g} s, {HOP_S:g} s hop); "
            f"{f['windows_last_read']} taken at the last metrics read, {f['last_read_before_exit_s']:.1f} s before "
            "the daemon exited",
        ),
        (
            "wall time",
            f"{f['wall_s']:.0f} s ({f['first_window_s']:.1f} s to the first window), "
            f"{f['speed']:.1f}x real time; daemon CPU {f['cpu_s']:.0f} s",
        ),
        (
            "broker restarts",
            f"{b['restarts']}, down {fmt_range(b['down_s'], 's')} each; the daemon was connected again "
            f"{fmt_range(b['reconnect_after_back_s'], 's')} after the broker was back (read every {POLL_S:g} s)",
        ),
        (
            "queue depth",
            f"last read before each reconnect {fmt_range(b['queued_at_reconnect'], 'messages', 0)}; read peak "
            f"{m['queued_max']} messages",
        ),
        ("**events lost** (stdout vs subscriber)", f"**{len(t['lost'])}** of {t['produced']}"),
        ("duplicates at the subscriber (QoS 1)", f"{t['duplicates']} ({t['received']} received)"),
        (
            "other messages at the subscriber",
            ", ".join(f"{n} {kind}" for kind, n in t["others"].items())
            + " (retained ones come again with every resubscription); the last state is OFF on "
            + f"{t['state_topics'] - len(t['states_not_off'])} of {t['state_topics']} state topics",
        ),
        (
            "daemon's events vs offline",
            f"{o['same']} of {o['expected']} identical; {len(o['missing'])} missing, {len(o['extra'])} extra",
        ),
        (
            "**VmRSS** start / end",
            f"**{start['rss_mib']:.1f} / {end['rss_mib']:.1f} MiB** (at {start['audio_s'] / 60:.1f}"
            f" / {end['audio_s'] / 60:.1f} min of audio; {m['first']['rss_mib']:.1f} MiB at the first window)",
        ),
        (
            "VmRSS min / max; slope; growth in the first / second half",
            f"{m['rss_min']:.1f} / {m['rss_max']:.1f} MiB; {m['slope_mib_per_audio_hour']:+.2f} MiB per audio hour; "
            f"{m['half']['rss_mib'] - start['rss_mib']:+.2f} / {end['rss_mib'] - m['half']['rss_mib']:+.2f} MiB",
        ),
        ("VmHWM start / end", f"{start['hwm_mib']:.1f} / {end['hwm_mib']:.1f} MiB"),
        (
            "threads, open files: start / end (max)",
            f"{start['threads']} / {end['threads']} ({m['threads_max']}); "
            f"{start['fds']} / {end['fds']} ({m['fds_max']})",
        ),
        (
            "planted sounds found",
            f"{p['on_time'] + p['late']} of {p['planted']} ({p['on_time']} within a hop of "
            f"the onset), {len(p['missed'])} missed",
        ),
        (
            "other starts",
            f"{len(p['wrong_class'])} during another class's sound or within a window length after it (most: "
            f"{wrong}), {len(p['background'])} during background alone (most: {most(n for n, _ in p['background'])})",
        ),
    ]
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def most(labels: Iterable[str], n: int = 3) -> str:
    return ", ".join(f"{label} {count}" for label, count in Counter(labels).most_common(n)) or "-"


def fmt_range(values: list[float], unit: str, digits: int = 1) -> str:
    if not values:
        return "-"
    low, mid, high = min(values), float(np.median(values)), max(values)
    return f"{low:.{digits}f}-{high:.{digits}f} {unit} (median {mid:.{digits}f})"


def duplicates_line(t: dict) -> str:
    """Who sent the duplicates: the broker (the copy carries the DUP flag) or the daemon (paho re-sending)."""
    if not t["duplicates"]:
        return "None arrived twice."
    broker = sum(1 for d in t["duplicated"] if all(dup for _, dup in d["arrivals"][1:]))
    daemon = len(t["duplicated"]) - broker
    return (
        f"{t['duplicates']} arrived twice, which QoS 1 allows. Copies with the DUP flag: {broker} (mosquitto sent "
        "the event to the subscriber as it was stopping and again from its saved session after the restart, the "
        f"subscriber's PUBACK unprocessed); without it: {daemon} (the daemon published it twice: paho re-sends what "
        "a restart left unacknowledged)."
    )


def meaning(f: dict, args: argparse.Namespace) -> list[str]:
    """What the numbers mean, with this run's figures."""
    t, o, m, b, log = f["transport"], f["offline"], f["memory"], f["broker"], f["log"]
    drift = m["end"]["rss_mib"] - m["start"]["rss_mib"]
    lines = [
        f"- Loss: {len(t['lost'])} of the {t['produced']} events the daemon wrote to stdout never reached the "
        "subscriber"
        + (": none lost across the restarts." if not t["lost"] else f": **{t['lost'][:5]}**.")
        + f" {duplicates_line(t)}",
        f"- Reconnection: the daemon retries with back-off from 1 s, doubling (up to 60 s), so after a "
        f"{args.down_seconds:g} s outage it is back {fmt_range(b['reconnect_after_back_s'], 's')} after the broker; "
        "meanwhile events wait in its spool (the depths above), and leave it in order once it is connected.",
        f"- Completeness: {o['same']} of the {o['expected']} events computed offline from the same file with the "
        "daemon's own `Detector` came out of the daemon identical (detection, kind, start and end sample)"
        + (
            ", so every window was run and nothing was dropped before the publishers."
            if o["same"] == o["expected"] and not o["extra"]
            else f"; missing {o['missing'][:5]}, extra {o['extra'][:5]}."
        ),
        f"- Memory: VmRSS {m['start']['rss_mib']:.1f} MiB after {WARM_UP_AUDIO_S:.0f} s of audio, "
        f"{m['end']['rss_mib']:.1f} MiB at the end ({drift:+.1f} MiB over {f['audio_s'] / 60:.0f} min of audio; "
        f"least-squares slope {m['slope_mib_per_audio_hour']:+.2f} MiB per audio hour over {m['samples']} samples, "
        f"between {m['rss_min']:.1f} and {m['rss_max']:.1f} MiB; {m['half']['rss_mib'] - m['start']['rss_mib']:+.2f} "
        f"MiB in the first half, {m['end']['rss_mib'] - m['half']['rss_mib']:+.2f} MiB in the second). At "
        f"{f['speed']:.0f}x real time one audio hour is "
        f"{3600 / f['speed'] / 60:.0f} min of wall time: a leak per window or per event would show in the slope, "
        "one per second of wall time would be scaled down by the speed-up. The samples end before the last window's "
        "run (shutdown frees memory). Threads and open files would show a leak per reconnection (the file source's "
        "thread ends once the whole file is in the 30 s ring, before the last samples).",
        f"- Planted sounds (context, the demo model's quality, not the pipeline's): see the table; a start counts "
        f"for a sound when it has the sound's class and falls within [onset - {HOP_S:g} s, end].",
    ]
    if log["messages"]:
        shown = "; ".join(f"{n} x `{k}`" for k, n in list(log["messages"].items())[:8])
        lines.append(f"- The daemon's warnings and errors (numbers blanked): {shown}.")
    lines.append(
        f"- Tracebacks in the daemon's log: {log['tracebacks']}; exit status {f['returncode']}; messages "
        f"left in the spool at exit: {f['left_queued']}."
    )
    return lines


def section(f: dict, args: argparse.Namespace, notes: list[str]) -> str:
    lines = [
        START,
        "## Soak: the whole pipeline, faster than real time, broker restarted every few minutes",
        "",
        "Written by `benchmarks/bench_soak.py`: `clapd run` (a subprocess) with the shipped demo bundle (int8, "
        "2 threads) and the demo detections (`demo_detections()`: each names its rivals' prompts as negative prompts; "
        "`DEMO_EVENT_SETTINGS`: thresholds "
        f"{THRESHOLDS['threshold_on']} / {THRESHOLDS['threshold_off']}, smoothing over "
        f"{THRESHOLDS['smoothing_windows']} windows, 2 s windows "
        f"at a 0.5 s hop) on {args.minutes:g} min of generated demo stream (seed {args.seed}, a planted sound every "
        "~23 s over room tone) as a `file` source with `realtime: false`: lossless, the source waits for the "
        "windower, so the daemon runs as fast as the model allows and its events can be computed offline (a "
        "`pipe` fed faster than real time would skip windows by design whenever inference fell behind). Events go "
        "to mosquitto on loopback (QoS 1 through the spool, persistence on) and to stdout. The broker is "
        f"stopped (SIGTERM) for {args.down_seconds:g} s of wall time {args.restart_every:g} min of audio after its "
        "last stop, once the daemon has reconnected, and while the rest of the file takes more than "
        f"{2 * args.down_seconds + END_MARGIN_S:g} s (so the daemon is connected when its file ends); a subscriber "
        "with a persistent QoS 1 session keeps its subscription across restarts. The daemon's progress, its broker "
        f"connection and its spool's depth are read from its metrics endpoint every {POLL_S:g} s; /proc is sampled "
        f"every {args.sample_seconds:g} s.",
        "",
        *header_lines(PACKAGES, mosquitto=True),
        *[f"- {note}" for note in notes],
        "",
        *results_table(f),
        "",
        "### What the numbers mean",
        "",
        *meaning(f, args),
        END,
    ]
    return "\n".join(lines)


# --- the parent ---


def prepare(work_dir: Path) -> dict[str, Path]:
    """Fresh state and broker folders (a stale queue or persisted session would replay an earlier run)."""
    for stale in ("state", "broker"):
        shutil.rmtree(work_dir / stale, ignore_errors=True)
        (work_dir / stale).mkdir(parents=True)
    return {
        "config": work_dir / "soak.yaml",
        "stdout": work_dir / "daemon-stdout.jsonl",
        "log": work_dir / "daemon.log",
        "queue": work_dir / "state" / SPOOL_FILE,
    }


def main() -> int:
    args = parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    wav, planned = ensure_recording(args.work_dir, args.minutes, args.seed)
    paths = prepare(args.work_dir)
    broker = mosquitto(args.work_dir / "broker", persistence=True)
    config = soak_config(wav, broker.port, args.work_dir / "state")
    paths["config"].write_text(yaml.safe_dump(config))
    print(f"offline events of {wav.name} ...", file=sys.stderr)
    began = time.monotonic()
    expected = offline_events(wav, config)
    offline_s = time.monotonic() - began
    load_before = os.getloadavg()[0]
    print(f"{len(expected.events)} events expected ({offline_s:.0f} s); load {load_before:.2f}", file=sys.stderr)
    broker.start()
    try:
        run = run_soak(paths["config"], broker, paths, args)
    finally:
        broker.stop()
    f = figures(run, expected, planned, paths["log"])
    notes = [
        f"1-min load average: {load_before:.2f} before the soak, at most {f['memory']['load_max']:.2f} during it, "
        f"{os.getloadavg()[0]:.2f} after it (2 cores shared with other work; this run's own load included)",
        f"planted sounds: {len(planned)}; offline computation of the expected events: {offline_s:.0f} s",
        bundle_line(),
    ]
    text = section(f, args, notes)
    publish(text, args.write, START, END)
    if args.out_json:
        args.out_json.write_text(
            json.dumps({"figures": f, "restarts": run.restarts, "samples": [asdict(s) for s in run.samples]}, indent=1)
        )
    faults = f["transport"]["lost"] or f["offline"]["missing"] or f["offline"]["extra"]
    return 0 if run.returncode == 0 and not faults else 1


def parse_args() -> argparse.Namespace:
    parser = arg_parser(__doc__)
    parser.add_argument("--minutes", type=float, default=30.0, help="audio to play (5 for a quick check)")
    parser.add_argument("--restart-every", type=float, default=2.5, help="minutes of audio between broker restarts")
    parser.add_argument("--down-seconds", type=float, default=3.0, help="wall seconds the broker stays down")
    parser.add_argument("--sample-seconds", type=float, default=1.0, help="wall seconds between /proc samples")
    parser.add_argument("--seed", type=int, default=SEED, help="the demo stream's seed")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/clapd-bench-soak"), help="recording, logs")
    parser.add_argument("--out-json", type=Path, help="write every figure and sample here")
    parser.add_argument("--write", type=Path, help="markdown file whose bench_soak section to update")
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(main())
