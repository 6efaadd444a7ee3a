"""The audio model on one GPU: ONNX fp32 and fp16 on onnxruntime's CUDAExecutionProvider, held against PyTorch fp32;
the daemon's own provider and precision choice; per-window times beside PyTorch eager on the same GPU.

The parent builds the random-weight reference model and its fp32 + fp16 bundle (`common.reference_bundle`) and
computes PyTorch fp32 embeddings on the CPU (the reference that export verification uses). Each path then runs in a
fresh process (`--worker`), so that each has its own CUDA context and its GPU memory can be read alone. Raw results go
to `--json`; the docs section is written from them (`--write`, or later, elsewhere, with `--from-json`).

    python3 benchmarks/bench_gpu.py --json /tmp/bench_gpu.json            # needs onnxruntime-gpu and a GPU
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --size small --batches 1,2 --runs 3   # a dry run
    .venv/bin/python benchmarks/bench_gpu.py --from-json /tmp/bench_gpu.json --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from common import (
    Reference,
    arg_parser,
    machine_line,
    package_version,
    publish,
    reference_bundle,
    run_script,
    utc_date,
)

START, END = "<!-- bench_gpu:start -->", "<!-- bench_gpu:end -->"
THREADS = 2  # the daemon's default CPU threads per model call
N_RANDOM_CLIPS = 4
PARITY_BATCH = 8
MIB = 1024 * 1024
PRECISIONS = ("fp32", "fp16")  # the bundle's audio models
# Paths timed and checked. "-notf32": the CUDA EP's TF32 math (on by default) off, which the fp32 front end of both
# models needs for parity. "daemon-nopreload": the daemon as it ships, no onnxruntime.preload_dlls() and no torch
# import, so CUDA libraries are found only by the loader.
TIMED = ("onnx-fp32", "onnx-fp16", "onnx-fp32-notf32", "onnx-fp16-notf32", "torch-eager")
DAEMON = ("daemon", "daemon-nopreload")
GPU_ONLY = {"onnx-fp32-notf32", "onnx-fp16-notf32", "daemon-nopreload"}
ORDER = ("onnx-fp32", "onnx-fp16", "torch-eager", "daemon", "daemon-nopreload", "onnx-fp32-notf32", "onnx-fp16-notf32")
LABELS = {
    "onnx-fp32": "ONNX fp32",
    "onnx-fp16": "ONNX fp16",
    "onnx-fp32-notf32": "ONNX fp32, TF32 off",
    "onnx-fp16-notf32": "ONNX fp16, TF32 off",
    "torch-eager": "PyTorch eager fp32 (`AudioEncoder`)",
    "daemon": "daemon `AudioModel`",
    "daemon-nopreload": "daemon `AudioModel`, no preload",
}
# Lines of a worker's own output worth keeping: onnxruntime reports provider failures there, not through logging.
NOTICE = re.compile(r"tensorrt|nvinfer|cuda|cudnn|ep error|falling back|fail|warn|error", re.IGNORECASE)
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # onnxruntime colours its error lines

Embedder = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class BatchTiming:
    """Wall time of each timed call at one batch size, after `warmup` untimed calls."""

    batch: int
    warmup: int
    call_ms: list[float]


@dataclass(frozen=True, slots=True)
class WorkerResult:
    variant: str
    providers: list[str]  # what the session used, best first; for PyTorch, its device
    precision: str
    load_s: float  # session or model load, first call excluded
    timings: list[BatchTiming]
    embeddings: list[list[float]]  # [parity clips, embedding size]
    notes: list[str] = field(default_factory=list)  # log records at WARNING and above, and facts worth keeping
    gpu_mib: float | None = None  # nvidia-smi: this process's GPU memory after the last batch
    torch_peak_mib: float | None = None  # torch.cuda.max_memory_allocated


# ---------------------------------------------------------------- the workers (one path each, in its own process)


def preload_cuda(ort_module: object, notes: list[str]) -> None:
    """Load the CUDA and cuDNN libraries from the nvidia-* pip packages: without torch imported, the loader alone
    does not find them."""
    preload = getattr(ort_module, "preload_dlls", None)
    if preload is None:
        notes.append("onnxruntime has no preload_dlls(); relying on the loader path")
        return
    try:
        preload()
    except Exception as e:  # any failure here is a finding to record, not a reason to stop
        notes.append(f"preload_dlls() failed: {e!r}")


def cuda_session(path: Path, providers: list, notes: list[str]) -> object:
    """A session on the CUDA EP; if the preloaded libraries were not enough, once more after importing torch, whose
    import loads its own CUDA libraries process-wide."""
    import onnxruntime as ort

    from clapd.daemon.inference import session_options

    session = ort.InferenceSession(str(path), session_options(THREADS), providers=providers)
    if session.get_providers()[0] != "CUDAExecutionProvider":
        notes.append(f"CUDA EP not used after preload_dlls() (got {session.get_providers()}); retried after torch")
        import torch  # noqa: F401

        session = ort.InferenceSession(str(path), session_options(THREADS), providers=providers)
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"CUDAExecutionProvider was asked for but the session runs on {session.get_providers()}")
    return session


def onnx_worker(args: argparse.Namespace, variant: str, notes: list[str]) -> tuple[Embedder, list[str], str, float]:
    import onnxruntime as ort

    from clapd.daemon.inference import session_options

    precision = "fp16" if variant.startswith("onnx-fp16") else "fp32"
    path = Reference(args.reference).audio_file(precision)
    notes.append(f"available providers: {', '.join(ort.get_available_providers())}")
    start = time.perf_counter()
    if args.device == "cuda":
        preload_cuda(ort, notes)
        cuda_options = {"use_tf32": "0"} if variant.endswith("-notf32") else {}
        session = cuda_session(path, [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"], notes)
    else:
        session = ort.InferenceSession(str(path), session_options(THREADS), providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - start
    used = session.get_providers()
    options = session.get_provider_options().get(used[0], {})
    kept = ("use_tf32", "cudnn_conv_algo_search", "arena_extend_strategy", "enable_cuda_graph")
    notes.append(f"{used[0]} options: " + ", ".join(f"{k}={options[k]}" for k in kept if k in options))
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x})[0]), used, precision, load_s


def masks_to(encoder: object, device: str) -> int:
    """AudioEncoder freezes HTS-AT's shifted-window masks as CPU tensors; on a GPU they must follow the model.
    Returns how many were moved."""
    moved = 0
    for stage in encoder.embedder.audio_model.audio_encoder.layers:
        for block in stage.blocks:
            frozen = block.get_attn_mask
            if isinstance(frozen, functools.partial):
                block.get_attn_mask = functools.partial(frozen.func, *(a.to(device) for a in frozen.args))
                moved += 1
    return moved


def torch_worker(args: argparse.Namespace, notes: list[str]) -> tuple[Embedder, list[str], str, float]:
    import torch

    from clapd.models.checkpoints import load_checkpoint
    from clapd.models.encoders import AudioEncoder

    start = time.perf_counter()
    checkpoint = load_checkpoint(str(Reference(args.reference).model))
    encoder = AudioEncoder(checkpoint.model, checkpoint.front_end).eval().to(args.device)
    moved = masks_to(encoder, args.device)
    load_s = time.perf_counter() - start
    tf32 = f"matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32}"
    notes.append(f"{moved} frozen attention masks moved to {args.device}; torch TF32: {tf32}")
    notes.append(f"cuDNN {torch.backends.cudnn.version()}")

    def embed(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():  # numpy in, numpy out, as a session.run call: both copies are timed
            return encoder(torch.from_numpy(batch).to(args.device)).cpu().numpy()

    return embed, [args.device], "fp32", load_s


def time_batches(embed: Embedder, clips: np.ndarray, batches: list[int], runs: int, warmup: int) -> list[BatchTiming]:
    """Each batch size's call times; a batch repeats the clips as needed. The first calls pick kernels: untimed."""
    timings = []
    for batch in batches:
        inputs = np.ascontiguousarray(clips[np.arange(batch) % len(clips)])
        call_ms = []
        for run in range(warmup + runs):
            start = time.perf_counter()
            embed(inputs)
            if run >= warmup:
                call_ms.append(1000.0 * (time.perf_counter() - start))
        timings.append(BatchTiming(batch, warmup, call_ms))
    return timings


def embed_all(embed: Embedder, clips: np.ndarray) -> np.ndarray:
    return np.concatenate([embed(clips[i : i + PARITY_BATCH]) for i in range(0, len(clips), PARITY_BATCH)])


class ListHandler(logging.Handler):
    """Keeps what the code under test logs, so that its warnings come back in the results."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING or record.name.startswith("clapd"):
            self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def daemon_worker(args: argparse.Namespace, variant: str, notes: list[str]) -> tuple[Embedder, list[str], str, float]:
    """The daemon's own path: a ModelConfig, AudioModel's provider and precision choice, nothing set by hand."""
    import onnxruntime as ort

    from clapd.daemon.config import ModelConfig
    from clapd.daemon.inference import AudioModel, open_bundle

    if variant == "daemon" and args.device == "cuda":
        preload_cuda(ort, notes)
    bundle = Reference(args.reference).bundle
    config = ModelConfig(bundle=bundle, providers=args.daemon_providers.split(","))
    start = time.perf_counter()
    model = AudioModel(bundle, open_bundle(bundle), config)
    load_s = time.perf_counter() - start
    notes.append(
        f"config: providers {config.providers}, precision {config.precision!r} -> {model.precision}, "
        f"cuda_tf32 {config.cuda_tf32}"
    )
    notes.append(f"available providers: {', '.join(ort.get_available_providers())}")
    applied = model._session.get_provider_options().get("CUDAExecutionProvider")  # what onnxruntime applied
    if applied is not None:
        notes.append(f"CUDAExecutionProvider options in use (set by the daemon): use_tf32={applied.get('use_tf32')}")
    return model.embed, model.providers, model.precision, load_s


def run_worker(args: argparse.Namespace) -> None:
    handler = ListHandler()
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)  # records come back in the result, the output keeps onnxruntime's own
    notes: list[str] = []
    clips = np.load(args.work_dir / "parity_clips.npy")
    if args.worker == "torch-eager":
        embed, providers, precision, load_s = torch_worker(args, notes)
    elif args.worker in DAEMON:
        embed, providers, precision, load_s = daemon_worker(args, args.worker, notes)
    else:
        embed, providers, precision, load_s = onnx_worker(args, args.worker, notes)
    batches = [int(b) for b in args.batches.split(",")] if args.worker in TIMED else []
    timings = time_batches(embed, clips, batches, args.runs, args.warmup)
    embeddings = embed_all(embed, clips)
    result = WorkerResult(
        args.worker, providers, precision, load_s, timings, embeddings.tolist(), notes + handler.lines
    )
    result = measure_memory(result, args.device)
    args.result.write_text(json.dumps(asdict(result)))


def measure_memory(result: WorkerResult, device: str) -> WorkerResult:
    if device != "cuda":
        return result
    peak = None
    if "torch" in sys.modules:
        import torch

        peak = torch.cuda.max_memory_allocated() / MIB if torch.cuda.is_initialized() else None
    mine = None
    for row in nvidia_smi("--query-compute-apps=pid,used_memory"):
        pid, _, mib = row.partition(",")
        if pid.strip() == str(os.getpid()) and mib.strip().replace(".", "", 1).isdigit():
            mine = float(mib)  # a VM's driver may answer [N/A]: then the figure stays unknown
    return WorkerResult(**{**asdict(result), "gpu_mib": mine, "torch_peak_mib": peak})


def nvidia_smi(query: str) -> list[str]:
    """Rows of an nvidia-smi CSV query without header or units; empty where nvidia-smi is missing or fails."""
    try:
        done = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


# ---------------------------------------------------------------- the parent: assets, reference, workers, results


def parity_clips(sample_rate: int, window_samples: int, seed: int = 1) -> dict[str, np.ndarray]:
    """export/verify.py's clips plus random ones: noise at a random level over random tones, each 10 s."""
    from clapd.export.verify import verification_clips

    clips = verification_clips(sample_rate, window_samples)
    rng = np.random.default_rng(seed)
    t = np.arange(window_samples) / sample_rate  # s
    for k in range(N_RANDOM_CLIPS):
        tones = sum(rng.uniform(0.0, 0.3) * np.sin(2 * np.pi * rng.uniform(50, 12000) * t) for _ in range(3))
        noise = 10 ** rng.uniform(-3, -0.5) * rng.standard_normal(window_samples)
        clips[f"random_{k}"] = np.clip(tones + noise, -1.0, 1.0).astype(np.float32)
    return clips


def reference_embeddings(model: Path, work_dir: Path) -> list[str]:
    """PyTorch fp32 on the CPU, from a fresh load (export mutates the modules it traced); clip names in order."""
    import torch

    from clapd.models.checkpoints import load_checkpoint
    from clapd.models.encoders import AudioEncoder

    checkpoint = load_checkpoint(str(model))
    settings = checkpoint.front_end
    clips = parity_clips(settings.sample_rate, settings.window_samples)
    batch = np.stack(list(clips.values()))
    encoder = AudioEncoder(checkpoint.model, settings).eval()
    with torch.inference_mode():
        reference = np.concatenate(
            [encoder(torch.from_numpy(batch[i : i + 4])).numpy() for i in range(0, len(batch), 4)]
        )
    np.save(work_dir / "parity_clips.npy", batch)
    np.save(work_dir / "reference.npy", reference)
    return list(clips)


def spawn_worker(variant: str, args: argparse.Namespace, reference: Reference) -> dict:
    """One path in a fresh process; its result, or its error, with the lines of its output worth keeping."""
    result_path = args.work_dir / f"result_{variant}.json"
    result_path.unlink(missing_ok=True)
    options = ["--worker", variant, "--result", str(result_path), "--reference", str(reference.directory)]
    options += ["--device", args.device, "--work-dir", str(args.work_dir), "--batches", args.batches]
    options += ["--runs", str(args.runs), "--warmup", str(args.warmup), "--daemon-providers", args.daemon_providers]
    print(f"running {variant} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    run = run_script(Path(__file__).resolve(), options, timeout=args.worker_timeout)
    output = run.output + run.errors
    kept = [ANSI.sub("", line)[:600] for line in output.splitlines() if NOTICE.search(line)][:30]
    entry: dict = {"variant": variant, "wall_s": time.perf_counter() - start, "output": kept}
    if run.returncode == 0 and result_path.exists():
        entry["result"] = json.loads(result_path.read_text())
    else:
        entry["error"] = f"exit {run.returncode}: " + "\n".join(output.splitlines()[-25:])
    print(json.dumps({k: v for k, v in entry.items() if k != "result"}, indent=1)[:3000], file=sys.stderr, flush=True)
    return entry


def add_parity(entry: dict, reference: np.ndarray) -> None:
    from clapd.export.verify import compare

    if "result" not in entry:
        return
    got = np.asarray(entry["result"]["embeddings"], dtype=np.float64)
    c = compare(reference, got)
    cosines = (reference * got).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(got, axis=1))
    entry["parity"] = {**asdict(c), "cosines": cosines.tolist()}
    del entry["result"]["embeddings"]  # the figures are enough; the JSON stays small


def environment(args: argparse.Namespace) -> dict:
    import onnxruntime as ort
    import torch

    gpu = nvidia_smi("--query-gpu=name,driver_version,memory.total,memory.used")
    smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, check=False) if gpu else None
    cuda_line = re.search(r"CUDA Version:\s*([\d.]+)", smi.stdout) if smi else None
    ort_build = ort.get_build_info() if hasattr(ort, "get_build_info") else None
    return {
        "date_utc": utc_date(),
        "device": args.device,
        "gpu": gpu[0] if gpu else None,  # name, driver, total MiB, used MiB before the workers
        "driver_cuda": cuda_line.group(1) if cuda_line else None,
        "host": machine_line(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": package_version("transformers"),
        "onnxruntime": ort.__version__,
        "onnxruntime_package": getattr(ort, "package_name", None),
        "onnxruntime_cuda": getattr(ort, "cuda_version", None),
        "onnxruntime_build": ort_build,
        "onnx": package_version("onnx"),
        "numpy": np.__version__,
    }


def run_parent(args: argparse.Namespace) -> None:
    results: dict = {"env": environment(args), "size": args.size, "batches": args.batches, "runs": args.runs}
    results["warmup"], results["threads"] = args.warmup, THREADS
    assets = reference_bundle(args.size, PRECISIONS, rebuild=args.rebuild)
    results["build_s"] = assets.built_s
    results["clips"] = reference_embeddings(assets.model, args.work_dir)
    reference = np.load(args.work_dir / "reference.npy").astype(np.float64)
    normed = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    results["max_cross_cosine"] = float(np.max((normed @ normed.T)[~np.eye(len(normed), dtype=bool)]))
    variants = [v for v in ORDER if args.device == "cuda" or v not in GPU_ONLY]
    results["workers"] = {}
    for variant in variants:
        entry = spawn_worker(variant, args, assets)
        add_parity(entry, reference)
        results["workers"][variant] = entry
        if args.json:  # after every worker, so that a later failure or timeout keeps what was measured
            args.json.write_text(json.dumps(results, indent=1))
    finish(results, args)


def finish(results: dict, args: argparse.Namespace) -> None:
    publish(section(results), args.write, START, END)


# ---------------------------------------------------------------- the docs section, from the JSON alone


def label(variant: str) -> str:
    return LABELS.get(variant, variant)


def env_lines(results: dict) -> list[str]:
    env = results["env"]
    gpu = (env["gpu"] or "").split(", ")
    card = f"{gpu[0]} ({gpu[2]} MiB), driver {gpu[1]}" if len(gpu) >= 3 else "no GPU (CPU dry run)"
    built = f"built on this machine in {results['build_s']:.0f} s" if results["build_s"] >= 1 else "reused"
    build = f"built for CUDA {env['onnxruntime_cuda']}" if env["onnxruntime_cuda"] else "CPU build"
    ort = f"onnxruntime {env['onnxruntime']} ({env['onnxruntime_package']}, {build})"
    return [
        f"- date: {env['date_utc']}",
        f"- card: {card}; driver's CUDA {env['driver_cuda']}; host {env['host']}",
        f"- versions: Python {env['python']}, torch {env['torch']} (CUDA {env['torch_cuda']}), transformers "
        f"{env['transformers']}, {ort}, onnx {env['onnx']}, numpy {env['numpy']}",
        f"- model: `{results['size']}` reference size; bundle {built}; "
        f"runs per batch: {results['warmup']} warm-up + {results['runs']} timed",
    ]


def parity_table(results: dict) -> list[str]:
    from clapd.export.verify import MAX_RELATIVE_ERROR, MIN_COSINE

    rows = [
        "| path | ran on | precision | min cosine | worst clip | max abs error | error / closest-clip gap | bar |",
        "|---|---|---|---:|---|---:|---:|---|",
    ]
    for variant, entry in results["workers"].items():
        if "parity" not in entry:
            rows.append(f"| {label(variant)} | failed: see below | | | | | | |")
            continue
        result, parity = entry["result"], entry["parity"]
        precision = result["precision"]
        worst = results["clips"][int(np.argmin(parity["cosines"]))]
        bar, gap_bar = MIN_COSINE[precision], MAX_RELATIVE_ERROR[precision]
        meets = parity["min_cosine"] >= bar and parity["relative_error"] <= gap_bar
        verdict = f"{'meets' if meets else 'MISSES'} cosine >= {bar}, error / gap <= {gap_bar}"
        rows.append(
            f"| {label(variant)} | {result['providers'][0]} | {precision} | {parity['min_cosine']:.7f} | {worst} "
            f"| {parity['max_abs_error']:.2g} | {parity['relative_error']:.2g} | {verdict} |"
        )
    return rows


def call_stats(timing: dict) -> tuple[float, float]:
    """Median and p95 ms per call; a hand-added entry may hold only these two (`median_ms`, `p95_ms`)."""
    if "call_ms" in timing:
        return float(np.median(timing["call_ms"])), float(np.percentile(timing["call_ms"], 95))
    return timing["median_ms"], timing["p95_ms"]


def timing_table(results: dict) -> list[str]:
    workers = {v: e["result"] for v, e in results["workers"].items() if v in TIMED and "result" in e}
    eager = {t["batch"]: call_stats(t)[0] for t in workers.get("torch-eager", {}).get("timings", [])}
    rows = [
        "| path | batch | median ms per call | p95 ms per call | ms per window | windows/s | vs PyTorch eager |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, result in workers.items():
        for t in result["timings"]:
            median, p95 = call_stats(t)
            speedup = f"{eager[t['batch']] / median:.2f}x" if t["batch"] in eager else "-"
            rows.append(
                f"| {label(variant)} | {t['batch']} | {median:.2f} | {p95:.2f} | {median / t['batch']:.3f} "
                f"| {1000.0 * t['batch'] / median:.1f} | {speedup} |"
            )
    return rows


def memory_line(results: dict) -> str:
    parts = []
    for variant, entry in results["workers"].items():
        result = entry.get("result", {})
        if variant in TIMED and result.get("gpu_mib") is not None:
            peak = result.get("torch_peak_mib")
            extra = f" ({peak:.0f} MiB allocated by PyTorch at peak)" if peak is not None else ""
            parts.append(f"{label(variant)} {result['gpu_mib']:.0f} MiB{extra}")
    if not parts:
        return "- GPU memory: not read (no nvidia-smi, or no GPU)"
    largest = max(int(b) for b in results["batches"].split(","))
    return f"- GPU memory held by each path's process after its batch-{largest} calls (nvidia-smi): " + "; ".join(parts)


def daemon_lines(results: dict) -> list[str]:
    lines: list[str] = []
    for variant in DAEMON:
        entry = results["workers"].get(variant)
        if entry is None:
            continue
        if "result" not in entry:
            lines.append(f"- {label(variant)}: failed: {entry['error'].splitlines()[-1][:300]}")
            continue
        result = entry["result"]
        lines.append(
            f"- {label(variant)}: the session runs on {', '.join(result['providers'])}; "
            f"precision {result['precision']}; loaded in {result['load_s']:.1f} s"
        )
        lines += [f"  - {note}" for note in result["notes"]]
        fallback = fallback_lines(entry, result)
        repeated = fallback[1:] and all(line in lines for line in fallback[1:] if "EP Error" in line)
        lines += [fallback[0].replace("printed:", "printed the same as above")] if repeated else fallback
    return lines


def fallback_lines(entry: dict, result: dict) -> list[str]:
    """Whether TensorRT, asked for, was used, who said so, and what onnxruntime printed about it."""
    if "TensorrtExecutionProvider" in result["providers"]:
        return []
    warned = any(n.startswith("WARNING clapd") and "tensorrt" in n.lower() for n in result["notes"])
    who = "clapd logged a warning" if warned else "clapd logged no warning of its own (only the INFO line above)"
    printed = [ANSI.sub("", line).strip().replace("`", "'") for line in entry["output"]]
    printed = [line for line in printed if line.strip("*")][:6]
    return [f"  - TensorRT was not used; {who}; onnxruntime printed:"] + [f"    - `{line}`" for line in printed]


def tf32_lines(results: dict) -> list[str]:
    """The CUDA EP's TF32 default against use_tf32=0, per precision, where both ran."""
    lines, workers = [], results["workers"]
    for precision in PRECISIONS:
        on, off = workers.get(f"onnx-{precision}", {}), workers.get(f"onnx-{precision}-notf32", {})
        if "parity" not in on or "parity" not in off:
            continue
        times = [call_stats(e["result"]["timings"][-1])[0] for e in (on, off)]
        batch = on["result"]["timings"][-1]["batch"]
        lines.append(
            f"- {precision}: min cosine {on['parity']['min_cosine']:.7f} with the CUDA EP's default TF32 math "
            f"(`use_tf32=1`), {off['parity']['min_cosine']:.7f} with `use_tf32=0`; a batch-{batch} call "
            f"{times[0]:.1f} ms against {times[1]:.1f} ms"
        )
    return lines


def source_lines(results: dict) -> list[str]:
    return [f"- {label(v)}: {e['source']}" for v, e in results["workers"].items() if "source" in e]


def failure_lines(results: dict) -> list[str]:
    return [
        f"- {label(v)} failed: `{e['error'].splitlines()[-1][:300]}`"
        for v, e in results["workers"].items()
        if "error" in e
    ]


def section(results: dict) -> str:
    clips = results["clips"]
    lines = [
        START,
        "## Audio model on a GPU (per 10 s window)",
        "",
        "Written by `benchmarks/bench_gpu.py`: the random-weight reference model (`laion/clap-htsat-unfused` "
        f"architecture, `{results['size']}` size) exported on the measured machine as fp32 and fp16 bundles, "
        "run by onnxruntime's CUDAExecutionProvider with the daemon's session options, each path in a fresh process. "
        "A call's time is "
        "`session.run` wall time on a numpy batch, the copies to and from the GPU included; PyTorch eager is our "
        "`AudioEncoder` (front end included) on the same GPU, numpy in and out. Parity: embeddings against PyTorch "
        f"fp32 on the CPU (the reference export verification uses) over {len(clips)} clips: export/verify.py's "
        f"{len(clips) - N_RANDOM_CLIPS} and {N_RANDOM_CLIPS} random 10 s ones.",
        "",
        *env_lines(results),
        "",
        "### Parity against PyTorch fp32",
        "",
        *parity_table(results),
        "",
        f"- for scale: the largest cosine between two different clips' reference embeddings is "
        f"{results['max_cross_cosine']:.4f}",
        *tf32_lines(results),
        *source_lines(results),
        "",
        "### Time per call and per window",
        "",
        *timing_table(results),
        "",
        memory_line(results),
        "",
        "### The daemon's own path (`AudioModel` from a `ModelConfig`, providers tensorrt, cuda, cpu)",
        "",
        *daemon_lines(results),
        *failure_lines(results),
        "",
        "Not measured: TensorRT (its libraries, over 1 GB, were not on the machine, so only the fallback from it is "
        "shown), int8 on the GPU, IO binding or CUDA graphs, the text model, and the whole daemon with streams.",
        END,
    ]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = arg_parser(__doc__)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run on the CPU EP")
    parser.add_argument("--size", choices=("small", "default", "base"), default="default", help="reference size")
    parser.add_argument(
        "--work-dir", type=Path, default=Path("/tmp/clapd-bench-gpu"), help="clips, references, results"
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the reference model and bundle")
    parser.add_argument("--batches", default="1,8,64", help="comma-separated batch sizes")
    parser.add_argument("--runs", type=int, default=20, help="timed calls per path and batch")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before them")
    parser.add_argument("--daemon-providers", default="tensorrt,cuda,cpu", help="the daemon path's model.providers")
    parser.add_argument("--worker-timeout", type=float, default=240.0, help="seconds one path may take")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--from-json", type=Path, help="only render the section from an earlier --json file")
    parser.add_argument("--write", type=Path, help="markdown file whose bench_gpu section to update")
    parser.add_argument("--worker", choices=(*TIMED, *DAEMON), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        run_worker(args)
    elif args.from_json:
        finish(json.loads(args.from_json.read_text()), args)
    else:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        run_parent(args)


if __name__ == "__main__":
    main()
