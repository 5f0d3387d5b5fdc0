"""`auto`: choose the family and its parameters by measuring them on the index's own vectors.

Held-out vectors serve as queries, exact search gives the truth. Each candidate (flat, HNSW,
IVF, IVF-PQ) is built on a sample and its search parameter raised until recall@k reaches the
target; among those within the latency and memory budgets the fastest wins. The choice and
its measured operating point are stored with the index. As vectors are added the choice is
measured again each time the index has doubled, so a collection that grows from thousands to
millions moves from exact search to an approximate one by itself.

    auto:recall=0.95,k=10,latency_ms=2,memory_mb=500
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.index.base import IndexError_, IndexMetric
from lookalike.index.flat import FlatIndex
from lookalike.index.spec import IndexSpec, Number, parse_spec
from lookalike.index.stored import StoredIndex

MIN_TUNE = 2_000  # below this many vectors exact search is chosen without measuring
TUNE_SAMPLE = 50_000  # vectors the candidates are built on while measuring
TUNE_QUERIES = 200


def _candidates(n: int, sample: int, dim: int) -> list[tuple[str, str, list[int]]]:
    """(spec, search option, values to sweep) to try for `n` vectors, measured on `sample`
    of them."""
    nlist = 2 ** max(4, round(math.log2(math.sqrt(n))))
    sweep = [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256) if v <= nlist]
    out = [("flat", "", [0]), ("hnsw32", "ef", [16, 32, 64, 128, 256, 512])]
    if sample >= 39 * nlist:
        out.append((f"ivf{nlist}", "nprobe", sweep))
        m = next((m for m in (dim // 4, dim // 8, dim // 2) if m and dim % m == 0), 0)
        if m:
            out.append((f"ivf{nlist},pq{m}:rerank=200", "nprobe", sweep))
    return out


def tune(ids: np.ndarray, vectors: np.ndarray, metric: IndexMetric, *, recall: float = 0.95,
         k: int = 10, latency_ms: float = 0, memory_mb: float = 0, seed: int = 0
         ) -> dict[str, Any]:
    """Measure the candidates; return the chosen spec (with its search option set) and the
    operating points measured (recall, ms per query, bytes per vector)."""
    rng = np.random.default_rng(seed)
    n = vectors.shape[0]
    held = rng.choice(n, min(TUNE_QUERIES, n // 10), replace=False)
    rest = np.setdiff1d(np.arange(n), held)
    base = rest if rest.shape[0] <= TUNE_SAMPLE else np.sort(rng.choice(rest, TUNE_SAMPLE,
                                                                        replace=False))
    queries = np.asarray(vectors[held], np.float32)
    k = min(k, base.shape[0])
    truth_index = FlatIndex(vectors.shape[1], metric)
    truth_index.add(ids[base], vectors[base])
    _, truth = truth_index.search(queries, k)
    points: list[dict[str, Any]] = []
    for spec, option, values in _candidates(n, base.shape[0], vectors.shape[1]):
        index = _create(spec, vectors.shape[1], metric)
        index.add(ids[base], vectors[base])
        scale = n / base.shape[0]  # memory grows with the full index
        for value in values:
            params: dict[str, Any] = {option: value} if option else {}
            start = time.perf_counter()
            _, found = index.search(queries, k, **params)
            ms = (time.perf_counter() - start) * 1000 / queries.shape[0]
            hit = np.mean([np.isin(f, t).sum() / k for f, t in zip(found, truth, strict=True)])
            info = index.describe()
            memory = (info["structure_bytes"] or info["vector_bytes"]) * scale
            points.append({"spec": spec, option or "-": value, "recall": round(float(hit), 4),
                           "ms_per_query": round(ms, 4), "memory_mb": round(memory / 2**20, 2)})
            if hit >= recall:
                break
    ok = [p for p in points if p["recall"] >= recall
          and (not latency_ms or p["ms_per_query"] <= latency_ms)
          and (not memory_mb or p["memory_mb"] <= memory_mb)]
    best = min(ok, key=lambda p: p["ms_per_query"]) if ok else max(points,
                                                                     key=lambda p: p["recall"])
    return {"chosen": _with_option(best), "met_target": bool(ok), "measured_on": int(n),
            "points": points}


def _with_option(point: dict[str, Any]) -> str:
    spec = parse_spec(point["spec"])
    extra = {k: v for k, v in point.items() if k in ("ef", "nprobe")}
    return str(IndexSpec(spec.family, spec.body, {**spec.options, **extra}))


def _create(spec: str, dim: int, metric: IndexMetric) -> StoredIndex:
    from lookalike.index.registry import create_index

    return create_index(spec, dim, metric)  # type: ignore[return-value]


class AutoIndex:
    """An index that holds the measured choice and re-measures as it grows."""

    family = "auto"

    def __init__(self, dim: int, metric: IndexMetric = "cosine",
                 spec: IndexSpec | None = None) -> None:
        self._spec = spec or IndexSpec("auto")
        self.target: dict[str, Number] = {"recall": 0.95, "k": 10, "latency_ms": 0,
                                          "memory_mb": 0}
        unknown = set(self._spec.options) - set(self.target)
        if unknown:
            raise IndexError_(f"auto: unknown option(s) {', '.join(sorted(unknown))}; "
                              f"auto takes {', '.join(self.target)}")
        self.target.update(self._spec.options)
        self.dim, self.metric = dim, metric
        self.inner: StoredIndex = FlatIndex(dim, metric)
        self.tuning: dict[str, Any] = {"chosen": "flat", "measured_on": 0, "points": []}

    @property
    def spec(self) -> str:
        return str(self._spec)

    @property
    def ids(self) -> np.ndarray:
        return self.inner.ids

    def __len__(self) -> int:
        return len(self.inner)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "spec": self.spec, "chosen": self.tuning["chosen"],
                "tuning": self.tuning}

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.inner.add(ids, vectors)
        if len(self) >= MIN_TUNE and len(self) >= 2 * self.tuning["measured_on"]:
            self.retune()

    def retune(self) -> None:
        """Measure again on the current vectors and rebuild with the winner."""
        live = self.inner._alive
        ids, vectors = self.inner._ids[live], np.asarray(self.inner._vectors[live])
        self.tuning = tune(ids, vectors, self.metric, recall=float(self.target["recall"]),
                           k=int(self.target["k"]), latency_ms=float(self.target["latency_ms"]),
                           memory_mb=float(self.target["memory_mb"]))
        inner = _create(self.tuning["chosen"], self.dim, self.metric)
        inner.add(ids, vectors)
        self.inner = inner

    def remove(self, ids: np.ndarray) -> None:
        self.inner.remove(ids)

    def search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               **params: Any) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.search(queries, k, allowed=allowed, **params)

    def save(self, path: Path, *, meta: dict[str, Any] | None = None) -> None:
        self.inner.save(path, meta={**(meta or {}), "spec": self.spec, "tuning": self.tuning})

    def damage(self, folder: Path) -> str | None:
        return self.inner.damage(folder)

    @property
    def dead_ids(self) -> np.ndarray:
        return self.inner.dead_ids

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.live()

    def vectors_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.vectors_of(ids)

    def warm(self) -> None:
        self.inner.warm()

    def _restore(self, folder: Path, meta: dict[str, Any], mmap: bool) -> None:
        self.tuning = meta["tuning"]
        self.inner = _create(self.tuning["chosen"], self.dim, self.metric)
        self.inner._restore(folder, meta, mmap)
