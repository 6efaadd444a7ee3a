"""PyTorch encoders -> ONNX files, and the fp16 and int8 variants of the audio model."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from onnxconverter_common import float16
from onnxruntime.quantization import QuantType, quantize_dynamic

from clapd.models.encoders import AudioEncoder, TextEncoder

OPSET = 17  # the legacy TorchScript exporter: ~4 s for HTSAT-tiny, against ~25 s for dynamo at opset 18
AUDIO_INPUT, AUDIO_OUTPUT = "waveform", "embedding"
FEATURES = "log_mel"  # the tensor between the fp32 front end and the embedder
TEXT_INPUTS, TEXT_OUTPUT = ("input_ids", "attention_mask"), "embedding"
FRONT_END_PREFIX = "front_end/"


def _export(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, *, fold: bool = True, **names: object
) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-derived Python ints, which are constant
        torch.onnx.export(module, args, str(path), opset_version=OPSET, dynamo=False, do_constant_folding=fold, **names)


def export_audio_stages(encoder: AudioEncoder, front_end_path: Path, embedder_path: Path) -> None:
    """The two halves of the audio model, each with a dynamic batch axis.

    The front end is exported without constant folding: folded, its in-graph DFT basis (`LogMelFrontEnd`) would
    come back as a 4.9 MB int64 index initializer. onnxruntime folds it at session load instead.

    Export mutates HTS-AT modules (window sizes become tensors): compute PyTorch references before this.
    """
    batch = {0: "batch"}
    waveform = torch.zeros(1, encoder.features.front_end.settings.window_samples)
    _export(
        encoder.features,
        (waveform,),
        front_end_path,
        fold=False,
        input_names=[AUDIO_INPUT],
        output_names=[FEATURES],
        dynamic_axes={AUDIO_INPUT: batch, FEATURES: batch},
    )
    log_mel = torch.zeros(1, 1, encoder.spec_frames, encoder.n_mels)
    _export(
        encoder.embedder,
        (log_mel,),
        embedder_path,
        input_names=[FEATURES],
        output_names=[AUDIO_OUTPUT],
        dynamic_axes={FEATURES: batch, AUDIO_OUTPUT: batch},
    )


def join_stages(front_end_path: Path, embedder_path: Path, out_path: Path) -> None:
    """One audio model: the fp32 front end feeding an embedder of any precision."""
    front_end = onnx.compose.add_prefix(onnx.load(str(front_end_path)), FRONT_END_PREFIX)
    embedder = onnx.load(str(embedder_path))
    _align_opsets(front_end, embedder)
    joined = onnx.compose.merge_models(
        front_end, embedder, io_map=[(FRONT_END_PREFIX + FEATURES, FEATURES)], doc_string="clapd audio model"
    )
    joined.graph.input[0].name = AUDIO_INPUT
    for node in joined.graph.node:
        node.input[:] = [AUDIO_INPUT if name == FRONT_END_PREFIX + AUDIO_INPUT else name for name in node.input]
    onnx.checker.check_model(joined)
    onnx.save(joined, str(out_path))


def _align_opsets(*models: onnx.ModelProto) -> None:
    """merge_models needs identical opset imports; quantisation adds the com.microsoft domain to one side."""
    domains: dict[str, int] = {}
    for model in models:
        for opset in model.opset_import:
            domains[opset.domain] = max(domains.get(opset.domain, 0), opset.version)
    ir_version = max(model.ir_version for model in models)
    for model in models:
        del model.opset_import[:]
        model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(domains.items()))
        model.ir_version = ir_version


def export_text(encoder: TextEncoder, path: Path) -> None:
    """fp32 text model with dynamic batch and token axes."""
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]], dtype=torch.int64)
    mask = (ids != 1).to(torch.int64)
    axes = {0: "batch", 1: "tokens"}
    _export(
        encoder,
        (ids, mask),
        path,
        input_names=list(TEXT_INPUTS),
        output_names=[TEXT_OUTPUT],
        dynamic_axes={TEXT_INPUTS[0]: axes, TEXT_INPUTS[1]: axes, TEXT_OUTPUT: {0: "batch"}},
    )


def embedder_fp16(fp32_path: Path, out_path: Path) -> None:
    """The whole embedder in fp16 with fp32 input and output (the converter inserts the boundary casts).

    Only the embedder: the power spectrum overflows fp16 (a full-scale sine reaches 65536) and the converter
    would raise the 1e-10 floor to 1e-7, so the front end stays fp32 and is joined on afterwards.
    """
    model = onnx.load(str(fp32_path))
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(out_path))


def embedder_int8(fp32_path: Path, out_path: Path) -> None:
    """Dynamic int8 quantisation of the embedder (signed weights, which VNNI needs).

    Per-tensor weight scales: on HTSAT-tiny they hold cosine 0.9996 to fp32 where per-channel ones gave 0.9986.

    Only the embedder: int8 weights turn the front end's DFT basis and mel bank into noise (cosine 0.43).
    """
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser warns on the root logger about every integer tensor it skips
    try:
        quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8, per_channel=False)
    finally:
        root.setLevel(level)
