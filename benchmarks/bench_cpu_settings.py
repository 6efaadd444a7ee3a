"""Which onnxruntime settings make the full-size int8 audio model fastest on this CPU (issue 14, item 2).

Each setting is measured by throughput: worker processes (fresh, one ORT session each) run the bundle's static int8
audio model on 10 s windows for a fixed time after a common start, and report windows done, CPU time and resident
memory. Several processes at once answer "threads per call against streams per batch": two 1-thread sessions each
running their own windows against one 2-thread session. The settings:

- `daemon`: what `clapd.daemon.inference.session_options` gives the daemon (2 threads, ORT_ENABLE_ALL, intra-op
  spinning off, the CPU memory arena on);
- `spinning`: the same with spinning on (onnxruntime's default);
- `no-arena`: without the CPU memory arena (less memory kept between calls);
- `extended`: ORT_ENABLE_EXTENDED instead of ALL (no NCHWc layout transformations);
- `1-thread`: one intra-op thread;
- `2-calls`: one session of one intra-op thread that two threads of the worker call at once, each with its own
  windows (the daemon's `model.threads: 1, parallel_calls: 2`).

The attention fusion of `onnxruntime.transformers` (`--model-type swin`) is reported by `--fusion`: how many
attention blocks it fuses in the fp32 graph. `--int8-variants softmax,add-mul,layout,all` adds a `2-calls` row for
each int8 model quantised over more operator types (`int8_variants.py`), with its least cosine to fp32.

    .venv/bin/python benchmarks/bench_cpu_settings.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from bench_audio_cpu import make_clips, static_reference
from common import Reference, arg_parser, header_lines, memory_mib, publish, worker_result
from int8_variants import SHIPPED, VARIANTS, variant_file

from clapd.daemon.inference import session_options

PACKAGES = ("onnxruntime", "numpy")
START, END = "<!-- bench_cpu_settings:start -->", "<!-- bench_cpu_settings:end -->"
SETTINGS = ("daemon", "spinning", "no-arena", "extended", "1-thread", "2-calls")
CALLS = {"2-calls": 2}  # calls at once on the worker's one session (1 elsewhere)
ONE_THREAD = ("1-thread", "2-calls")  # sessions of one intra-op thread (2 elsewhere)
# (setting, processes, batch): the rows, in order; each process runs its own windows
ROWS = (
    ("daemon", 1, 1),
    ("daemon", 1, 4),
    ("spinning", 1, 1),
    ("no-arena", 1, 1),
    ("extended", 1, 1),
    ("1-thread", 1, 1),
    ("1-thread", 2, 1),
    ("1-thread", 2, 4),
    ("2-calls", 1, 1),
    ("2-calls", 1, 4),
)
VARIANT_BASES = (
    ("daemon", 1, 1),
    ("2-calls", 1, 1),
)  # `--rows daemon`: the shipped int8 model's rows variants compare with
START_DELAY_S = 20.0  # every worker has loaded its session and warmed up by then


@dataclass(frozen=True, slots=True)
class WorkerReading:
    windows: int
    wall_s: float
    cpu_s: float
    rss_mib: float
    hwm_mib: float


@dataclass(frozen=True, slots=True)
class Row:
    setting: str
    processes: int
    batch: int
    readings: list[WorkerReading]
    model: str = "int8"  # "int8": the bundle's; else a variant of int8_variants.VARIANTS
    min_cosine: float | None = None  # of a variant, to fp32

    @property
    def windows_per_s(self) -> float:
        return sum(r.windows / r.wall_s for r in self.readings)

    @property
    def cpu_ms_per_window(self) -> float:
        return 1000 * sum(r.cpu_s for r in self.readings) / max(1, sum(r.windows for r in self.readings))


def threads_of(setting: str) -> int:
    return 1 if setting in ONE_THREAD else 2


def options_for(setting: str) -> ort.SessionOptions:
    options = session_options(threads_of(setting))
    if setting == "spinning":
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    if setting == "no-arena":
        options.enable_cpu_mem_arena = False
    if setting == "extended":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return options


def run_worker(args: argparse.Namespace) -> None:
    """Load, warm up, wait for the common start, run windows for `--seconds` (from one thread, or several at once
    on the one session), print a WorkerReading."""
    from concurrent.futures import ThreadPoolExecutor

    reference = Reference(args.reference)
    path = variant_file(reference, args.model) if args.model != "int8" else reference.audio_file("int8")
    session = ort.InferenceSession(str(path), options_for(args.worker), providers=["CPUExecutionProvider"])
    clips = make_clips()
    feed_name = session.get_inputs()[0].name
    rows = [[(i * args.batch + k) % len(clips) for k in range(args.batch)] for i in range(8)]
    batches = [np.ascontiguousarray(clips[r]) for r in rows]
    session.run(None, {feed_name: batches[0]})  # warm-up: allocations, prepacking
    time.sleep(max(0.0, args.start_at - time.time()))
    cpu0, began = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()

    def loop(offset: int) -> int:
        windows, i = 0, offset
        while time.monotonic() - began < args.seconds:
            session.run(None, {feed_name: batches[i % len(batches)]})
            windows, i = windows + args.batch, i + 1
        return windows

    calls = CALLS.get(args.worker, 1)
    with ThreadPoolExecutor(calls) as pool:
        windows = sum(pool.map(loop, range(calls)))
    wall, cpu1 = time.monotonic() - began, resource.getrusage(resource.RUSAGE_SELF)
    memory = memory_mib()
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    print(json.dumps(asdict(WorkerReading(windows, wall, cpu, memory["VmRSS"], memory["VmHWM"]))))


def measure(setting: str, processes: int, batch: int, seconds: float, reference: Reference, model: str = "int8") -> Row:
    """`processes` workers at once, started together."""
    from concurrent.futures import ThreadPoolExecutor

    start_at = time.time() + START_DELAY_S
    options = ["--worker", setting, "--batch", str(batch), "--seconds", str(seconds), "--start-at", str(start_at)]
    options += ["--reference", str(reference.directory), "--model", model]
    what = f"{setting}, {processes} process(es), batch {batch}, model {model}"
    print(f"{what} ...", file=sys.stderr)
    script = Path(__file__).resolve()
    with ThreadPoolExecutor(processes) as pool:
        futures = [pool.submit(worker_result, script, options, what, timeout=seconds + 300) for _ in range(processes)]
        readings = [WorkerReading(**f.result()) for f in futures]
    row = Row(setting, processes, batch, readings, model)
    print(f"  -> {row.windows_per_s:.2f} windows/s, {row.cpu_ms_per_window:.0f} CPU ms per window", file=sys.stderr)
    return row


def fusion_report(reference: Reference) -> str:
    """What onnxruntime.transformers' swin optimizer fuses in the fp32 graph (it writes nothing we ship)."""
    from onnxruntime.transformers import optimizer

    model = optimizer.optimize_model(
        str(reference.audio_file("fp32")), model_type="swin", num_heads=0, hidden_size=0, opt_level=0, use_gpu=False
    )
    fused = {name: n for name, n in model.get_fused_operator_statistics().items() if n}
    attention = sum(n for name, n in fused.items() if "Attention" in name)
    return (
        f"- `onnxruntime.transformers.optimizer.optimize_model(model_type='swin')` on the fp32 graph: {attention} "
        f"attention blocks fused; what it fuses: {', '.join(f'{k} {v}' for k, v in fused.items()) or 'nothing'}"
    )


def table(rows: list[Row]) -> str:
    base = next(r for r in rows if (r.setting, r.processes, r.batch) == ROWS[0])
    lines = [
        "| setting | int8 model | threads per session x processes x calls at once | batch per call "
        "| windows/s (all processes) | vs daemon | CPU ms per window | VmRSS per process | VmHWM per process |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        threads = threads_of(r.setting)
        rss = max(x.rss_mib for x in r.readings)
        hwm = max(x.hwm_mib for x in r.readings)
        lines.append(
            f"| {r.setting} | {model_cell(r)} | {threads} x {r.processes} x {CALLS.get(r.setting, 1)} | {r.batch} "
            f"| {r.windows_per_s:.2f} "
            f"| {r.windows_per_s / base.windows_per_s:.2f}x | {r.cpu_ms_per_window:.0f} "
            f"| {rss:.0f} MiB | {hwm:.0f} MiB |"
        )
    return "\n".join(lines)


def model_cell(row: Row) -> str:
    if row.model == "int8":
        return "shipped (MatMul, Gemm, Conv)"
    return f"+ {', '.join(VARIANTS[row.model][len(SHIPPED) :])} (cosine {row.min_cosine:.4f} to fp32)"


def variant_rows(variants: list[str], seconds: float, reference: Reference) -> list[Row]:
    """A `2-calls` row (the daemon's default) for each int8 variant, built first so that no row waits on a build."""
    import int8_variants

    cosines = {}
    for variant in variants:
        int8_variants.build(reference, variant)
        cosines[variant] = int8_variants.min_cosine(reference, variant_file(reference, variant))
    rows = [measure("2-calls", 1, 1, seconds, reference, variant) for variant in variants]
    return [dataclasses.replace(row, min_cosine=cosines[row.model]) for row in rows]


def section(rows: list[Row], seconds: float, load: float, fusion: str) -> str:
    return "\n".join(
        [
            START,
            "## onnxruntime settings for the int8 audio model on the CPU (issue 14, item 2)",
            "",
            f"Written by `benchmarks/bench_cpu_settings.py`: the random-weight full-size reference model's static "
            f"int8 audio model (`audio_int8.onnx` of the bundle `clapd export` writes), 10 s windows; each row's "
            f"worker processes start together and run windows for {seconds:g} s after a warm-up; windows/s is the "
            "sum over the processes. *daemon*: the daemon's session settings (2 threads, ORT_ENABLE_ALL, spinning "
            "off, memory arena on); each other row changes one thing.",
            "",
            *header_lines(PACKAGES, machine_note=f" (1-min load average at start: {load:.2f})"),
            "",
            table(rows),
            "",
            fusion,
            END,
        ]
    )


def run_parent(args: argparse.Namespace) -> None:
    load = os.getloadavg()[0]
    reference = static_reference(False)
    variants = [v for v in (args.int8_variants or "").split(",") if v]
    rows = [measure(s, p, b, args.seconds, reference) for s, p, b in (ROWS if args.rows == "all" else VARIANT_BASES)]
    rows += variant_rows(variants, args.seconds, reference)
    fusion = fusion_report(reference) if args.fusion else ""
    publish(section(rows, args.seconds, load, fusion), args.write, START, END)


def parse_args() -> argparse.Namespace:
    parser = arg_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long each worker runs windows")
    parser.add_argument("--fusion", action="store_true", help="also report onnxruntime.transformers' swin fusion")
    parser.add_argument("--write", type=Path, help="markdown file whose bench_cpu_settings section to update")
    parser.add_argument("--int8-variants", help=f"comma-separated, of {', '.join(VARIANTS)}: also measure these")
    parser.add_argument(
        "--rows",
        choices=("all", "daemon"),
        default="all",
        help="'daemon': the shipped model's daemon and 2-calls rows, and the variants'",
    )
    parser.add_argument("--model", default="int8", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        run_worker(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
