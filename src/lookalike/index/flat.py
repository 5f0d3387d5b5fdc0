"""Exact inner-product search: one matrix product per query batch, then a partial sort."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lookalike.atomic import atomic_write
from lookalike.index.base import IndexError_, check_ids, check_k, check_vectors


class FlatIndex:
    """Brute force over all vectors; the truth every approximate index is measured against."""

    spec = "flat"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._ids = np.empty(0, np.int64)
        self._vectors = np.empty((0, dim), np.float32)

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = check_vectors(vectors, self.dim)
        ids = check_ids(ids, vectors.shape[0])
        if np.isin(ids, self._ids).any():
            raise IndexError_("some ids are already in the index")
        self._ids = np.concatenate([self._ids, ids])
        self._vectors = np.concatenate([self._vectors, vectors])

    def remove(self, ids: np.ndarray) -> None:
        keep = ~np.isin(self._ids, np.asarray(ids, np.int64))
        self._ids, self._vectors = self._ids[keep], self._vectors[keep]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = check_vectors(queries, self.dim, "queries")
        k = check_k(k)
        n, found = queries.shape[0], min(k, len(self))
        scores = np.full((n, k), -np.inf, np.float32)
        ids = np.full((n, k), -1, np.int64)
        if found == 0:
            return scores, ids
        sims = queries @ self._vectors.T
        top = np.argpartition(-sims, found - 1, axis=1)[:, :found] if found < len(self) else (
            np.broadcast_to(np.arange(len(self)), (n, len(self)))
        )
        top_scores = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        scores[:, :found] = np.take_along_axis(top_scores, order, axis=1)
        ids[:, :found] = self._ids[np.take_along_axis(top, order, axis=1)]
        return scores, ids

    def save(self, path: Path) -> None:
        """Write atomically: a crash leaves the previous file intact."""
        with atomic_write(path, "wb") as fh:
            np.savez(fh, ids=self._ids, vectors=self._vectors)

    @classmethod
    def load(cls, path: Path) -> FlatIndex:
        with np.load(path) as data:
            index = cls(int(data["vectors"].shape[1]))
            index._ids, index._vectors = data["ids"], data["vectors"]
        return index
