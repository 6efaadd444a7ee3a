"""The model bundle, how it runs, and how streams are cut into windows."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from clapd.daemon.config.base import Section


class TensorRTConfig(Section):
    """TensorRT provider settings (used only when `tensorrt` is among `model.providers` and available)."""

    fp16: bool = Field(
        False,
        description="let TensorRT pick fp16 kernels anywhere, the front end included, where the power spectrum "
        "can overflow fp16; the bundle's fp16 model already runs its encoder in fp16 with an fp32 front end",
    )
    engine_cache_dir: Path | None = Field(
        None,
        description="directory where built engines are kept and reused (a build takes minutes); "
        "default: none, build at every start",
    )
    max_batch: int = Field(
        16,
        ge=1,
        le=256,
        description="largest batch the engine is built for (one profile, 1..max_batch windows): "
        "larger batches are split, so TensorRT never rebuilds its engine while the daemon runs",
    )


class ModelConfig(Section):
    """Which model bundle to run, at which precision, on which execution providers."""

    bundle: Path | None = Field(
        None, description="bundle directory written by `clapd export`; default: the embedded demo bundle"
    )
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto",
        description="audio model precision; auto: fp16 on a GPU provider, int8 on the CPU when the bundle has it, "
        "else fp32",
    )
    providers: list[Literal["tensorrt", "cuda", "cpu"]] = Field(
        default_factory=lambda: ["tensorrt", "cuda", "cpu"],
        min_length=1,
        description="ONNX Runtime execution providers in order of preference; unavailable ones are skipped",
    )
    tensorrt: TensorRTConfig = Field(default_factory=TensorRTConfig, description="TensorRT provider settings")
    cuda_tf32: bool = Field(
        False,
        description="let the CUDA provider use TF32 for fp32 math: faster fp32 on Ampere and newer, but it moves "
        "embeddings off the reference (cosine 0.999 on an H100); the fp16 model gains nothing from it",
    )
    threads: int = Field(
        1,
        ge=1,
        le=64,
        description="CPU threads one model call may use (intra-op threads); see parallel_calls for the other way "
        "to use more cores",
    )
    parallel_calls: int = Field(
        2,
        ge=1,
        le=16,
        description="model calls run at once on the CPU, each with `threads` threads, on one session (no second "
        "copy of the weights): a batch of windows is split among them. On 2 cores, 2 calls of 1 thread embedded "
        "1.6x the windows per second of 1 call of 2 threads (docs/benchmarks.md, bench_cpu_settings); a lone window "
        "takes longer on 1 thread (about 120 against 90 ms at full size). Set threads x parallel_calls to the cores "
        "the daemon may use. Ignored on a GPU provider",
    )
    cpu_batch: int = Field(
        1,
        ge=1,
        le=256,
        description="most windows in one model call on the CPU: on 2 cores a batch of 4 was no faster per window "
        "than 1, and its activations added about 150 MB at full size (bench_cpu_settings)",
    )


class WindowConfig(Section):
    """How each stream is cut into windows for the audio model; checked against the model's limits at load."""

    window_seconds: float = Field(
        10.0,
        ge=1.0,
        le=10.0,
        description="seconds of audio per model call; a window shorter than the model's input is repeat-padded; "
        "must lie within the bundle's window limits (its manifest's min_window_samples and window_samples)",
    )
    hop_seconds: float = Field(
        1.0, ge=0.1, le=10.0, description="seconds between the starts of two windows; at most window_seconds"
    )

    @model_validator(mode="after")
    def _hop_within_window(self) -> WindowConfig:
        if self.hop_seconds > self.window_seconds:
            raise ValueError("hop_seconds must not exceed window_seconds (audio would be skipped)")
        return self
