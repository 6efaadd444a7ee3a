"""onnxruntime sessions built from a bundle's manifest: providers in order of preference, precision by hardware.

The daemon reads everything about the model from the manifest and checks every file's hash before loading.
"""

from __future__ import annotations

import ctypes
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from clapd.daemon.config import ModelConfig
from clapd.daemon.manifest import BundleError, Manifest, ModelFile, Precision, TensorSpec
from clapd.daemon.tokenizer import PromptTokenizer, TokenBatch

logger = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = {PROVIDER_NAMES["tensorrt"], PROVIDER_NAMES["cuda"]}


def open_bundle(directory: Path) -> Manifest:
    """The manifest of a bundle whose files are all present and unchanged."""
    manifest = Manifest.read(directory)
    manifest.check_files(directory)
    return manifest


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # at load: hardware-specific
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # ~3 % slower, idle CPU stays idle
    options.log_severity_level = 3
    return options


def choose_providers(
    config: ModelConfig, audio_input: TensorSpec | None = None
) -> list[str | tuple[str, dict[str, str]]]:
    """The configured providers this onnxruntime build has, with their options; CPU is always last resort.

    `audio_input`: the audio model's input, for TensorRT's shape profile."""
    available = set(ort.get_available_providers())
    chosen: list[str | tuple[str, dict[str, str]]] = []
    for key in config.providers:
        name = PROVIDER_NAMES[key]
        if name not in available:
            logger.warning("%s execution provider is not available in this onnxruntime build; skipping it", key)
            continue
        chosen.append(provider_entry(key, config, audio_input))
    if PROVIDER_NAMES["cpu"] not in [c if isinstance(c, str) else c[0] for c in chosen]:
        chosen.append(PROVIDER_NAMES["cpu"])
    return chosen


def provider_entry(
    key: str, config: ModelConfig, audio_input: TensorSpec | None = None
) -> str | tuple[str, dict[str, str]]:
    """A provider with the options clapd sets for it."""
    if key == "tensorrt":
        return PROVIDER_NAMES[key], _tensorrt_options(config, audio_input)
    if key == "cuda":
        # The CUDA provider runs fp32 convolutions and matmuls in TF32 by default: on an H100 that put the fp32
        # front end's output off by cosine 0.9991 (docs/benchmarks.md, bench_gpu), below the export's parity bars.
        return PROVIDER_NAMES[key], {"use_tf32": "1" if config.cuda_tf32 else "0"}
    return PROVIDER_NAMES[key]


def report_fallback(requested: list[str | tuple[str, dict[str, str]]], used: list[str]) -> str | None:
    """A warning when onnxruntime did not use the first provider asked for (it falls back silently, e.g. to
    CUDA when TensorRT's libraries are missing); None when it did."""
    first = requested[0] if isinstance(requested[0], str) else requested[0][0]
    if used and used[0] == first:
        return None
    return f"{first} was requested but onnxruntime runs the model on {', '.join(used)} (its own log says why)"


def providers_from(
    requested: list[str | tuple[str, dict[str, str]]], name: str
) -> list[str | tuple[str, dict[str, str]]]:
    """The requested providers from `name` on, with their options; empty if `name` was not requested."""
    names = [p if isinstance(p, str) else p[0] for p in requested]
    return requested[names.index(name) :] if name in names else []


def _tensorrt_options(config: ModelConfig, audio_input: TensorSpec | None) -> dict[str, str]:
    trt = config.tensorrt
    options = {"trt_fp16_enable": "1" if trt.fp16 else "0"}
    if trt.engine_cache_dir is not None:
        cache = str(trt.engine_cache_dir)
        options |= {"trt_engine_cache_enable": "1", "trt_engine_cache_path": cache}
        options |= {"trt_timing_cache_enable": "1", "trt_timing_cache_path": cache}
    if audio_input is not None:
        # One profile for every batch the daemon sends: without it TensorRT builds a new engine for each new batch
        # size it meets (minutes on a Jetson), stalling the inference loop past the systemd watchdog.
        name, samples = audio_input.name, audio_input.shape[-1]
        for which, batch in (("min", 1), ("opt", min(4, trt.max_batch)), ("max", trt.max_batch)):
            options[f"trt_profile_{which}_shapes"] = f"{name}:{batch}x{samples}"
    return options


def choose_precision(config: ModelConfig, manifest: Manifest, on_gpu: bool) -> Precision:
    """auto: fp16 on a GPU, int8 on a CPU, where the bundle has them; otherwise fp32."""
    if config.precision != "auto":
        if config.precision not in manifest.audio:
            raise BundleError(f"model.precision = {config.precision!r}: the bundle has only {sorted(manifest.audio)}")
        return config.precision
    preferred: list[Precision] = ["fp16", "fp32"] if on_gpu else ["int8", "fp32"]
    return next(p for p in [*preferred, *manifest.audio] if p in manifest.audio)


class AudioModel:
    """Waveform windows [n, window_samples] -> embeddings [n, dim], in one call where the model allows it."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, config: ModelConfig) -> None:
        providers = choose_providers(config, _first_audio_input(manifest))
        on_gpu = any((p if isinstance(p, str) else p[0]) in GPU_PROVIDERS for p in providers)
        self.precision = choose_precision(config, manifest, on_gpu)
        self.entry: ModelFile = manifest.audio[self.precision]
        self.window_samples = manifest.window_samples
        path = bundle_dir / self.entry.file
        self._session = _load(path, providers, config.threads)
        self.providers = self._session.get_providers()
        if (fallback := report_fallback(providers, self.providers)) is not None:
            logger.warning("audio model: %s", fallback)
            # onnxruntime's own fallback retries without any provider options (use_tf32=0 among them, measured on
            # an H100): load again from the provider it fell back to, with clapd's options.
            if rest := providers_from(providers, self.providers[0]):
                self._session = _load(path, rest, config.threads)
                self.providers = self._session.get_providers()
        self._input = self._session.get_inputs()[0].name
        logger.info("audio model %s on %s", self.entry.file, ", ".join(self.providers))
        on_tensorrt = self.providers[0] == PROVIDER_NAMES["tensorrt"]
        on_cpu = self.providers[0] == PROVIDER_NAMES["cpu"]
        # Windows per call: TensorRT's engine profile's limit; on the CPU `cpu_batch` (a bigger batch ran no faster
        # per window and held its activations in memory); unlimited on CUDA.
        self.max_batch = config.tensorrt.max_batch if on_tensorrt else (config.cpu_batch if on_cpu else None)
        self.parallel_calls = config.parallel_calls if on_cpu else 1
        # Helpers of the model call, like onnxruntime's own intra-op threads: they only run session.run, which is
        # safe to call at once from several threads on one session (with `threads: 1` each call runs on its own
        # thread alone).
        self._helpers = ThreadPoolExecutor(self.parallel_calls, "model-call") if self.parallel_calls > 1 else None
        self._run_options = ort.RunOptions()

    def embed(self, windows: np.ndarray) -> np.ndarray:
        """Calls of at most `max_batch` windows, `parallel_calls` of them at once; with several calls at once a
        batch is split among them even under the limit."""
        limit = self.max_batch or max(1, len(windows))
        if self._helpers is not None:
            limit = min(limit, math.ceil(len(windows) / self.parallel_calls))
        parts = [windows[i : i + limit] for i in range(0, len(windows), limit)]
        if self._helpers is None or len(parts) == 1:
            return np.concatenate([self._run(part) for part in parts])
        return np.concatenate(list(self._helpers.map(self._run, parts)))

    def cancel(self) -> None:
        """End the model calls in progress, and refuse later ones, with an error (from another thread, at stop):
        a process that exits while onnxruntime still runs a call aborts (seen with 5 s batches, exit 134)."""
        self._run_options.terminate = True

    def _run(self, windows: np.ndarray) -> np.ndarray:
        if self.entry.batch_invariant:
            return self._session.run(None, {self._input: windows}, self._run_options)[0]
        # Dynamic int8 scales span the batch: one window per call keeps each stream's score its own.
        calls = (self._session.run(None, {self._input: w[None]}, self._run_options)[0] for w in windows)
        return np.concatenate(list(calls))

    def warm_up(self) -> None:
        self.embed(np.zeros((1, self.window_samples), dtype=np.float32))


def _first_audio_input(manifest: Manifest) -> TensorSpec | None:
    """The audio models' input (every precision has the same): its name and samples per window."""
    entries = list(manifest.audio.values())
    return entries[0].inputs[0] if entries and entries[0].inputs else None


class TextModel:
    """Prompts -> embeddings [n, dim] through the bundle's tokenizer and text model, with the manifest's sentence
    encoder between them when it names one."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, config: ModelConfig) -> None:
        self._tokenizer = PromptTokenizer(
            bundle_dir / manifest.tokenizer.file,
            pad_token_id=manifest.tokenizer.pad_token_id,
            max_tokens=manifest.tokenizer.max_tokens,
        )
        # Prompts are embedded once at start-up: the CPU is enough and keeps GPU memory for the audio model.
        cpu = [PROVIDER_NAMES["cpu"]]
        self._session = _load(bundle_dir / manifest.text.file, cpu, config.threads)
        self._inputs = [i.name for i in self._session.get_inputs()]
        encoder = manifest.sentence_encoder
        self._encoder: SentenceEncoderModel | None = None
        if encoder is not None:
            self._encoder = SentenceEncoderModel(_load(encoder.path(), cpu, config.threads), encoder.output)

    def embed(self, prompts: list[str]) -> np.ndarray:
        tokens = self._tokenizer(prompts)
        if self._encoder is not None:
            return self._session.run(None, {self._inputs[0]: self._encoder.embed(tokens)})[0]
        feed = dict(zip(self._inputs, (tokens.input_ids, tokens.attention_mask), strict=True))
        return self._session.run(None, feed)[0]


class SentenceEncoderModel:
    """A BERT-style sentence encoder's ONNX graph -> one unit vector per prompt: its token vectors averaged over
    the real tokens (sentence-transformers' mean pooling), then normalised, as the encoder was trained to be used."""

    def __init__(self, session: ort.InferenceSession, output: str) -> None:
        self._session, self._output = session, output
        self._inputs = {i.name for i in session.get_inputs()}

    def embed(self, tokens: TokenBatch) -> np.ndarray:
        feed = {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask}
        if "token_type_ids" in self._inputs:  # one segment: all zeros
            feed["token_type_ids"] = np.zeros_like(tokens.input_ids)
        (hidden,) = self._session.run([self._output], feed)
        mask = tokens.attention_mask[..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)
        return (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)


class LazyTextModel:
    """The text model, loaded only when a prompt is missing from the cache and released after the batch of
    prompts: the full-size model takes about 500 MB that a running daemon has no use for."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, config: ModelConfig) -> None:
        self._args = (bundle_dir, manifest, config)
        self._model: TextModel | None = None

    def embed(self, prompts: list[str]) -> np.ndarray:
        if self._model is None:
            self._model = TextModel(*self._args)
        return self._model.embed(prompts)

    def release(self) -> bool:
        """Drop the model and give its heap back to the system; True if it was loaded."""
        loaded, self._model = self._model is not None, None
        if loaded:
            _return_freed_memory()
        return loaded


def _return_freed_memory() -> None:
    """glibc keeps freed memory in the process (the full-size text model's ~500 MB stayed resident after it was
    dropped); malloc_trim returns it. Elsewhere there is nothing to do."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _load(path: Path, providers: list, threads: int) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise BundleError(f"{path}: onnxruntime cannot load it: {e}") from e
