"""PyTorch encoders -> ONNX files, the fp16 variant of the audio model, and the audio model's two stages joined
and split (the int8 variants are in `clapd.export.quantize`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from onnxconverter_common import float16

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
    _align_opsets(joined)  # merge_models lists each domain once per model
    joined.graph.input[0].name = AUDIO_INPUT
    for node in joined.graph.node:
        node.input[:] = [AUDIO_INPUT if name == FRONT_END_PREFIX + AUDIO_INPUT else name for name in node.input]
    onnx.checker.check_model(joined)
    onnx.save(joined, str(out_path))


def split_stages(audio_path: Path, front_end_path: Path, embedder_path: Path) -> None:
    """The inverse of `join_stages`: an audio model's two stages as `export_audio_stages` writes them.

    For a bundle whose PyTorch weights are gone (the demo bundle): its fp32 embedder can be quantised again.
    """
    joined = onnx.load(str(audio_path))
    _align_opsets(joined)  # files joined before the duplicate domain entries were removed list "" twice
    extractor = onnx.utils.Extractor(joined)
    features = FRONT_END_PREFIX + FEATURES
    front_end = extractor.extract_model([AUDIO_INPUT], [features])
    _rename(front_end.graph, lambda name: name.removeprefix(FRONT_END_PREFIX))
    embedder = extractor.extract_model([features], [AUDIO_OUTPUT])
    _rename(embedder.graph, lambda name: FEATURES if name == features else name)
    for model, path in ((front_end, front_end_path), (embedder, embedder_path)):
        model.producer_name = joined.producer_name
        onnx.checker.check_model(model)
        onnx.save(model, str(path))


def _rename(graph: onnx.GraphProto, rename: Callable[[str], str]) -> None:
    """Every node, tensor and value name in `graph` (not in subgraphs, which the audio stages have none of)."""
    for node in graph.node:
        node.name = rename(node.name)
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        value.name = rename(value.name)


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
