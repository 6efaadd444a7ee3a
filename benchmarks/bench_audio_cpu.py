"""Per-window CPU time of the full-size audio model: HF transformers eager vs our ONNX fp32 and int8 bundles.

Each variant x batch size is timed in a fresh subprocess (`--worker`), because several ORT sessions in one process
give bimodal figures. The parent builds (or reuses) the random-weight reference model and its bundle
(`common.reference_bundle`, shared with bench_daemon.py), runs the workers one after another, prints a markdown
table and, with `--write`, updates its section of docs/benchmarks.md.

The bundle's int8 model is static (calibrated at export, batch-invariant); `onnx-int8-dynamic` is the dynamic int8
that bundles held before, built next to the bundle from its fp32 file for comparison. `--profile` runs each chosen
ONNX variant once more with onnxruntime's profiler and prints the time per operator type and per part of the model.

    .venv/bin/python benchmarks/bench_audio_cpu.py --write docs/benchmarks.md
    .venv/bin/python benchmarks/bench_audio_cpu.py --variants onnx-fp32,onnx-int8,onnx-int8-dynamic --profile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from common import Reference, arg_parser, header_lines, publish, reference_bundle, worker_result

SAMPLE_RATE = 48_000  # Hz
WINDOW_SAMPLES = 480_000  # the model's fixed input: 10 s
N_CLIPS = 8
THREADS = 2
VARIANTS = ("hf-eager", "onnx-fp32", "onnx-int8", "onnx-int8-dynamic", "daemon")
NAMES = {
    "hf-eager": "HF eager",
    "onnx-fp32": "ONNX fp32",
    "onnx-int8": "ONNX int8 (static)",
    "onnx-int8-dynamic": "ONNX int8 (dynamic)",
    "daemon": "the daemon's path",
}
LABELS = {
    **NAMES,
    "hf-eager": "HF eager (extractor + `get_audio_features`)",
    "daemon": "the daemon's path (`AudioModel`, default settings: int8, 1-thread calls, 2 at once, 1 window each)",
}
PRECISIONS = {"onnx-fp32": "fp32", "onnx-int8": "int8"}  # the bundle's audio model each ONNX variant runs
DYNAMIC_INT8_FILE = "audio_int8_dynamic.onnx"  # beside the reference bundle, built from its fp32 file
PACKAGES = ("torch", "transformers", "onnxruntime", "numpy")
START, END = "<!-- bench_audio_cpu:start -->", "<!-- bench_audio_cpu:end -->"

Embedder = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class Timing:
    """One worker's result: per-window times (batch time / batch size) and the embeddings of all clips."""

    variant: str
    batch: int
    runs: int
    warmup: int
    window_ms: list[float]
    embeddings: list[list[float]]  # [N_CLIPS, embedding size], unit norm


def make_clips(seed: int = 0) -> np.ndarray:
    """[N_CLIPS, WINDOW_SAMPLES] float32 in [-1, 1]: noise, tones, sweeps, clicks and silence, mixed."""
    rng = np.random.default_rng(seed)
    t = np.arange(WINDOW_SAMPLES, dtype=np.float64) / SAMPLE_RATE  # s
    clips = [
        0.3 * rng.standard_normal(WINDOW_SAMPLES),
        0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.01 * rng.standard_normal(WINDOW_SAMPLES),
        0.4 * np.sin(2 * np.pi * (100.0 * t + 0.5 * (8000.0 - 100.0) / 10.0 * t**2)),  # 100 Hz -> 8 kHz sweep
        np.zeros(WINDOW_SAMPLES),
        sum(0.15 / k * np.sin(2 * np.pi * 220.0 * k * t) for k in range(1, 8)) * (t % 1.0 < 0.5),
        np.where(rng.random(WINDOW_SAMPLES) < 2e-4, rng.choice([-0.9, 0.9], WINDOW_SAMPLES), 0.0),  # clicks
        np.cumsum(rng.standard_normal(WINDOW_SAMPLES)) * 1e-3,  # brown-ish noise
        0.2 * rng.standard_normal(WINDOW_SAMPLES) * np.sin(2 * np.pi * 0.5 * t) ** 2
        + 0.3 * np.sin(2 * np.pi * 1000.0 * t),
    ]
    return np.clip(np.stack(clips), -1.0, 1.0).astype(np.float32)


def hf_embedder(model_dir: Path) -> Embedder:
    import torch
    from transformers import ClapFeatureExtractor, ClapModel

    torch.set_num_threads(THREADS)
    extractor = ClapFeatureExtractor(frequency_min=50, truncation="rand_trunc")
    model = ClapModel.from_pretrained(model_dir).eval()

    def embed(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            features = extractor(list(batch), sampling_rate=SAMPLE_RATE, return_tensors="pt")
            return model.get_audio_features(**features).pooler_output.numpy()

    return embed


def onnx_session(path: Path, profile_prefix: str | None = None) -> ort.InferenceSession:
    """The daemon's CPU session settings; with `profile_prefix`, onnxruntime's profiler on."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # the daemon's setting: no idle spin
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def daemon_embedder(bundle: Path) -> Embedder:
    """clapd's own AudioModel with the config's defaults on the CPU: what the daemon runs a batch of windows with."""
    from clapd.daemon.config import ModelConfig
    from clapd.daemon.inference import AudioModel, open_bundle

    model = AudioModel(bundle, open_bundle(bundle), ModelConfig(providers=["cpu"]))
    return model.embed


def onnx_embedder(path: Path) -> Embedder:
    session = onnx_session(path)
    input_name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {input_name: batch})[0]


# --- profiling: onnxruntime's per-node times, summed by operator type and by part of the model ---

MATMUL_OPS = {"MatMul", "FusedMatMul", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}
MATMUL_OPS |= {"MatMulInteger", "Gemm", "QGemm", "FusedGemm"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
LAYOUT_OPS = {"Transpose", "Reshape", "Concat", "Slice", "Gather", "Unsqueeze", "Squeeze", "Split", "Pad", "Shape"}
LAYOUT_OPS |= {"Expand", "Flatten", "Identity", "Cast", "Tile", "Range", "Where", "ReorderInput", "ReorderOutput"}
GELU_OPS = {"Gelu", "BiasGelu", "FastGelu", "Erf"}
NORM_OPS = {"LayerNormalization", "SkipLayerNormalization", "BatchNormalization"}


def part_of_model(node: str, op: str) -> str:
    """Which part of HTS-AT a profiled node belongs to, from its exported name (fused nodes keep little of it)."""
    attention = "/attention/" in node
    if node.startswith("front_end/"):
        return "front end (DFT Conv, mel MatMul, log, time stretch)"
    if op in QDQ_OPS:
        return "QuantizeLinear / DequantizeLinear"
    if op in LAYOUT_OPS:
        return "layout (Transpose, Reshape, Concat, Slice, Pad, ...)"
    if op == "Softmax":
        return "attention Softmax"
    if attention and op in MATMUL_OPS:
        if any(f"/self/{p}/" in node for p in ("query", "key", "value")):
            return "attention Q/K/V projections"
        return "attention output projection" if "/output/" in node else "attention QK^T and PV (activation MatMuls)"
    if "/intermediate/" in node or "/output/dense/" in node or op in GELU_OPS:
        return "MLP (two projections, GELU)"
    if "/downsample/" in node:
        return "patch merging"
    if op in NORM_OPS:
        return "layer norms"
    return "other (residual Add, mask Add, scale Div, patch embedding, head)"


def profile_worker(path: Path, clips: np.ndarray, batch: int, runs: int) -> dict[str, dict[str, float]]:
    """ms per window by operator type and by part of the model, over `runs` profiled runs after one warm-up."""
    with tempfile.TemporaryDirectory() as folder:
        session = onnx_session(path, profile_prefix=str(Path(folder) / "profile"))
        feed = {session.get_inputs()[0].name: np.ascontiguousarray(clips[[k % len(clips) for k in range(batch)]])}
        for _ in range(1 + runs):  # the first is a warm-up: allocations, prepacking
            session.run(None, feed)
        trace = json.loads(Path(session.end_profiling()).read_text())
    runs_seen = sorted((e["ts"], e["dur"]) for e in trace if e.get("cat") == "Session" and e["name"] == "model_run")
    timed = runs_seen[1:]
    by_op, by_part = Counter(), Counter()
    for event in trace:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < timed[0][0]:
            continue
        op, node = event["args"]["op_name"], event["name"].removesuffix("_kernel_time")
        ms = event["dur"] / 1000.0 / runs / batch  # us per run -> ms per window
        by_op[op] += ms
        by_part[part_of_model(node, op)] += ms
    run_ms = sum(duration for _, duration in timed) / 1000.0 / runs / batch
    return {"op_type": dict(by_op.most_common()), "part": dict(by_part.most_common()), "run": {"ms": run_ms}}


def time_embedder(embed: Embedder, clips: np.ndarray, batch: int, runs: int, warmup: int) -> list[float]:
    """Per-window ms of each timed run; the batches rotate through the clips."""
    window_ms = []
    for run in range(warmup + runs):
        rows = [(run * batch + k) % len(clips) for k in range(batch)]
        inputs = np.ascontiguousarray(clips[rows])
        start = time.perf_counter()
        embed(inputs)
        elapsed = time.perf_counter() - start  # s
        if run >= warmup:
            window_ms.append(1000.0 * elapsed / batch)
    return window_ms


def onnx_file(reference: Reference, variant: str) -> Path:
    if variant == "onnx-int8-dynamic":
        return reference.directory / DYNAMIC_INT8_FILE
    return reference.audio_file(PRECISIONS[variant])


def run_worker(args: argparse.Namespace) -> None:
    clips = make_clips()
    reference = Reference(args.reference)
    if args.profile_runs:
        print(
            json.dumps(profile_worker(onnx_file(reference, args.worker), clips, args.worker_batch, args.profile_runs))
        )
        return
    if args.worker == "hf-eager":
        embed = hf_embedder(reference.model)
    elif args.worker == "daemon":
        embed = daemon_embedder(reference.bundle)
    else:
        embed = onnx_embedder(onnx_file(reference, args.worker))
    window_ms = time_embedder(embed, clips, args.worker_batch, args.runs, args.warmup)
    # Untimed: every clip once, for the cosine figures.
    embeddings = np.concatenate([embed(clips[i : i + args.worker_batch]) for i in range(0, N_CLIPS, args.worker_batch)])
    timing = Timing(args.worker, args.worker_batch, args.runs, args.warmup, window_ms, embeddings.tolist())
    print(json.dumps(asdict(timing)))


def spawn_worker(variant: str, batch: int, runs: int, warmup: int, reference: Reference) -> Timing:
    options = ["--worker", variant, "--batch", str(batch), "--runs", str(runs), "--warmup", str(warmup)]
    options += ["--reference", str(reference.directory)]
    print(f"timing {variant} at batch {batch} ({warmup} warm-up + {runs} runs) ...", file=sys.stderr)
    env = {"OMP_NUM_THREADS": str(THREADS)}
    return Timing(**worker_result(Path(__file__).resolve(), options, f"worker {variant} batch {batch}", env=env))


def max_cross_cosine(embeddings: np.ndarray) -> float:
    """The largest cosine between the embeddings of two different clips: the scale the parity figures sit on."""
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    gram = x @ x.T
    return float(np.max(gram[~np.eye(len(x), dtype=bool)]))


def table(timings: list[Timing]) -> str:
    rows = [
        "| path | batch | median ms | min ms | max ms | windows/s | vs HF eager |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    hf = {t.batch: statistics.median(t.window_ms) for t in timings if t.variant == "hf-eager"}
    for t in sorted(timings, key=lambda t: (t.batch, VARIANTS.index(t.variant))):
        median = statistics.median(t.window_ms)
        speedup = f"{hf[t.batch] / median:.2f}x" if t.batch in hf else "-"
        rows.append(
            f"| {LABELS[t.variant]} | {t.batch} | {median:.1f} | {min(t.window_ms):.1f} | {max(t.window_ms):.1f} "
            f"| {1000.0 / median:.2f} | {speedup} |"
        )
    return "\n".join(rows)


def cosine_lines(timings: list[Timing]) -> list[str]:
    """Parity on the same clips, from the largest batch each variant ran; relative error as in the manifest."""
    from clapd.export.verify import compare

    largest: dict[str, np.ndarray] = {}
    for t in sorted(timings, key=lambda t: t.batch):
        largest[t.variant] = np.asarray(t.embeddings, dtype=np.float64)
    lines = []
    pairs = (
        ("onnx-int8", "onnx-fp32", 6),
        ("onnx-int8-dynamic", "onnx-fp32", 6),
        ("daemon", "onnx-int8", 6),
        ("onnx-fp32", "hf-eager", 10),
    )
    for candidate, reference, digits in pairs:
        if {candidate, reference} <= largest.keys():
            c = compare(largest[reference], largest[candidate])
            lines.append(
                f"- {NAMES[candidate]} vs {NAMES[reference]}: embedding cosine min over {N_CLIPS} clips "
                f"{c.min_cosine:.{digits}f}; max error / gap between the two closest clips {c.relative_error:.2g}"
            )
    reference = "onnx-fp32" if "onnx-fp32" in largest else next(iter(largest))
    lines.append(
        f"- for scale: the largest cosine between two different clips' embeddings ({NAMES[reference]}, "
        f"random weights) is {max_cross_cosine(largest[reference]):.4f}"
    )
    return lines


def section(timings: list[Timing], load: float) -> str:
    runs = sorted({(t.batch, t.warmup, t.runs) for t in timings})
    protocol = "; ".join(f"batch {b}: {w} warm-up + {r} timed runs" for b, w, r in runs)
    lines = [
        START,
        "## Audio model on the CPU (per 10 s window)",
        "",
        "Written by `benchmarks/bench_audio_cpu.py`: random-weight full-size reference model (HTSAT-tiny, "
        "`laion/clap-htsat-unfused` architecture), each path x batch timed in a fresh process with "
        f"{THREADS} threads (the daemon's path: its own settings). Per-window ms = batch time / batch size. HF "
        "eager includes its numpy feature "
        "extractor; the ONNX graphs include their front end. ONNX sessions: CPUExecutionProvider, "
        "ORT_ENABLE_ALL at load, intra-op spinning off (the daemon's settings).",
        "",
        *header_lines(PACKAGES, machine_note=f" (1-min load average at start: {load:.2f})"),
        f"- runs: {protocol}",
        "",
        table(timings),
        "",
        *cosine_lines(timings),
        END,
    ]
    return "\n".join(lines)


def static_reference(rebuild: bool) -> Reference:
    """The reference bundle, exported again if its int8 model is a dynamic one from before static int8."""
    reference = reference_bundle("default", tuple(PRECISIONS.values()), rebuild=rebuild)
    manifest = json.loads((reference.bundle / "manifest.json").read_text())
    if manifest["audio"]["int8"]["batch_invariant"]:
        return reference
    print("the reference bundle's int8 model is dynamic: exporting it again", file=sys.stderr)
    return reference_bundle("default", tuple(PRECISIONS.values()), rebuild=True)


def build_dynamic_int8(reference: Reference) -> None:
    """Dynamic int8 from the bundle's fp32 file, as `clapd export` made int8 before it was static."""
    from int8_variants import build_embedder_variant

    from clapd.export import quantize

    def quantise(front_end: Path, embedder: Path, out: Path) -> None:
        quantize.embedder_int8_dynamic(embedder, out)

    build_embedder_variant(reference, reference.directory / DYNAMIC_INT8_FILE, quantise)


def spawn_profile(variant: str, batch: int, runs: int, reference: Reference) -> dict[str, dict[str, float]]:
    options = ["--worker", variant, "--batch", str(batch), "--profile-runs", str(runs)]
    options += ["--reference", str(reference.directory)]
    print(f"profiling {variant} at batch {batch} ({runs} runs) ...", file=sys.stderr)
    return worker_result(Path(__file__).resolve(), options, f"profile {variant}", env={"OMP_NUM_THREADS": str(THREADS)})


def profile_tables(profiles: dict[tuple[str, int], dict[str, dict[str, float]]], top: int = 16) -> str:
    """Two markdown tables, ms per window under the profiler: by part of the model, and the top operator types."""
    columns = list(profiles)
    header = "| {} | " + " | ".join(f"{NAMES[v]}, batch {b}" for v, b in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    lines = []
    for kind, title in (("part", "part of the model"), ("op_type", "operator type")):
        totals = Counter()
        for profile in profiles.values():
            totals.update(profile[kind])
        lines += ["", header.format(title), rule]
        for name, _ in totals.most_common(top if kind == "op_type" else None):
            lines.append(f"| {name} | " + " | ".join(f"{profiles[c][kind].get(name, 0.0):.1f}" for c in columns) + " |")
        sums = [sum(profiles[c][kind].values()) for c in columns]
        lines.append("| **sum of node times** | " + " | ".join(f"**{x:.1f}**" for x in sums) + " |")
        lines.append("| run time, profiled | " + " | ".join(f"{profiles[c]['run']['ms']:.1f}" for c in columns) + " |")
    return "\n".join(lines)


def run_parent(args: argparse.Namespace) -> None:
    load = os.getloadavg()[0]
    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    reference = static_reference(args.rebuild)
    if "onnx-int8-dynamic" in variants:
        build_dynamic_int8(reference)
    batches = [int(b) for b in args.batches.split(",")]
    timings = [
        spawn_worker(variant, batch, args.runs, args.warmup, reference) for batch in batches for variant in variants
    ]
    publish(section(timings, load), args.write, START, END)
    if args.profile:
        onnx_variants = [v for v in variants if v not in ("hf-eager", "daemon")]
        profiles = {(v, b): spawn_profile(v, b, args.profile, reference) for b in batches for v in onnx_variants}
        print(f"\nms per window under onnxruntime's profiler ({args.profile} runs after a warm-up):")
        print(profile_tables(profiles))


def parse_args() -> argparse.Namespace:
    parser = arg_parser(__doc__)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the reference model and bundle")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per variant and batch")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before them")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--profile", type=int, default=0, metavar="RUNS", help="then profile each ONNX variant")
    parser.add_argument("--write", type=Path, help="markdown file whose bench_audio_cpu section to update")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-batch", "--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile-runs", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        run_worker(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
