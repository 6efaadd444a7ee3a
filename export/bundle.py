"""`clapd export`: checkpoint -> verified ONNX bundle, written whole or not at all.

Everything is built in a staging folder beside the target; only when every file has passed verification is the
manifest written and the folder moved into place.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from clapd import __version__
from clapd.daemon.manifest import (
    FrontEnd,
    Manifest,
    ModelFile,
    Parity,
    Precision,
    TensorSpec,
    TokenizerFile,
    sha256_file,
)
from clapd.daemon.tokenizer import PromptTokenizer
from clapd.export import onnx_graphs, quantize, verify
from clapd.models.checkpoints import LoadedCheckpoint, load_checkpoint
from clapd.models.encoders import AudioEncoder, TextEncoder

logger = logging.getLogger(__name__)

PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")
MIN_WINDOW_SECONDS = 1
TOKENIZER_FILE = "tokenizer.json"
TEXT_FILE = "text_fp32.onnx"


def audio_file_name(precision: Precision) -> str:
    return f"audio_{precision}.onnx"


@dataclass(frozen=True, slots=True)
class ExportRequest:
    source: str
    out_dir: Path
    precisions: tuple[Precision, ...] = PRECISIONS
    tokenizer: str | None = None
    trust_pickle: bool = False
    overwrite: bool = False
    progress: bool = True
    notes: tuple[str, ...] = ()  # added to the manifest's notes, after the checkpoint's own


def export_bundle(request: ExportRequest) -> Manifest:
    """Load, export, verify and write; raises `CheckpointError` or `VerificationError` with nothing written."""
    if request.out_dir.exists() and any(request.out_dir.iterdir()) and not request.overwrite:
        raise FileExistsError(f"{request.out_dir}: exists and is not empty (pass --overwrite to replace it)")
    steps = 4 + len(request.precisions)
    with (
        tqdm(total=steps, disable=not request.progress, unit="step") as bar,
        _staging(request.out_dir) as staging,
    ):
        bar.set_description("loading checkpoint")
        checkpoint = load_checkpoint(request.source, tokenizer=request.tokenizer, trust_pickle=request.trust_pickle)
        bar.update()
        audio = _export_audio(checkpoint, staging, request.precisions, bar)
        bar.set_description("text model")
        text, tokenizer = _export_text(checkpoint, staging)
        bar.update()
        manifest = _manifest(checkpoint, audio, text, tokenizer, request.notes)
        manifest.write(staging)
        bar.set_description("bundle written")
        bar.update()
        _move_into_place(staging, request.out_dir)
    return manifest


@contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would make the bundle unreadable to the daemon's own user
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        retired = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        out_dir.rename(retired)
        staging.rename(out_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(out_dir)


def _export_audio(
    checkpoint: LoadedCheckpoint, staging: Path, precisions: tuple[Precision, ...], bar: tqdm
) -> dict[Precision, ModelFile]:
    settings = checkpoint.front_end
    clips = verify.verification_clips(settings.sample_rate, settings.window_samples)
    batch = np.stack(list(clips.values()))
    encoder = AudioEncoder(checkpoint.model, settings).eval()
    with torch.no_grad():  # the reference first: export mutates HTS-AT's modules
        reference = verify.run_batched(lambda x: encoder(torch.from_numpy(x)).numpy(), batch)
    bar.set_description("exporting audio fp32")
    stages = staging / "stages"
    stages.mkdir()
    front_end, embedder = stages / "front_end.onnx", stages / "embedder_fp32.onnx"
    onnx_graphs.export_audio_stages(encoder, front_end, embedder)
    bar.update()
    files: dict[Precision, ModelFile] = {}
    for precision in sorted(precisions, key=PRECISIONS.index):
        bar.set_description(f"audio {precision}: building and verifying")
        precise_embedder = embedder
        if precision != "fp32":
            precise_embedder = stages / f"embedder_{precision}.onnx"
            window = (settings.sample_rate, settings.window_samples)
            _embedder_variant(precision, front_end, embedder, precise_embedder, window)
        path = staging / audio_file_name(precision)
        onnx_graphs.join_stages(front_end, precise_embedder, path)
        files[precision] = _verified_audio(path, precision, batch, reference, settings.window_samples)
        bar.update()
    shutil.rmtree(stages)
    return files


def _embedder_variant(
    precision: Precision, front_end: Path, fp32_embedder: Path, out: Path, window: tuple[int, int]
) -> None:
    """fp16 by conversion; int8 static, calibrated on clips the front end turns into the embedder's input.

    `window`: (sample rate in Hz, samples per window) of the calibration clips.
    """
    if precision == "fp16":
        onnx_graphs.embedder_fp16(fp32_embedder, out)
    else:
        clips = quantize.calibration_clips(*window)
        quantize.embedder_int8(front_end, fp32_embedder, out, list(clips.values()))


def _verified_audio(
    path: Path, precision: Precision, batch: np.ndarray, reference: np.ndarray, window_samples: int
) -> ModelFile:
    session = verify.cpu_session(str(path))

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {onnx_graphs.AUDIO_INPUT: x})[0]

    embeddings = verify.run_batched(run, batch)
    parity = verify.check(path.name, precision, verify.compare(reference, embeddings), len(batch))
    alone = verify.run_batched(run, batch, batch=1)
    batch_invariant = bool(np.abs(alone - embeddings).max() < verify.BATCH_INVARIANCE_TOLERANCE)
    logger.info(
        "%s: min cosine %.8f, max abs %.2g, relative %.2g",
        path.name,
        parity.min_cosine,
        parity.max_abs_error,
        parity.relative_error,
    )
    dim = reference.shape[1]
    model_file = _model_file(
        path,
        precision,
        parity,
        inputs=[TensorSpec(name=onnx_graphs.AUDIO_INPUT, dtype="float32", shape=["batch", window_samples])],
        outputs=[TensorSpec(name=onnx_graphs.AUDIO_OUTPUT, dtype="float32", shape=["batch", dim])],
    )
    return model_file.model_copy(update={"batch_invariant": batch_invariant})


def _model_file(
    path: Path, precision: Precision, parity: Parity, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> ModelFile:
    return ModelFile(
        file=path.name,
        sha256=sha256_file(path),
        precision=precision,
        opset=onnx_graphs.OPSET,
        inputs=inputs,
        outputs=outputs,
        parity=parity,
    )


def _export_text(checkpoint: LoadedCheckpoint, staging: Path) -> tuple[ModelFile, TokenizerFile]:
    """The text model, checked through the daemon's own tokenizer path against PyTorch on HF's token ids."""
    tokenizer_file = _write_tokenizer(checkpoint, staging)
    prompts = list(verify.VERIFICATION_PROMPTS)
    tokens = PromptTokenizer(
        staging / TOKENIZER_FILE,
        pad_token_id=tokenizer_file.pad_token_id,
        max_tokens=tokenizer_file.max_tokens,
    )(prompts)
    expected = checkpoint.tokenizer(prompts, padding=True, return_tensors="np")
    if not np.array_equal(tokens.input_ids, expected["input_ids"]):
        raise verify.VerificationError("tokenizer.json gives other token ids than the checkpoint's tokenizer")
    encoder = TextEncoder(checkpoint.model).eval()
    with torch.no_grad():
        reference = encoder(torch.from_numpy(tokens.input_ids), torch.from_numpy(tokens.attention_mask)).numpy()
    path = staging / TEXT_FILE
    onnx_graphs.export_text(encoder, path)
    session = verify.cpu_session(str(path))
    names = onnx_graphs.TEXT_INPUTS
    embeddings = session.run(None, {names[0]: tokens.input_ids, names[1]: tokens.attention_mask})[0]
    parity = verify.check(path.name, "fp32", verify.compare(reference, embeddings), len(prompts))
    token_axes: list[int | str] = ["batch", "tokens"]
    model_file = _model_file(
        path,
        "fp32",
        parity,
        inputs=[TensorSpec(name=name, dtype="int64", shape=token_axes) for name in names],
        outputs=[TensorSpec(name=onnx_graphs.TEXT_OUTPUT, dtype="float32", shape=["batch", reference.shape[1]])],
    )
    return model_file, tokenizer_file


def _write_tokenizer(checkpoint: LoadedCheckpoint, staging: Path) -> TokenizerFile:
    tokenizer = checkpoint.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise verify.VerificationError("the checkpoint's tokenizer has no tokenizers-library form to ship")
    path = staging / TOKENIZER_FILE
    backend.save(str(path))
    text_config = checkpoint.model.config.text_config
    # RoBERTa positions start after the padding index: the longest usable sequence is 2 shorter than the table.
    max_tokens = min(int(tokenizer.model_max_length), text_config.max_position_embeddings - 2)
    return TokenizerFile(
        file=path.name,
        sha256=sha256_file(path),
        pad_token_id=int(tokenizer.pad_token_id),
        max_tokens=max_tokens,
    )


def _manifest(
    checkpoint: LoadedCheckpoint,
    audio: dict[Precision, ModelFile],
    text: ModelFile,
    tokenizer: TokenizerFile,
    notes: tuple[str, ...] = (),
) -> Manifest:
    model = checkpoint.model
    settings = checkpoint.front_end
    audio_config = model.config.audio_config
    return Manifest(
        clapd_version=__version__,
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=checkpoint.source,
        revision=checkpoint.revision,
        source_was_fused=checkpoint.source_was_fused,
        notes=[*checkpoint.notes, *notes],
        sample_rate=settings.sample_rate,
        window_samples=settings.window_samples,
        min_window_samples=MIN_WINDOW_SECONDS * settings.sample_rate,
        embedding_size=int(model.config.projection_dim),
        logit_scale=math.exp(model.logit_scale_a.item()),
        logit_scale_text=math.exp(model.logit_scale_t.item()),
        front_end=FrontEnd(
            **{k: v for k, v in settings.to_dict().items() if k not in ("sample_rate", "window_samples")}
        ),
        audio=audio,
        text=text,
        tokenizer=tokenizer,
        architecture={
            "audio": "HTSAT",
            "audio_width": int(audio_config.patch_embeds_hidden_size),
            "audio_depths": list(audio_config.depths),
            "text": "RoBERTa",
            "text_width": int(model.config.text_config.hidden_size),
            "text_layers": int(model.config.text_config.num_hidden_layers),
        },
    )


def requantize_int8(bundle_dir: Path, notes: tuple[str, ...] = ()) -> Manifest:
    """Rebuild a bundle's int8 audio model from its fp32 one, for a bundle whose PyTorch weights are gone.

    The fp32 file is split back into its two stages and the embedder quantised as `clapd export` does; the
    result is verified against the fp32 file (itself verified against PyTorch at export) on the verification
    clips. Only `audio_int8.onnx` and the manifest change; a model below its bar raises with nothing changed.
    """
    manifest = Manifest.read(bundle_dir)
    manifest.check_files(bundle_dir)
    if "fp32" not in manifest.audio:
        raise verify.VerificationError(f"{bundle_dir}: no fp32 audio model to quantise")
    fp32_path = bundle_dir / manifest.audio["fp32"].file
    window = (manifest.sample_rate, manifest.window_samples)
    batch = np.stack(list(verify.verification_clips(*window).values()))
    fp32 = verify.cpu_session(str(fp32_path))
    reference = verify.run_batched(lambda x: fp32.run(None, {onnx_graphs.AUDIO_INPUT: x})[0], batch)
    with _staging(bundle_dir) as staging:
        front_end, embedder = staging / "front_end.onnx", staging / "embedder_fp32.onnx"
        onnx_graphs.split_stages(fp32_path, front_end, embedder)
        quantised = staging / "embedder_int8.onnx"
        _embedder_variant("int8", front_end, embedder, quantised, window)
        path = staging / audio_file_name("int8")
        onnx_graphs.join_stages(front_end, quantised, path)
        entry = _verified_audio(path, "int8", batch, reference, manifest.window_samples)
        shutil.move(path, bundle_dir / entry.file)
    audio = {**manifest.audio, "int8": entry}
    new_notes = [note for note in notes if note not in manifest.notes]
    updated = manifest.model_copy(update={"audio": audio, "notes": [*manifest.notes, *new_notes]})
    updated.write(bundle_dir)
    return updated
