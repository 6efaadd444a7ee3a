"""What the benchmarks share: the lines that say where and with what a figure was measured, the random-weight
reference bundle, worker processes, `clapd run` as a subprocess and its metrics endpoint, a broker with a
subscriber that dates what it receives, the daemon's own `Detector` run offline on a recording, and the writer of
docs/benchmarks.md, in which each benchmark owns the section between its two markers.

The benchmarks run as scripts (`.venv/bin/python benchmarks/bench_X.py`), so this folder is on `sys.path`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from clapd.daemon.config import ModelConfig
from clapd.daemon.detector import Detections, DetectionSet, Detector, Embedder
from clapd.daemon.events import StreamClock
from clapd.daemon.manifest import Manifest
from clapd.daemon.prompts import DetectionPreparer
from clapd.daemon.records import DetectionEvent, Window
from clapd.daemon.windows import clip_windows

if TYPE_CHECKING:
    from mqtt_broker import MosquittoBroker, Subscriber

    from clapd.daemon.examples import ExampleEmbedder

REPO = Path(__file__).resolve().parents[1]
CODE_FOLDERS = ("clapd", "daemon", "export", "models", "benchmarks")  # what a measured figure depends on
REFERENCE_ROOT = Path("/tmp/clapd-bench-reference")  # reference models and bundles, one folder per size
OFFLINE_START = datetime(2026, 1, 1, tzinfo=timezone.utc)  # offline streams' clock anchor: events compare by sample
OFFLINE_BATCH = 8  # windows held (repeat-padded to the model's input) at a time when a recording is run offline
DOC_HEADER = (
    "# clapd benchmarks\n\nFigures are measured by the scripts in `benchmarks/`; each section names its script.\n"
)

# --- where and with what: the machine and version lines written with each result ---


def utc_date() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine_line() -> str:
    """CPU model, cores, memory, architecture and kernel."""
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2  # kB -> GiB
    return f"{cpu}, {os.cpu_count()} cores, {memory_gib:.0f} GiB, {platform.machine()}, Linux {platform.release()}"


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions_line(packages: Sequence[str], *, mosquitto: bool = False) -> str:
    """Python, the given packages, mosquitto's banner if asked for, and the commit the code came from."""
    parts = [f"Python {platform.python_version()}"]
    parts += [f"{name} {package_version(name) or 'not installed'}" for name in packages]
    if mosquitto:
        parts.append(mosquitto_banner())
    return ", ".join(parts) + f"; {source_line()}"


def source_line() -> str:
    """The commit the code came from, and whether its folders had uncommitted changes."""
    git = ["git", "-C", str(REPO)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--", *CODE_FOLDERS], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "source: not a git checkout"
    state = "with uncommitted changes" if dirty.stdout.strip() else "clean"
    return f"source: commit {head.stdout.strip()}, {'/, '.join(CODE_FOLDERS)}/ {state}"


def header_lines(packages: Sequence[str], *, mosquitto: bool = False, machine_note: str = "") -> list[str]:
    """The date, machine and versions lines of a docs section."""
    return [
        f"- date: {utc_date()}",
        f"- machine: {machine_line()}{machine_note}",
        f"- versions: {versions_line(packages, mosquitto=mosquitto)}",
    ]


# --- the docs page ---


def write_section(path: Path, start_marker: str, end_marker: str, text: str) -> None:
    """Replace the section between the markers (or append it), keeping the rest of the file."""
    doc = path.read_text() if path.exists() else DOC_HEADER
    start, end = doc.find(start_marker), doc.find(end_marker)
    if start != -1 and end > start:
        doc = doc[:start] + text + doc[end + len(end_marker) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)


def publish(text: str, doc: Path | None, start_marker: str, end_marker: str) -> None:
    """Print a benchmark's section and, given `doc` (--write), update its section there."""
    print(text)
    if doc is not None:
        write_section(doc, start_marker, end_marker, text)
        print(f"wrote {doc}", file=sys.stderr)


def arg_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line, its module docstring as the help text."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )


# --- the reference bundle: a random-weight CLAP of a real architecture, exported with `clapd export` ---


@dataclass(frozen=True, slots=True)
class Reference:
    directory: Path  # holds both; a worker process is handed this
    built_s: float = 0.0  # seconds spent building it now; 0: reused

    @property
    def model(self) -> Path:
        """The Hugging Face model directory (`clapd reference-model`)."""
        return self.directory / "model"

    @property
    def bundle(self) -> Path:
        """Its bundle (`clapd export`)."""
        return self.directory / "bundle"

    def audio_file(self, precision: str) -> Path:
        """The bundle's audio model at `precision`, as its manifest names it."""
        manifest = json.loads((self.bundle / "manifest.json").read_text())
        return self.bundle / manifest["audio"][precision]["file"]

    def precisions(self) -> set[str]:
        """The precisions whose audio model the bundle holds (none while there is no bundle)."""
        try:
            manifest = json.loads((self.bundle / "manifest.json").read_text())
        except (OSError, ValueError):
            return set()
        return {p for p, entry in manifest["audio"].items() if (self.bundle / entry["file"]).is_file()}


def reference_bundle(
    size: str, precisions: Sequence[str], *, root: Path = REFERENCE_ROOT, rebuild: bool = False
) -> Reference:
    """The reference model of `size` and a bundle holding at least `precisions`: reused when there, else built
    (with the precisions already there too, so that benchmarks sharing a size do not rebuild it in turn)."""
    reference = Reference(root / size)
    present = set() if rebuild or not (reference.model / "config.json").is_file() else reference.precisions()
    if set(precisions) <= present:
        return reference
    started = time.perf_counter()
    if rebuild or not (reference.model / "config.json").is_file():
        print(f"building the {size} reference model in {reference.model} ...", file=sys.stderr)
        clapd_command("reference-model", "--size", size, "-o", str(reference.model))
    wanted = ",".join(sorted(set(precisions) | present))
    print(f"exporting the {wanted} bundle to {reference.bundle} ...", file=sys.stderr)
    clapd_command("export", str(reference.model), "-o", str(reference.bundle), "--precision", wanted, "--overwrite")
    return replace(reference, built_s=time.perf_counter() - started)


def clapd_command(*words: str) -> str:
    """Run a `clapd` command to its end; its output, or a RuntimeError with the end of it."""
    command = [sys.executable, "-m", "clapd", *words, *(["--no-progress"] if words[0] == "export" else [])]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"clapd {words[0]} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


# --- worker processes: a benchmark script run again with its own worker options ---


@dataclass(frozen=True, slots=True)
class WorkerRun:
    returncode: int  # -1: stopped at the time limit
    output: str  # its stdout
    errors: str  # its stderr


def run_script(
    script: Path, options: Sequence[str], *, timeout: float | None = None, env: Mapping[str, str] | None = None
) -> WorkerRun:
    """`python SCRIPT OPTIONS` in a fresh process (its own ORT sessions, CUDA context and heap), to its end."""
    command = [sys.executable, str(script), *options]
    environment = {**os.environ, **(env or {})}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment, check=False)
    except subprocess.TimeoutExpired as e:
        return WorkerRun(-1, _text(e.stdout), _text(e.stderr) + f"\n[timed out after {timeout} s]")
    return WorkerRun(done.returncode, done.stdout, done.stderr)


def worker_result(
    script: Path,
    options: Sequence[str],
    what: str,
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> dict:
    """A worker's result: the JSON object it printed last. A failed worker raises, with the end of its stderr."""
    run = run_script(script, options, timeout=timeout, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {run.returncode}):\n{run.errors[-4000:]}")
    return json.loads(run.output.strip().splitlines()[-1])


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


# --- `clapd run` as a subprocess, and its metrics endpoint ---

# `clapd run` with the runner's debug line after each model call ("N windows in M ms"), which dates each call.
CLAPD_RUN_WITH_BATCH_LOG = (
    "import logging, sys; from clapd.cli import main; "
    "logging.getLogger('clapd.daemon.runner').setLevel(logging.DEBUG); sys.exit(main())"
)
METRICS_LINE = re.compile(r"metrics on (http://\S+/metrics)")  # logged once the endpoint listens (`port: 0`)
METRICS_CONFIG = {"enabled": True, "port": 0}  # any free port: concurrent benchmarks do not collide


def launch_daemon(config: Path, *, stdout: IO | int | None, stderr: IO, batch_log: bool = False) -> subprocess.Popen:
    """`clapd run -v -c CONFIG` (INFO log on `stderr`); `batch_log`: with the runner's per-model-call debug line."""
    program = ["-c", CLAPD_RUN_WITH_BATCH_LOG] if batch_log else ["-m", "clapd"]
    return subprocess.Popen([sys.executable, *program, "-v", "run", "-c", str(config)], stdout=stdout, stderr=stderr)


def stop_daemon(daemon: subprocess.Popen, timeout: float = 60.0) -> int:
    """SIGTERM if it still runs, and its exit status (killed if it has not exited within `timeout` s)."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    try:
        return daemon.wait(timeout)
    except subprocess.TimeoutExpired:
        daemon.kill()
        return daemon.wait(timeout)


@dataclass(frozen=True, slots=True)
class MetricsReading:
    """One scrape of the daemon's metrics: every sample as (name, labels, value)."""

    samples: list[tuple[str, dict[str, str], float]]

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
        return sum(v for n, have, v in self.samples if n == name and labels.items() <= have.items())

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.samples)


class DaemonMetrics:
    """The endpoint of a `clapd run` whose config holds `metrics: METRICS_CONFIG`, found in its log."""

    def __init__(self, log: Path) -> None:
        self._log = log
        self.url: str | None = None

    def read(self, timeout: float = 1.0) -> MetricsReading | None:
        """A scrape; None while the endpoint is not up yet (the model loads first) or once the daemon has gone."""
        if self.url is None and (match := METRICS_LINE.search(self._log.read_text(errors="replace"))):
            self.url = match[1]
        if self.url is None:
            return None
        try:
            with urllib.request.urlopen(self.url, timeout=timeout) as response:
                text = response.read().decode()
        except OSError:
            return None
        families = text_string_to_metric_families(text)
        return MetricsReading([(s.name, dict(s.labels), float(s.value)) for f in families for s in f.samples])


# --- a broker, and a subscriber that dates what it receives ---


def mosquitto(directory: Path, *, persistence: bool) -> MosquittoBroker:
    """The tests' real mosquitto on loopback (not started), its files in `directory`."""
    sys.path.insert(0, str(REPO / "tests"))
    from mqtt_broker import MosquittoBroker

    directory.mkdir(parents=True, exist_ok=True)
    return MosquittoBroker(directory, persistence=persistence)


def mosquitto_banner() -> str:
    program = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        banner = subprocess.run([program, "-h"], capture_output=True, text=True, timeout=5).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "mosquitto ?"
    return banner.strip()


def subscriber(port: int, topic_filter: str, *, client_id: str, persistent: bool = False) -> Subscriber:
    """The tests' recording subscriber (MQTT 3.1.1, QoS 1; each message with its arrival time and DUP flag),
    connected and subscribed. `persistent`: clean_session off, so a broker with persistence keeps the
    subscription, and queues what arrives meanwhile, across its restarts."""
    sys.path.insert(0, str(REPO / "tests"))
    from mqtt_broker import Subscriber

    return Subscriber(port, topic_filter, client_id=client_id, persistent=persistent).connect(10)


# --- a process's memory ---


def proc_status(pid: int | str = "self") -> dict[str, str]:
    """/proc/PID/status as key -> value text; OSError once the process has gone."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def memory_mib(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MiB; empty once it has exited."""
    try:
        status = proc_status(pid)
    except OSError:
        return {}
    return {key: int(status[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM") if key in status}  # kB -> MiB


# --- the daemon's Detector, offline, on a whole recording ---


class CachedEmbedder:
    """An `Embedder` that runs the model on each distinct window once, one window per call (as the daemon mostly
    calls it on a live stream): bit-identical windows, such as those of a periodic background, share one call."""

    def __init__(self, model: Embedder) -> None:
        self._model = model
        self._seen: dict[bytes, np.ndarray] = {}

    def embed(self, windows: np.ndarray) -> np.ndarray:
        rows = []
        for window in windows:
            key = hashlib.blake2b(window.tobytes(), digest_size=16).digest()
            if key not in self._seen:
                self._seen[key] = self._model.embed(window[None])[0]
            rows.append(self._seen[key])
        return np.stack(rows)


def detection_preparer(
    bundle: Path,
    manifest: Manifest,
    model: ModelConfig,
    cache_dir: Path | None = None,
    *,
    examples: ExampleEmbedder | None = None,
) -> DetectionPreparer:
    """Embeds detections' prompts as the daemon does (`cache_dir`: its prompt cache, which a daemon started on the
    same state directory then finds filled), and their audio examples with `examples`."""
    from clapd.daemon.inference import LazyTextModel  # onnxruntime: not in every worker that imports this module

    text = LazyTextModel(bundle, manifest, model)
    return DetectionPreparer(
        text, cache_dir, manifest.text_side_sha256(), manifest.logit_scale, manifest.embedding_size, examples=examples
    )


def recording_windows(
    stream: str, audio: np.ndarray, window: int, hop: int, model_window: int, batch: int = OFFLINE_BATCH
) -> Iterator[list[Window]]:
    """`clip_windows(stream, audio, window, hop, model_window)` `batch` windows at a time: the same windows, without
    holding every repeat-padded window of a long recording in memory at once."""
    if audio.size <= window:
        yield clip_windows(stream, audio, window, hop, model_window)
        return
    count = (audio.size - window) // hop + 1
    for first in range(0, count, batch):
        offset, last = first * hop, min(first + batch, count) - 1
        part = clip_windows(stream, audio[offset : last * hop + window], window, hop, model_window)
        yield [replace(w, start_sample=w.start_sample + offset, end_sample=w.end_sample + offset) for w in part]


def detect_offline(
    embedder: Embedder,
    detections: DetectionSet,
    stream: str,
    audio: np.ndarray,
    window: int,
    hop: int,
    model_window: int,
    sample_rate: int,
) -> Detections:
    """A recording through the daemon's `Detector`, windowed as a live stream is: every window's scores, and the
    events, those still in progress ended where the audio ends (as when a file source ends)."""
    detector = Detector(embedder, detections, {stream: StreamClock(OFFLINE_START, sample_rate)}, hop)
    scores, events = [], []
    for windows in recording_windows(stream, audio, window, hop, model_window):
        found = detector.process(windows)
        scores += found.scores
        events += found.events
    events += detector.close(stream, audio.size)
    return Detections(scores, events)


# --- events against the sounds planted in a recording ---


@dataclass(frozen=True, slots=True)
class Tally:
    """One detection's event starts against spans of a recording (the planted sounds it should find, or those it
    should not fire on)."""

    spans: int  # spans given
    found: int  # spans with at least one start within them
    within: int  # starts within some span
    outside: int  # starts within none: false alarms, when the spans are the detection's own sounds


def event_starts(events: Sequence[DetectionEvent], detection: str) -> list[float]:
    """When each of `detection`'s events started, in s from the start of its stream."""
    return [e.start_sample / e.sample_rate for e in events if e.detection == detection and e.kind == "start"]


def tally_starts(
    starts: Sequence[float], spans: Sequence[tuple[float, float]], before_s: float, after_s: float
) -> Tally:
    """Which `spans` (start, end in s) a start falls in, each widened by `before_s` and `after_s`: an event's start
    is its first window's start, which precedes the sound by up to a window, and windows still holding the end of a
    sound may start one after it."""
    hit = [any(a - before_s <= s <= b + after_s for s in starts) for a, b in spans]
    within = sum(any(a - before_s <= s <= b + after_s for a, b in spans) for s in starts)
    return Tally(len(spans), sum(hit), within, len(starts) - within)
