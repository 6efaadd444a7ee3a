"""Static int8 for the audio embedder: activation ranges calibrated once at export, on clips export generates.

Dynamic int8 picks each activation's scale from the batch it is running, so one window's embedding depends on the
other windows in its batch. Static int8 fixes every scale at export: a window gives the same embedding alone or
in any batch, and the daemon can batch int8 windows like fp32 ones.

Only the embedder is quantised (int8 weights turn the front end's DFT basis and mel bank into noise: cosine 0.43);
the fp32 front end runs first, here to turn calibration clips into the embedder's input and in the bundle in front
of the int8 embedder.

Calibration runs onnxruntime's MinMax calibrator over every clip at once: it keeps only each tensor's min and max.
Its `CalibMaxIntermediateOutputs` option would drop data (onnxruntime 1.32 clears the collected outputs without
merging their ranges), so it is not used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from clapd.daemon.windows import repeat_pad
from clapd.export import onnx_graphs, verify
from clapd.models import synthetic

CALIBRATION_SEED = 1  # the verification clips use seed 0
NOISE_LEVELS_DBFS = tuple(range(-60, 1, 10))  # RMS of the white and coloured noise clips: -60 ... 0 dBFS
SHORT_SECONDS = (1.0, 2.5)  # s: short sounds, repeat-padded as the daemon pads its shortest windows
GAIN_DBFS = (-40.0, -20.0, -6.0)  # peak of the generated sounds mixed over a background
# Generated sounds that need no external tool: espeak-ng's speech would make the int8 model depend on whether the
# exporting machine has it (the verification clips hold a speech-like voice instead).
SOUND_CLASSES = tuple(name for name in synthetic.CLASSES if name != "speech")
QUANTISED_OPS = ("MatMul", "Gemm", "Conv")  # where the time is; the rest stays fp32 between them
FLOAT_OUTPUT_OPS = ("MatMul", "Gemm")  # quantised inputs, fp32 outputs


def calibration_clips(sample_rate: int, window_samples: int, seed: int = CALIBRATION_SEED) -> dict[str, np.ndarray]:
    """The verification clips and generated audio spanning the levels a microphone gives, [window_samples] each.

    Generated sounds are made at `synthetic.SAMPLE_RATE` for `window_samples` samples: for a model at another
    rate their pitch shifts, which calibration can live with.
    """
    rng = np.random.default_rng(seed)
    seconds = window_samples / synthetic.SAMPLE_RATE
    clips = dict(verify.verification_clips(sample_rate, window_samples))
    for level in NOISE_LEVELS_DBFS:
        clips[f"white_noise_{level}dBFS"] = _at_rms(rng.standard_normal(window_samples), level)
        clips[f"coloured_noise_{level}dBFS"] = _at_rms(synthetic.colored_noise(rng, seconds), level)
    for k, name in enumerate(SOUND_CLASSES):
        gain = GAIN_DBFS[k % len(GAIN_DBFS)]
        clip = synthetic.make_clip(rng, name, seconds)
        clips[f"{name}_mixed"] = synthetic.mix(clip.audio[:0], clip.audio, 0.0, gain)
        short = synthetic.CLASSES[name].make(rng, SHORT_SECONDS[k % len(SHORT_SECONDS)])
        clips[f"{name}_short_repeat_padded"] = repeat_pad(short, window_samples)
    for name in ("room_tone", "babble"):
        clips[f"{name}_quiet"] = _at_rms(synthetic.BACKGROUNDS[name](rng, seconds), -50.0)
    return {name: _fit(clip, window_samples) for name, clip in clips.items()}


def _at_rms(x: np.ndarray, dbfs: float) -> np.ndarray:
    rms = math.sqrt(float(np.mean(np.square(x, dtype=np.float64)))) or 1.0
    return np.clip(x * (10 ** (dbfs / 20) / rms), -1.0, 1.0)


def _fit(clip: np.ndarray, window_samples: int) -> np.ndarray:
    clip = np.asarray(clip, dtype=np.float32)[:window_samples]
    return np.pad(clip, (0, window_samples - len(clip)))


class FeatureReader(CalibrationDataReader):
    """Feeds the embedder the fp32 front end's output for each calibration clip, one clip per call."""

    def __init__(self, front_end: ort.InferenceSession, clips: list[np.ndarray], input_name: str) -> None:
        self._front_end = front_end
        self._clips = iter(clips)
        self._count = len(clips)
        self._input = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        clip = next(self._clips, None)
        if clip is None:
            return None
        waveform = clip[None].astype(np.float32)
        features = self._front_end.run(None, {self._front_end.get_inputs()[0].name: waveform})[0]
        return {self._input: features}

    def __len__(self) -> int:
        return self._count


def embedder_int8(
    front_end_path: Path,
    fp32_path: Path,
    out_path: Path,
    clips: list[np.ndarray],
    ops: tuple[str, ...] = QUANTISED_OPS,
) -> None:
    """Static int8 (QDQ) of the embedder at `fp32_path`, calibrated on `clips` (waveforms [window_samples] that
    the front end at `front_end_path` turns into the embedder's input).

    Per-channel int8 weights; uint8 activations whose ranges are the min and max seen in calibration. Every
    MatMul is quantised, the attention's two activation-by-activation products included, but a MatMul's output
    is not quantised again: onnxruntime then runs the projections as MatMulIntegerToFloat (int8 in, fp32 out),
    which drops a QuantizeLinear/DequantizeLinear pair per projection. On a 2-core Xeon with AVX-512 VNNI this
    is 10-12 % faster than re-quantised outputs and closer to fp32; see docs/benchmarks.md. `ops`: the operator
    types quantised (benchmarks try others).
    """
    front_end = verify.cpu_session(str(front_end_path))
    with _quiet_root_logger():
        quantize_static(
            str(fp32_path),
            str(out_path),
            FeatureReader(front_end, clips, onnx_graphs.FEATURES),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(ops),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"OpTypesToExcludeOutputQuantization": list(FLOAT_OUTPUT_OPS)},
        )


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The quantiser warns on the root logger about every tensor it skips and suggests pre-processing."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def embedder_int8_dynamic(fp32_path: Path, out_path: Path) -> None:
    """Dynamic int8 of the embedder (signed weights, which VNNI needs), as bundles had it before static int8:
    activation scales computed per call over the whole batch. Kept for benchmarks to compare against.

    Per-tensor weight scales: on HTSAT-tiny they hold cosine 0.9996 to fp32 where per-channel ones gave 0.9986.
    """
    with _quiet_root_logger():
        quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8, per_channel=False)
