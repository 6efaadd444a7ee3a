"""A bank of normal-operation embeddings and a normalised k-nearest-neighbour anomaly score (numpy only).

The score of a window is the mean cosine distance from its embedding to the k nearest bank embeddings, divided by
the bank's own **reference distance**: the median, over the bank, of each member's leave-one-out k-NN distance (its
distance to the other members, leaving out itself and, where `fit` is told, the members made from overlapping audio).
So a window typical of normal operation scores about 1 on every machine, whatever its embeddings' spread, and one
threshold (say 2: twice as far from normal as normal is from itself) means the same on a fan and on a pump. This is
the DCASE-style "frozen embeddings + k-NN against normal data" anomaly detector, with the normalisation added so
thresholds carry over.

The bank is subsampled (uniformly at random, seeded) to at most `max_size` members, so memory (max_size x d
float32) and time per scored window (one (m, max_size) matrix product) stay bounded whatever was learnt from.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clapd.daemon.state_files import write_atomically

FORMAT = "clapd-normal-bank-v1"
MIN_REFERENCE = 1e-4  # cosine distance: a bank of (near-)identical embeddings must not make every window "infinite"
ROW_BLOCK = 512  # rows of the leave-one-out distance matrix computed at once: 512 x max_size float32 at a time


class BankError(ValueError):
    """A bank that cannot be used: unreadable, malformed, or learnt with another model bundle."""


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """(n, d) float32 with L2-normalised rows; a zero row stays zero (and is far from everything)."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be (n, d), got shape {list(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings hold NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


@dataclass(frozen=True, slots=True)
class NormalBank:
    """A fitted bank: `embeddings` (n, d) float32 with unit rows, `k`, and `reference` (the cosine distance that
    scores 1: the median leave-one-out mean k-NN distance within the bank, at least MIN_REFERENCE)."""

    embeddings: np.ndarray
    k: int
    reference: float

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        *,
        k: int = 1,
        max_size: int = 2000,
        seed: int = 0,
        exclude_neighbours: int = 0,
    ) -> NormalBank:
        """Bank `embeddings` ((n, d), n >= k + 1), subsampled to at most `max_size` rows with `seed`.

        `exclude_neighbours`: for embeddings given in time order from overlapping windows, how many positions either
        side of a member share its audio; they are left out of its leave-one-out distance (an overlapping window is
        nearly a copy, and would make the reference distance, and so every score's scale, depend on the hop).
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if max_size < k + 1:
            raise ValueError(f"max_size must be at least k + 1 = {k + 1}, got {max_size}")
        x = unit_rows(embeddings)
        n = x.shape[0]
        if n < k + 1:
            raise ValueError(f"a bank needs at least k + 1 = {k + 1} embeddings, got {n}")
        positions = np.arange(n)
        if n > max_size:
            positions = np.sort(np.random.default_rng(seed).choice(n, size=max_size, replace=False))
            x = x[positions]
        reference = _reference_distance(x, positions, k, exclude_neighbours)
        x.setflags(write=False)
        return cls(x, k, reference)

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """(m, d) -> (m,) float64: the mean cosine distance to the k nearest bank embeddings (not normalised)."""
        x = unit_rows(embeddings)
        if x.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"embeddings have size {x.shape[1]}, the bank's have {self.embeddings.shape[1]}")
        # einsum, not BLAS: one window against a bank is small, and BLAS's threads contend with the model's (on a
        # busy 2-core machine a 2000 x 512 bank took 10-20 ms per window through matmul, 0.5 ms through einsum)
        distance = 1.0 - np.einsum("md,nd->mn", x, self.embeddings)
        return _mean_smallest(distance, self.k)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """(m, d) -> (m,) float64: the mean cosine distance to the k nearest bank embeddings divided by the bank's
        reference distance; ~1 is typical of normal operation."""
        return self.distances(embeddings) / self.reference

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])

    def admit(self, embeddings: np.ndarray, *, max_size: int, seed: int) -> NormalBank:
        """A bank with `embeddings` added (the slow drift update): while under `max_size` they are appended, beyond
        it each replaces a member chosen at random. The reference distance is kept, so scores stay on the scale they
        were learnt on; a re-baseline (`fit`) computes it anew."""
        x = unit_rows(embeddings)
        bank = np.array(self.embeddings)
        room = max(0, max_size - bank.shape[0])
        bank = np.concatenate([bank, x[:room]])
        rest = x[room:]
        if rest.shape[0]:
            rng = np.random.default_rng(seed)
            bank[rng.choice(bank.shape[0], size=rest.shape[0], replace=False)] = rest
        bank.setflags(write=False)
        return NormalBank(bank, self.k, self.reference)

    def save(self, path: Path, *, bundle_sha256: str) -> None:
        """Write the bank (atomically, 0600) with the sha256 of the model that made its embeddings."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.array(FORMAT),
            bundle_sha256=np.array(bundle_sha256),
            embeddings=self.embeddings,
            k=np.array(self.k, dtype=np.int64),
            reference=np.array(self.reference, dtype=np.float64),
        )
        write_atomically(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path, *, bundle_sha256: str) -> NormalBank:
        """The bank in `path`; BankError naming the file if it is unreadable, malformed, or was learnt with a model
        whose sha256 is not `bundle_sha256` (another model's embeddings are not comparable). FileNotFoundError
        passes through."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                fields = {name: archive[name] for name in archive.files}
        except FileNotFoundError:
            raise
        except Exception as e:  # np.load raises EOFError, ValueError, OSError, BadZipFile... on a damaged file
            raise BankError(f"{path}: not a readable normal bank ({str(e) or repr(e)})") from e
        return cls._from_fields(path, fields, bundle_sha256)

    @classmethod
    def _from_fields(cls, path: Path, fields: dict[str, np.ndarray], bundle_sha256: str) -> NormalBank:
        missing = {"format", "bundle_sha256", "embeddings", "k", "reference"} - set(fields)
        if missing or str(fields["format"]) != FORMAT:
            raise BankError(f"{path}: not a {FORMAT} file (missing {sorted(missing)})")
        learnt_with = str(fields["bundle_sha256"])
        if learnt_with != bundle_sha256:
            raise BankError(
                f"{path}: this normal bank was learnt with another model bundle (audio model sha256 "
                f"{learnt_with[:12]}..., the configured one is {bundle_sha256[:12]}...); its embeddings are not "
                "comparable: learn normal operation again with `clapd learn-normal` (or delete the file)"
            )
        embeddings = fields["embeddings"]
        k, reference = int(fields["k"]), float(fields["reference"])
        if embeddings.dtype != np.float32 or embeddings.ndim != 2 or embeddings.shape[0] < k + 1 or k < 1:
            raise BankError(f"{path}: malformed bank (embeddings {embeddings.dtype} {list(embeddings.shape)}, k {k})")
        if not math.isfinite(reference) or reference < MIN_REFERENCE or not np.isfinite(embeddings).all():
            raise BankError(f"{path}: malformed bank (reference distance {reference}, or non-finite embeddings)")
        embeddings.setflags(write=False)
        return cls(embeddings, k, reference)


def _mean_smallest(distance: np.ndarray, k: int) -> np.ndarray:
    """Row-wise mean of the k smallest entries of `distance` ((m, n), n >= k) as float64."""
    nearest = np.partition(distance, k - 1, axis=1)[:, :k] if k < distance.shape[1] else distance
    return np.maximum(nearest.astype(np.float64).mean(axis=1), 0.0)


def _reference_distance(x: np.ndarray, positions: np.ndarray, k: int, exclude: int) -> float:
    """The median leave-one-out mean k-NN cosine distance of the rows of `x` (at original `positions`), leaving out
    each row itself and rows within `exclude` positions of it; at least MIN_REFERENCE."""
    own: list[np.ndarray] = []
    for start in range(0, x.shape[0], ROW_BLOCK):
        block = slice(start, start + ROW_BLOCK)
        distance = 1.0 - x[block] @ x.T
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
