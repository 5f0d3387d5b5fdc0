"""The one interface every index family implements, and the checks they share.

Result convention (as faiss): `(scores, ids)`, each `(n_queries, k)`, best first, higher
score = more similar whatever the metric, rows padded with `-inf` / `-1` when an approximate
structure finds fewer than `k` live vectors. Metrics: `cosine` (vectors normalised on the way
in, score = cosine), `ip` (raw inner product), `l2` (score = minus the Euclidean distance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from lookalike.errors import LookalikeError


class IndexError_(LookalikeError):
    """Bad vectors, ids or search arguments for an index."""


IndexMetric = Literal["cosine", "ip", "l2"]
INDEX_METRICS: tuple[str, ...] = ("cosine", "ip", "l2")


class VectorIndex(Protocol):
    dim: int
    metric: IndexMetric

    @property
    def spec(self) -> str: ...
    @property
    def ids(self) -> np.ndarray: ...
    def __len__(self) -> int: ...
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, ids: np.ndarray) -> None: ...
    def search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               **params: Any) -> tuple[np.ndarray, np.ndarray]: ...
    def save(self, path: Path, *, meta: dict[str, Any] | None = None) -> None: ...
    def damage(self, path: Path) -> str | None: ...
    @property
    def dead_ids(self) -> np.ndarray: ...
    def live(self) -> tuple[np.ndarray, np.ndarray]: ...
    def vectors_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def warm(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...


def check_metric(metric: str) -> IndexMetric:
    if metric not in INDEX_METRICS:
        raise IndexError_(f"metric must be one of {', '.join(INDEX_METRICS)}, got {metric!r}")
    return metric  # type: ignore[return-value]


def normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def check_vectors(vectors: np.ndarray, dim: int, what: str = "vectors") -> np.ndarray:
    """Float32 `(n, dim)`, finite, C-contiguous."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise IndexError_(f"{what} must have shape (n, {dim}), got {np.shape(vectors)}")
    if not np.isfinite(arr).all():
        raise IndexError_(f"{what} contain NaN or infinite values")
    return np.ascontiguousarray(arr)


def check_ids(ids: np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if arr.shape[0] != n:
        raise IndexError_(f"got {arr.shape[0]} ids for {n} vectors")
    if np.unique(arr).shape[0] != n:
        raise IndexError_("ids must be unique")
    return arr


def check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or k <= 0:
        raise IndexError_(f"k must be a positive integer, got {k!r}")
    return int(k)
