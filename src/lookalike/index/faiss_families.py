"""The families faiss provides: IVF, IVF-PQ (with optional OPQ), HNSW and LSH.

faiss numbers the vectors of an index 0, 1, 2... in the order they are added, which is the
row order `StoredIndex` keeps, so its labels are rows directly. HNSW was chosen over hnswlib
after measuring both (benchmarks/RESULTS.md): the same recall/QPS curve within ~15 %, and
faiss needs no compiler and is already here for IVF and PQ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from lookalike.index.base import IndexError_, IndexMetric
from lookalike.index.spec import IndexSpec, Number
from lookalike.index.stored import StoredIndex

_POINTS_PER_CENTROID = 39  # faiss's own minimum for a sound k-means
_TRAIN_POINTS_PER_CENTROID = 64  # k-means sample: enough for faiss, a quarter of its cap
_RETRAIN_GROWTH = 4


def _search_parameters(index: Any, values: dict[str, float]) -> Any:
    """The search's settings as faiss's per-call parameters, not set on the index itself:
    a server's threads search one index at once, each with its own `ef` or `nprobe`."""
    if not values:
        return None
    if isinstance(index, faiss.IndexPreTransform):  # OPQ, then the IVF inside
        inner = _search_parameters(faiss.downcast_index(index.index), values)
        return faiss.SearchParametersPreTransform(index_params=inner)  # type: ignore[call-arg]
    if "efSearch" in values:  # faiss's stubs lack these keyword constructors
        return faiss.SearchParametersHNSW(  # type: ignore[attr-defined]
            efSearch=int(values["efSearch"]))
    return faiss.SearchParametersIVF(nprobe=int(values["nprobe"]))  # type: ignore[call-arg]


class _FaissIndex(StoredIndex):
    _faiss: Any = None

    def _factory(self) -> str:
        raise NotImplementedError

    def _training_rows(self) -> int:
        return 1 << 62

    def _build(self, vectors: np.ndarray) -> None:
        metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        index = faiss.index_factory(self.dim, self._factory(), metric)
        self._configure(index)
        if not index.is_trained:
            rng = np.random.default_rng(0)
            take = min(vectors.shape[0], self._training_rows())
            sample = vectors if take == vectors.shape[0] else vectors[
                np.sort(rng.choice(vectors.shape[0], take, replace=False))]
            index.train(np.ascontiguousarray(sample, np.float32))
            self._trained = take
        index.add(np.ascontiguousarray(vectors, np.float32))
        self._faiss = index

    def _configure(self, index: Any) -> None:
        """Build-time settings on a fresh faiss index."""

    def _extend(self, vectors: np.ndarray) -> None:
        self._faiss.add(np.ascontiguousarray(vectors, np.float32))

    def _candidates(self, queries: np.ndarray, fetch: int, params: dict[str, Number]
                    ) -> np.ndarray:
        settings = _search_parameters(self._faiss, self._faiss_params(fetch, params))
        _, labels = self._faiss.search(queries, fetch, params=settings)
        return labels.astype(np.int64)

    def _faiss_params(self, fetch: int, params: dict[str, Number]) -> dict[str, float]:
        return {}

    def _save_structure(self, folder: Path) -> None:
        faiss.write_index(self._faiss, str(folder / "structure.faiss"))

    def _load_structure(self, folder: Path) -> bool:
        try:
            self._faiss = faiss.read_index(str(folder / "structure.faiss"))
        except RuntimeError:
            return False
        return int(self._faiss.ntotal) == self._built

    def _meta(self) -> dict[str, Any]:
        return {"trained_rows": getattr(self, "_trained", 0)}

    def _restore(self, folder: Path, meta: dict[str, Any], mmap: bool) -> None:
        self._trained = int(meta.get("trained_rows", 0))
        super()._restore(folder, meta, mmap)


class IVFIndex(_FaissIndex):
    """Inverted file: k-means cells, `nprobe` nearest cells scanned per query."""

    family = "ivf"
    search_options: ClassVar[dict[str, Number]] = {"nprobe": 16}

    def __init__(self, dim: int, metric: IndexMetric = "cosine",
                 spec: IndexSpec | None = None) -> None:
        super().__init__(dim, metric, spec)
        self.nlist = int(self.settings["nlist"])
        self._trained = 0

    def _factory(self) -> str:
        return f"IVF{self.nlist},Flat"

    def _min_rows(self) -> int:
        return _POINTS_PER_CENTROID * self.nlist

    def _training_rows(self) -> int:
        return _TRAIN_POINTS_PER_CENTROID * self.nlist

    def _wants_rebuild(self) -> bool:
        """Retrain once the collection has outgrown its training sample."""
        return (self._trained < self._training_rows()
                and len(self) > _RETRAIN_GROWTH * self._trained)

    def _faiss_params(self, fetch: int, params: dict[str, Number]) -> dict[str, float]:
        return {"nprobe": min(int(params["nprobe"]), self.nlist)}

    def _structure_bytes(self) -> int:
        return self._built * (4 * self.dim + 8) + self.nlist * self.dim * 4


class IVFPQIndex(IVFIndex):
    """IVF with each vector compressed to `m` 4-bit codes (`m/2` bytes; faiss's fast-scan
    PQ, which trained ~50x and searched ~3x faster here than 8-bit codes at the same recall
    after re-ranking); the shortlist of `rerank` candidates is re-scored exactly from the
    stored vectors."""

    family = "ivfpq"
    search_options: ClassVar[dict[str, Number]] = {"nprobe": 16, "rerank": 100}

    def __init__(self, dim: int, metric: IndexMetric = "cosine",
                 spec: IndexSpec | None = None) -> None:
        super().__init__(dim, metric, spec)
        self.m = int(self.settings["m"])
        if dim % self.m:
            raise IndexError_(f"{self.spec}: pq{self.m} must divide the dimension {dim}")

    def _factory(self) -> str:
        return f"IVF{self.nlist},PQ{self.m}x4fs"

    def _structure_bytes(self) -> int:
        return self._built * (self.m // 2 + 8) + (self.nlist + 16) * self.dim * 4


class OPQIVFPQIndex(IVFPQIndex):
    """IVF-PQ after a learned rotation (OPQ) that balances the sub-spaces."""

    family = "opq-ivfpq"

    def _factory(self) -> str:
        return f"OPQ{self.m},IVF{self.nlist},PQ{self.m}x4fs"

    def _configure(self, index: Any) -> None:
        opq: Any = faiss.downcast_VectorTransform(index.chain.at(0))
        opq.max_train_points, opq.niter = 10_000, 10  # its alternating training is slow

    def _structure_bytes(self) -> int:
        return super()._structure_bytes() + self.dim * self.dim * 4


class HNSWIndex(_FaissIndex):
    """Hierarchical navigable small-world graph with `M` links a node; `ef` is the search
    beam (raised to the number of candidates wanted). The graph walks 8-bit scalar-quantised
    codes, a quarter of the vectors' bytes, rather than a second float32 copy of them: the
    stored vectors (memory-mapped) re-score what it finds, `rerank` candidates a query."""

    family = "hnsw"
    build_options: ClassVar[dict[str, Number]] = {"efc": 40}
    search_options: ClassVar[dict[str, Number]] = {"ef": 64, "rerank": 0}

    def _factory(self) -> str:
        return f"HNSW{int(self.settings['M'])}_SQ8"

    def _shortlist(self, k: int, params: dict[str, Number]) -> int:
        """Twice k by default: the codes' scores are close, not exact."""
        return max(k, int(params.get("rerank") or 2 * k))

    def _min_rows(self) -> int:
        return 1

    def _configure(self, index: Any) -> None:
        index.hnsw.efConstruction = int(self.settings["efc"])

    def _faiss_params(self, fetch: int, params: dict[str, Number]) -> dict[str, float]:
        return {"efSearch": max(int(params["ef"]), fetch)}

    def _structure_bytes(self) -> int:
        links = 2 * int(self.settings["M"]) + 2  # level 0, plus ~1/M of nodes a level up
        return self._built * (self.dim + 4 * links + 16)


class LSHIndex(_FaissIndex):
    """Random-hyperplane LSH: `bits` signs of random projections, Hamming-ranked, the
    `rerank` nearest codes re-scored exactly. Angular, so cosine or inner product."""

    family = "lsh"
    build_options: ClassVar[dict[str, Number]] = {"bits": 512}
    search_options: ClassVar[dict[str, Number]] = {"rerank": 100}
    metrics: ClassVar[tuple[str, ...]] = ("cosine", "ip")

    def _min_rows(self) -> int:
        return 1

    def _build(self, vectors: np.ndarray) -> None:
        index = faiss.IndexLSH(self.dim, int(self.settings["bits"]), True, False)
        index.train(np.ascontiguousarray(vectors[:max(1, min(len(vectors), 1000))]))
        index.add(np.ascontiguousarray(vectors, np.float32))
        self._faiss = index

    def _structure_bytes(self) -> int:
        bits = int(self.settings["bits"])
        return self._built * bits // 8 + self.dim * bits * 4
