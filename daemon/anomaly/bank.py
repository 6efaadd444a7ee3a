"""A bank of normal-operation feature vectors and a normalised k-nearest-neighbour anomaly score (numpy only).

The score of a window is the mean distance from its features to the k nearest bank members, divided by the bank's
own **reference distance**: the median, over the bank, of each member's leave-one-out k-NN distance (its distance to
the other members, leaving out itself and, where `fit` is told, the members made from overlapping audio). So a window
typical of normal operation scores about 1 on every machine, whatever its features' spread, and one threshold (say 2:
twice as far from normal as normal is from itself) means the same on a fan and on a pump. This is the DCASE-style
"frozen features + k-NN against normal data" anomaly detector, with the normalisation added so thresholds carry over.

Two metrics: the cosine distance between unit rows (audio embeddings, which the model compares by cosine), or, for a
bank fitted with `whiten=True` (sound features, `clapd.daemon.anomaly.features`), the Euclidean distance after
whitening by the bank's own covariance: every direction counts by how much normal operation varies along it, so a
fault that moves a feature normal operation holds steady stands out, whatever that feature's units. The covariance is
shrunk towards its own diagonal by d / (d + n) for n windows that share no audio (`shrinkage`): a bank learnt from a
few minutes has seen too little to know its small directions, and whitening by them would put every new normal
window far away, so it leans on each feature's own spread instead (measured on the test pump, 40 s of one condition:
new normal windows 1.0-1.25 by this rule, about 4 shrunk only 0.1 towards the mean variance).

The bank is subsampled (uniformly at random, seeded) to at most `max_size` members, so memory (max_size x d
float32) and time per scored window (one (m, max_size) matrix product) stay bounded whatever was learnt from.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clapd.daemon.state_files import write_atomically

FORMAT = "clapd-normal-bank-v2"
OLD_FORMATS = ("clapd-normal-bank-v1",)  # embeddings only, `bundle_sha256` for `made_with`: still read
MIN_REFERENCE = 1e-4  # a bank of (near-)identical members must not make every window "infinite"
ROW_BLOCK = 512  # rows of the leave-one-out distance matrix computed at once: 512 x max_size float32 at a time
MIN_SHRINKAGE, MAX_SHRINKAGE = 0.1, 0.95  # of the whitening covariance towards its diagonal
SHA256 = re.compile(r"[0-9a-f]{64}")


class BankError(ValueError):
    """A bank that cannot be used: unreadable, malformed, or learnt with another model bundle or other features."""


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """(n, d) float32 with L2-normalised rows; a zero row stays zero (and is far from everything)."""
    x = _checked(embeddings)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def _checked(rows: np.ndarray) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be (n, d), got shape {list(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings hold NaN or infinite values")
    return x


@dataclass(frozen=True, slots=True)
class Whitening:
    """x -> (x - mean) @ matrix, with matrix the inverse square root of normal operation's (shrunk) covariance."""

    mean: np.ndarray  # (d,) float32
    matrix: np.ndarray  # (d, d) float32

    @classmethod
    def fit(cls, x: np.ndarray, shrinkage: float) -> Whitening:
        mean = x.mean(axis=0, dtype=np.float64)
        covariance = np.cov(x - mean, rowvar=False) if x.shape[0] > 1 else np.zeros((x.shape[1],) * 2)
        covariance = np.atleast_2d(covariance)
        variances = np.diag(covariance)
        scale = max(float(variances.mean()), 1e-12)
        variances = np.maximum(variances, 1e-6 * scale)  # a feature normal operation never moved stays finite
        covariance = (1.0 - shrinkage) * covariance + shrinkage * np.diag(variances)
        values, vectors = np.linalg.eigh(covariance)
        matrix = vectors / np.sqrt(np.maximum(values, 1e-12 * scale))
        return cls(mean.astype(np.float32), matrix.astype(np.float32))

    def apply(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features have size {x.shape[1]}, the bank's have {self.mean.shape[0]}")
        return np.ascontiguousarray((x - self.mean) @ self.matrix, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class NormalBank:
    """A fitted bank: `embeddings` (n, d) float32, the members as compared (unit rows; whitened rows when
    `whitening` is set), `k`, and `reference` (the distance that scores 1: the median leave-one-out mean k-NN
    distance within the bank, at least MIN_REFERENCE)."""

    embeddings: np.ndarray
    k: int
    reference: float
    whitening: Whitening | None = None  # None: cosine distance between unit rows; else Euclidean after it

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        *,
        k: int = 1,
        max_size: int = 2000,
        seed: int = 0,
        exclude_neighbours: int = 0,
        whiten: bool = False,
    ) -> NormalBank:
        """Bank `embeddings` ((n, d), n >= k + 1), subsampled to at most `max_size` rows with `seed`; `whiten`: the
        whitened Euclidean metric (fitted on all n rows) instead of the cosine one.

        `exclude_neighbours`: for embeddings given in time order from overlapping windows, how many positions either
        side of a member share its audio; they are left out of its leave-one-out distance (an overlapping window is
        nearly a copy, and would make the reference distance, and so every score's scale, depend on the hop).
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if max_size < k + 1:
            raise ValueError(f"max_size must be at least k + 1 = {k + 1}, got {max_size}")
        raw = _checked(embeddings)
        n = raw.shape[0]
        if n < k + 1:
            raise ValueError(f"a bank needs at least k + 1 = {k + 1} embeddings, got {n}")
        whitening = Whitening.fit(raw, shrinkage(raw.shape, exclude_neighbours)) if whiten else None
        x = whitening.apply(raw) if whitening is not None else unit_rows(raw)
        positions = np.arange(n)
        if n > max_size:
            positions = np.sort(np.random.default_rng(seed).choice(n, size=max_size, replace=False))
            x = x[positions]
        reference = _reference_distance(x, positions, k, exclude_neighbours, whitening is not None)
        x.setflags(write=False)
        return cls(x, k, reference, whitening)

    def _prepared(self, embeddings: np.ndarray) -> np.ndarray:
        """Rows as the bank compares them: unit, or whitened."""
        if self.whitening is not None:
            return self.whitening.apply(_checked(embeddings))
        x = unit_rows(embeddings)
        if x.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"embeddings have size {x.shape[1]}, the bank's have {self.embeddings.shape[1]}")
        return x

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """(m, d) -> (m,) float64: the mean distance to the k nearest bank members (not normalised)."""
        distance = _pairwise(self._prepared(embeddings), self.embeddings, self.whitening is not None)
        return _mean_smallest(distance, self.k)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """(m, d) -> (m,) float64: the mean distance to the k nearest bank members divided by the bank's reference
        distance; ~1 is typical of normal operation."""
        return self.distances(embeddings) / self.reference

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])

    def admit(self, embeddings: np.ndarray, *, max_size: int, seed: int) -> NormalBank:
        """A bank with `embeddings` added (the slow drift update): while under `max_size` they are appended, beyond
        it each replaces a member chosen at random. The reference distance and the whitening are kept, so scores stay
        on the scale they were learnt on; a re-baseline (`fit`) computes them anew."""
        x = self._prepared(embeddings)
        bank = np.array(self.embeddings)
        room = max(0, max_size - bank.shape[0])
        bank = np.concatenate([bank, x[:room]])
        rest = x[room:]
        if rest.shape[0]:
            rng = np.random.default_rng(seed)
            bank[rng.choice(bank.shape[0], size=rest.shape[0], replace=False)] = rest
        bank.setflags(write=False)
        return NormalBank(bank, self.k, self.reference, self.whitening)

    def save(self, path: Path, *, made_with: str) -> None:
        """Write the bank (atomically, 0600) with what made its rows: the sha256 of the audio model for
        embeddings, `features.features_id` for sound features."""
        fields = {
            "format": np.array(FORMAT),
            "made_with": np.array(made_with),
            "embeddings": self.embeddings,
            "k": np.array(self.k, dtype=np.int64),
            "reference": np.array(self.reference, dtype=np.float64),
        }
        if self.whitening is not None:
            fields |= {"whitening_mean": self.whitening.mean, "whitening_matrix": self.whitening.matrix}
        buffer = io.BytesIO()
        np.savez(buffer, **fields)
        write_atomically(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path, *, made_with: str) -> NormalBank:
        """The bank in `path`; BankError naming the file if it is unreadable, malformed, or was made with something
        other than `made_with` (another model's embeddings, or other features, are not comparable).
        FileNotFoundError passes through."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                fields = {name: archive[name] for name in archive.files}
        except FileNotFoundError:
            raise
        except Exception as e:  # np.load raises EOFError, ValueError, OSError, BadZipFile... on a damaged file
            raise BankError(f"{path}: not a readable normal bank ({str(e) or repr(e)})") from e
        return cls._from_fields(path, fields, made_with)

    @classmethod
    def _from_fields(cls, path: Path, fields: dict[str, np.ndarray], made_with: str) -> NormalBank:
        if "format" in fields and str(fields["format"]) in OLD_FORMATS and "bundle_sha256" in fields:
            fields["made_with"] = fields.pop("bundle_sha256")
        missing = {"format", "made_with", "embeddings", "k", "reference"} - set(fields)
        if missing or str(fields["format"]) not in (FORMAT, *OLD_FORMATS):
            raise BankError(f"{path}: not a {FORMAT} file (missing {sorted(missing)})")
        _check_made_with(path, str(fields["made_with"]), made_with)
        embeddings = fields["embeddings"]
        k, reference = int(fields["k"]), float(fields["reference"])
        if embeddings.dtype != np.float32 or embeddings.ndim != 2 or embeddings.shape[0] < k + 1 or k < 1:
            raise BankError(f"{path}: malformed bank (embeddings {embeddings.dtype} {list(embeddings.shape)}, k {k})")
        if not math.isfinite(reference) or reference < MIN_REFERENCE or not np.isfinite(embeddings).all():
            raise BankError(f"{path}: malformed bank (reference distance {reference}, or non-finite embeddings)")
        whitening = _stored_whitening(path, fields, embeddings.shape[1])
        embeddings.setflags(write=False)
        return cls(embeddings, k, reference, whitening)


def shrinkage(shape: tuple[int, int], exclude_neighbours: int) -> float:
    """d / (d + n) for (n, d) rows of which every `exclude_neighbours + 1`-th shares no audio with the others: the
    covariance counts as much as a prior of d windows, within [MIN_SHRINKAGE, MAX_SHRINKAGE]."""
    n, d = shape
    independent = n / (exclude_neighbours + 1)
    return min(max(d / (d + independent), MIN_SHRINKAGE), MAX_SHRINKAGE)


def _describe(made_with: str) -> str:
    if SHA256.fullmatch(made_with):
        return f"the embeddings of the audio model with sha256 {made_with[:12]}..."
    return f"sound features ({made_with})"


def _check_made_with(path: Path, learnt_with: str, wanted: str) -> None:
    if learnt_with == wanted:
        return
    if SHA256.fullmatch(learnt_with) and SHA256.fullmatch(wanted):
        what = (
            f"another model bundle (audio model sha256 {learnt_with[:12]}..., the configured one is "
            f"{wanted[:12]}...); its embeddings are not comparable"
        )
    else:
        what = f"{_describe(learnt_with)}, the stream is configured for {_describe(wanted)}; they are not comparable"
    raise BankError(
        f"{path}: this normal bank was learnt with {what}: learn normal operation again with `clapd learn-normal` "
        "(or delete the file)"
    )


def _stored_whitening(path: Path, fields: dict[str, np.ndarray], size: int) -> Whitening | None:
    if "whitening_mean" not in fields and "whitening_matrix" not in fields:
        return None
    mean, matrix = fields.get("whitening_mean"), fields.get("whitening_matrix")
    if mean is None or matrix is None or mean.shape != (matrix.shape[0],) or matrix.shape != (mean.shape[0], size):
        raise BankError(f"{path}: malformed bank (its whitening does not fit its {size}-dimensional rows)")
    if mean.dtype != np.float32 or matrix.dtype != np.float32 or not np.isfinite(matrix).all():
        raise BankError(f"{path}: malformed bank (its whitening is not finite float32)")
    return Whitening(mean, matrix)


def _pairwise(a: np.ndarray, b: np.ndarray, euclidean: bool) -> np.ndarray:
    """(m, d), (n, d) -> (m, n): cosine distances between unit rows, or Euclidean distances.

    einsum, not BLAS: one window against a bank is small, and BLAS's threads contend with the model's (on a busy
    2-core machine a 2000 x 512 bank took 10-20 ms per window through matmul, 0.5 ms through einsum)."""
    dot = np.einsum("md,nd->mn", a, b)
    if not euclidean:
        return 1.0 - dot
    squared = np.einsum("md,md->m", a, a)[:, None] + np.einsum("nd,nd->n", b, b)[None, :] - 2.0 * dot
    return np.sqrt(np.maximum(squared, 0.0))


def _mean_smallest(distance: np.ndarray, k: int) -> np.ndarray:
    """Row-wise mean of the k smallest entries of `distance` ((m, n), n >= k) as float64."""
    nearest = np.partition(distance, k - 1, axis=1)[:, :k] if k < distance.shape[1] else distance
    return np.maximum(nearest.astype(np.float64).mean(axis=1), 0.0)


def _reference_distance(x: np.ndarray, positions: np.ndarray, k: int, exclude: int, euclidean: bool) -> float:
    """The median leave-one-out mean k-NN distance of the rows of `x` (at original `positions`), leaving out each
    row itself and rows within `exclude` positions of it; at least MIN_REFERENCE."""
    own: list[np.ndarray] = []
    for start in range(0, x.shape[0], ROW_BLOCK):
        block = slice(start, start + ROW_BLOCK)
        distance = _pairwise(x[block], x, euclidean)
        near = np.abs(positions[block, None] - positions[None, :]) <= exclude  # includes the row itself
        distance[near] = np.inf
        usable = np.isfinite(distance).sum(axis=1) >= k
        if usable.any():
            own.append(_mean_smallest(distance[usable], k))
    if not own:
        raise ValueError(
            f"no bank member has k = {k} neighbours outside its {exclude} overlapping windows: learn from more audio"
        )
    return max(float(np.median(np.concatenate(own))), MIN_REFERENCE)
