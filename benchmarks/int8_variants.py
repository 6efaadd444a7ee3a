"""Static int8 audio models quantised over more operator types than the shipped one (issue 14: "quantised Softmax,
GELU and Add, or layout ops"), built from the reference bundle's fp32 file the way `clapd export` builds its int8
one, with their parity to fp32 on the verification clips.

The shipped int8 model quantises MatMul, Gemm and Conv only; everything between them runs in fp32. With more
operator types in QDQ form, onnxruntime may run them as QLinear kernels (QLinearSoftmax, QLinearAdd, QLinearMul,
QLinearConcat) or on uint8 data (Transpose, Reshape and Slice between a DequantizeLinear and a QuantizeLinear
are rewritten to move the quantised tensor), which is what the profile's fp32 remainder would need.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import Reference

from clapd.export import onnx_graphs, quantize, verify

SHIPPED = quantize.QUANTISED_OPS
LAYOUT = ("Transpose", "Reshape", "Concat", "Slice", "Pad", "Squeeze", "Unsqueeze")
VARIANTS: dict[str, tuple[str, ...]] = {
    "softmax": (*SHIPPED, "Softmax"),
    "add-mul": (*SHIPPED, "Add", "Mul"),
    "layout": (*SHIPPED, *LAYOUT),
    "all": (*SHIPPED, "Softmax", "Add", "Mul", *LAYOUT),
}


def variant_file(reference: Reference, variant: str) -> Path:
    return reference.directory / f"audio_int8_{variant}.onnx"


def build(reference: Reference, variant: str) -> Path:
    """The int8 audio model with `VARIANTS[variant]` quantised (kept beside the bundle; rebuilt when older)."""

    def quantise(front_end: Path, embedder: Path, out: Path) -> None:
        clips = list(quantize.calibration_clips(*_window(reference)).values())
        quantize.embedder_int8(front_end, embedder, out, clips, VARIANTS[variant])

    return build_embedder_variant(reference, variant_file(reference, variant), quantise)


def build_embedder_variant(reference: Reference, out: Path, quantise: Callable[[Path, Path, Path], None]) -> Path:
    """The bundle's fp32 audio model with its embedder replaced by `quantise(front_end, embedder, out)`'s, at `out`
    (kept; rebuilt when older than the fp32 file)."""
    fp32 = reference.audio_file("fp32")
    if out.is_file() and out.stat().st_mtime > fp32.stat().st_mtime:
        return out
    print(f"building {out} ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as folder:
        stages = Path(folder)
        front_end, embedder = stages / "front_end.onnx", stages / "embedder.onnx"
        onnx_graphs.split_stages(fp32, front_end, embedder)
        quantised = stages / "embedder_int8.onnx"
        quantise(front_end, embedder, quantised)
        onnx_graphs.join_stages(front_end, quantised, out)
    return out


def min_cosine(reference: Reference, path: Path) -> float:
    """Least cosine between `path`'s embeddings and the fp32 model's on the verification clips."""
    batch = np.stack(list(verify.verification_clips(*_window(reference)).values()))
    embeddings = []
    for model in (reference.audio_file("fp32"), path):
        session = verify.cpu_session(str(model))
        embeddings.append(verify.run_batched(lambda x, s=session: s.run(None, {onnx_graphs.AUDIO_INPUT: x})[0], batch))
    return verify.compare(embeddings[0], embeddings[1]).min_cosine


def _window(reference: Reference) -> tuple[int, int]:
    manifest = json.loads((reference.bundle / "manifest.json").read_text())
    return manifest["sample_rate"], manifest["window_samples"]
