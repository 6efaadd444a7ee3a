"""Streams one daemon keeps in real time, and its memory: the capacity part of `bench_daemon.py`.

A worker process (this file, run with `--streams N`) assembles a daemon of N `pipe` streams whose writers pace s16le
by the clock, runs it for a while and prints its counts, batch times and memory as JSON. Two workloads:

- `busy`: every window goes to the model (hiss with tones and bursts; no level gate): the worst case.
- `quiet`: a quiet room (room tone around -60 dBFS RMS) where one 2 s sound happens per minute, each stream at its
  own phase, with the streams' level gate (`min_level_dbfs`) on: most windows skip the model, as in a home at night.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from common import memory_mib, worker_result

if TYPE_CHECKING:
    from clapd.daemon.runner import Runner

RATE = 48_000  # Hz: the model's rate, and the writers' (no resampling in the daemon)
CAPACITY_CHUNK = 960  # samples per write in the capacity runs: 20 ms, a typical capture block
BACKGROUND_PROMPTS = ["silence", "background noise", "an ordinary quiet room"]  # the config's default
TOPIC_PREFIX = "bench/clapd"
STOP_S = 5.0  # a capacity worker's runner is given this long to stop
WORKLOADS = ("busy", "quiet")
MAX_LAG_S = 5.0  # a run whose results came later than this after their window ended did not keep up
QUIET_LOOP_S = 60  # the quiet room's loop: one sound per loop
QUIET_SOUND_S = 2.0
QUIET_GATE_DBFS = -45.0  # the streams' level gate on the quiet workload: 15 dB over the room tone
# Quiet streams are written in 100 ms blocks: dozens of writer processes waking every 20 ms would take a core of
# their own on these 2 (the harness's cost, not the daemon's); a capture block of 100 ms is common too.
QUIET_CHUNK = 4800
QUIET_START_STREAMS = 8  # where the quiet search starts doubling (every count below is far within reach)

# Paces a raw s16le file by the clock, from byte `start` (optional), and loops from byte `loop_from` when it ends.
# A chunk is written once the time it covers has passed, as a capture device hands over a block. Logs the time each
# onset sample was written.
WRITER = """
import json, sys, time
path, chunk, loop_from, side = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
onsets = sorted(int(x) for x in sys.argv[5].split(",") if x)
pos = int(sys.argv[6]) if len(sys.argv) > 6 else 0
data, out, rate = open(path, "rb").read(), sys.stdout.buffer, 48000
log = open(side, "a") if side != "-" else None
started, written, k, looped = time.monotonic(), 0, 0, False
try:
    while True:
        if pos >= len(data):
            pos = loop_from
            if log and not looped:
                log.write(json.dumps({"done": written, "t": time.time()}) + "\\n"); log.flush()
            looped = True
        block = data[pos : pos + 2 * chunk]
        pos += len(block)
        after = written + len(block) // 2
        time.sleep(max(0.0, started + after / rate - time.monotonic()))
        out.write(block); out.flush()
        now = time.time()
        while log and k < len(onsets) and onsets[k] < after:
            log.write(json.dumps({"onset": onsets[k], "t": now}) + "\\n"); log.flush()
            k += 1
        written = after
except (BrokenPipeError, KeyboardInterrupt):
    pass
"""


def write_raw(path: Path, samples: np.ndarray) -> None:
    path.write_bytes(samples.astype("<i2").tobytes())


def to_s16(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def quantile(values: list[float], q: float) -> float:
    return float(np.quantile(values, q)) if values else math.nan


@dataclass(frozen=True, slots=True)
class Capacity:
    workload: str
    window_s: float
    hop_s: float
    streams: int
    seconds: float
    produced: int
    skipped: int
    gated: int  # windows the level gate kept from the model (among `produced`)
    restarts: int
    batch_sizes: list[int]
    batch_ms: list[float]  # model call, matching and event tracking, per batch
    lag_s: list[float]  # per batch: audio written after the oldest window of the batch ended, once it was done
    cpu_s: float  # the daemon process, all threads
    writers_cpu_s: float
    startup_s: float  # load (hashes, both models, prompts, warm-up) and start
    memory_start: dict[str, float]
    memory_end: dict[str, float]
    rss_trimmed: float  # VmRSS after the run and glibc's malloc_trim(0), MiB
    threads: int  # model.threads
    parallel_calls: int  # model.parallel_calls

    @property
    def real_time(self) -> bool:
        """Kept up: nothing skipped, and every batch done within MAX_LAG_S of its oldest window's end (a daemon
        falling behind skips only once 22.5 s behind, which a minute's run may not reach)."""
        kept_up = max(self.lag_s, default=0.0) <= MAX_LAG_S
        return self.skipped == 0 and self.restarts == 0 and self.produced > 0 and kept_up

    @property
    def ms_per_model_window(self) -> float:
        """Batch time (model calls, matching, event tracking) per window that ran the model."""
        return sum(self.batch_ms) / max(1, self.produced - self.gated)

    @property
    def model_share(self) -> float:
        """The share of the windows that ran the model (the rest were gated)."""
        return 1 - self.gated / max(1, self.produced)


# --- the audio ---


def busy_audio(seconds: int = 10, seed: int = 11) -> np.ndarray:
    """Hiss with a few tones and bursts, looped by every writer: every window runs the model."""
    rng = np.random.default_rng(seed)
    t = np.arange(seconds * RATE) / RATE
    audio = 0.01 * rng.standard_normal(t.size)
    audio += np.where((t % 5) < 1, 0.3 * np.sin(2 * np.pi * 1000 * t), 0.0)
    audio += np.where(((t + 2) % 5) < 0.5, 0.3 * rng.standard_normal(t.size), 0.0)
    return to_s16(audio)


def quiet_audio(seed: int = 12) -> np.ndarray:
    """A minute of room tone (about -60 dBFS RMS, low-passed hiss) and one 2 s sound (a tone over a noise burst,
    about -15 dBFS RMS)."""
    rng = np.random.default_rng(seed)
    n, sound = QUIET_LOOP_S * RATE, round(QUIET_SOUND_S * RATE)
    tone = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same")
    audio = 0.001 * tone / np.sqrt(np.mean(tone**2))
    t = np.arange(sound) / RATE
    audio[:sound] += 0.15 * np.sin(2 * np.pi * 700 * t) + 0.1 * rng.standard_normal(sound)
    return to_s16(audio)


def write_workload(work: Path, workload: str) -> Path:
    path = work / f"capacity-{workload}.s16le"
    write_raw(path, quiet_audio() if workload == "quiet" else busy_audio())
    return path


def start_byte(workload: str, stream: int, streams: int) -> int:
    """Where stream `stream`'s writer starts in the loop: quiet streams spread evenly over the minute, so their
    sounds do not all come in the same second; busy streams all start at 0 (each of their windows runs anyway)."""
    if workload != "quiet":
        return 0
    return 2 * (stream * QUIET_LOOP_S * RATE // streams)


# --- the worker ---


def worker_config(args: argparse.Namespace, raw: Path) -> dict:
    def stream(i: int) -> dict:
        start = start_byte(args.workload, i, args.streams)
        chunk = QUIET_CHUNK if args.workload == "quiet" else CAPACITY_CHUNK
        command = [sys.executable, "-c", WRITER, str(raw), str(chunk), "0", "-", "", str(start)]
        gate = {"min_level_dbfs": QUIET_GATE_DBFS} if args.workload == "quiet" else {}
        return {"type": "pipe", "command": command, "sample_rate": RATE, "sample_format": "s16le", **gate}

    return {
        "model": {
            "bundle": str(args.bundle),
            "providers": ["cpu"],
            "precision": "int8",
            "threads": args.threads,
            "parallel_calls": args.parallel_calls,
        },
        "windows": {"window_seconds": args.window, "hop_seconds": args.hop},
        "streams": {f"s{i}": stream(i) for i in range(args.streams)},
        "detections": {"bark": {"prompts": ["a dog barking"]}},
        "background_prompts": BACKGROUND_PROMPTS,
        "outputs": {"mqtt": {"host": "127.0.0.1", "port": args.broker_port, "topic_prefix": TOPIC_PREFIX}},
        "state_dir": str(args.work_dir / "state"),
    }


class BatchProbe:
    """`Runner.on_inference`, called after each model call: its windows and time, and the result lag (audio
    written after the batch's oldest window ended, once the batch was done), from the runner's stream counters."""

    def __init__(self, runner: Runner, window: int, hop: int) -> None:
        self._runner, self._window, self._hop = runner, window, hop
        self._produced: dict[str, int] = {}  # stream -> windows run up to the last call
        self.sizes: list[int] = []
        self.ms: list[float] = []
        self.lag_s: list[float] = []

    def __call__(self, seconds: float, windows: int) -> None:
        self.sizes.append(windows)
        self.ms.append(1000 * seconds)
        lags = []
        for stats in self._runner.stream_stats():
            counts, before = stats.windows, self._produced.get(stats.name, 0)
            self._produced[stats.name] = counts.produced
            if counts.produced > before:  # this call ran windows of this stream; skipping comes before them
                oldest_end = (before + counts.skipped) * self._hop + self._window
                lags.append(stats.source.samples_written - oldest_end)
        self.lag_s.append(max(lags, default=0) / RATE)


def run_worker(args: argparse.Namespace) -> None:
    """In this process: assemble a daemon of N streams, run it `--seconds`, print counts, batch times and memory
    as JSON."""
    from clapd.daemon.assembly import assemble
    from clapd.daemon.config import parse_config

    config = parse_config(worker_config(args, args.work_dir / f"capacity-{args.workload}.s16le"))
    launched = time.monotonic()
    runner = assemble(config).runner
    probe = BatchProbe(runner, round(args.window * RATE), round(args.hop * RATE))
    runner.on_inference = probe
    runner.start()
    startup = time.monotonic() - launched
    memory_start = memory_mib()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(args.seconds)  # the writers loop their file: the streams never end
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    memory_end = memory_mib()
    stats = runner.stream_stats()
    running = runner.running()
    runner.stop(STOP_S)
    if not running:
        raise SystemExit("the daemon's inference loop ended before the run did (see the log above)")
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)  # what of VmRSS is heap freed but kept by glibc
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = Capacity(
        args.workload,
        args.window,
        args.hop,
        args.streams,
        args.seconds,
        sum(s.windows.produced for s in stats),
        sum(s.windows.skipped for s in stats),
        sum(s.windows.gated for s in stats),
        sum(s.source.restarts for s in stats),
        probe.sizes,
        probe.ms,
        probe.lag_s,
        cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
        children.ru_utime + children.ru_stime,
        startup,
        memory_start,
        memory_end,
        memory_mib()["VmRSS"],
        args.threads,
        args.parallel_calls,
    )
    print(json.dumps(asdict(result)))


# --- the parent's side ---


@dataclass(frozen=True, slots=True)
class CapacityRun:
    """What every capacity run of one benchmark shares."""

    workload: str
    seconds: float
    bundle: Path
    broker_port: int
    work: Path
    threads: int
    parallel_calls: int

    def __call__(self, n: int, window_s: float, hop_s: float) -> Capacity:
        options = ["--streams", str(n), "--window", str(window_s), "--hop", str(hop_s), "--seconds", str(self.seconds)]
        options += ["--bundle", str(self.bundle), "--broker-port", str(self.broker_port), "--work-dir", str(self.work)]
        options += ["--workload", self.workload, "--threads", str(self.threads)]
        options += ["--parallel-calls", str(self.parallel_calls)]
        what = f"capacity ({self.workload}): {n} streams, window {window_s:g} s, hop {hop_s:g} s, {self.seconds:g} s"
        print(f"{what} ...", file=sys.stderr)
        result = worker_result(Path(__file__).resolve(), options, what, timeout=self.seconds + 300)
        found = Capacity(**result)
        print(f"  -> skipped {found.skipped}, median batch {median(found.batch_ms):.0f} ms", file=sys.stderr)
        return found


def search_capacity(start: int, run: Callable[[int], Capacity], refine: int, limit: int) -> list[Capacity]:
    """Doubling up from `start` while in real time, at most to `limit` (halving down while not), then `refine`
    bisection steps between the largest count in real time and the smallest not."""
    results: dict[int, Capacity] = {}

    def ok(n: int) -> bool:
        if n not in results:
            results[n] = run(n)
        return results[n].real_time

    n = start
    if ok(n):
        while n < limit and ok(min(2 * n, limit)):
            n = min(2 * n, limit)
        good, bad = n, min(2 * n, limit) if n < limit else None
    else:
        while n > 1 and not ok(n // 2):
            n //= 2
        good, bad = (n // 2 if n > 1 else 0), n
    for _ in range(refine):
        if bad is None or bad - good <= 1:
            break
        middle = (good + bad) // 2
        good, bad = (middle, bad) if ok(middle) else (good, middle)
    return [results[k] for k in sorted(results)]


def best_streams(capacity: list[Capacity]) -> dict[tuple[str, float], int]:
    """(workload, window seconds) -> the most streams run with no window skipped."""
    best: dict[tuple[str, float], int] = {}
    for r in capacity:
        if r.real_time:
            key = (r.workload, r.window_s)
            best[key] = max(best.get(key, 0), r.streams)
    return best


def capacity_table(results: list[Capacity]) -> str:
    rows = [
        "| workload | threads x calls | window / hop | streams | windows | gated | skipped | batch size p50 "
        "| batch ms p50 / p95 | ms per window run | result lag p50 / max | daemon CPU | writers CPU | real time |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        per_window = r.ms_per_model_window
        rows.append(
            f"| {r.workload} | {r.threads} x {r.parallel_calls} | {r.window_s:g} s / {r.hop_s:g} s | {r.streams} "
            f"| {r.produced} | {r.gated} "
            f"| {r.skipped} | {median(r.batch_sizes):g} | {median(r.batch_ms):.0f} / {quantile(r.batch_ms, 0.95):.0f} "
            f"| {per_window:.0f} | {median(r.lag_s):.2f} / {max(r.lag_s, default=math.nan):.2f} s "
            f"| {r.cpu_s / r.seconds:.2f} cores | {r.writers_cpu_s / r.seconds:.2f} cores "
            f"| {'yes' if r.real_time else 'no'} |"
        )
    return "\n".join(rows)


def parse_worker_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--window", type=float, required=True)
    parser.add_argument("--hop", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--workload", choices=WORKLOADS, default="busy")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--parallel-calls", type=int, required=True)
    return parser.parse_args()


if __name__ == "__main__":
    run_worker(parse_worker_args())
