"""What every index family shares: stored vectors, tombstones, exact re-scoring, rebuilds.

Each index keeps its vectors as rows beside its search structure. The structure only
proposes candidate rows; the stored vectors score them exactly, so every family's scores are
exact search's scores for the same pairs, and a product-quantised shortlist is re-ranked for
free. The family-specific part is four hooks: `_build`, `_extend`, `_candidates` and the
structure's file.

Updates, the same for every family:
- `remove` marks rows dead (a tombstone); search filters them out, fetching more candidates
  when too many of the proposed ones are dead. When dead rows pass 25 % of all rows the
  index compacts and rebuilds its structure.
- `add` appends rows. Families whose structure grows in place (faiss IVF, HNSW, LSH) extend
  it; the others (Annoy, KD-tree, ScaNN) search the new rows exactly until they pass 25 % of
  the built rows, then rebuild. A family may also ask for a rebuild (IVF retrains its
  k-means once the collection has outgrown its training sample four times).
- Below `_min_rows()` live rows no structure is built at all: exact search is faster there.

On disk an index is a folder: `meta.json`, `ids.npy`, `alive.npy`, `vectors.npy` (opened
memory-mapped, so re-ranking reads it from disk) and the structure's own file. A new folder
replaces the old one by rename, so a crash leaves the last complete one.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from lookalike.index.base import (
    IndexError_,
    IndexMetric,
    check_ids,
    check_k,
    check_metric,
    check_vectors,
    normalise,
)
from lookalike.index.spec import IndexSpec, Number

REBUILD_FRACTION = 0.25
FORMAT_VERSION = 1
# An allowed set this small (rows, or share of the live rows) is searched exactly: filtering
# a structure's candidates would need most of the structure to find k of them.
EXACT_ALLOWED = 10_000
EXACT_FRACTION = 0.05
_QUERY_CHUNK_ELEMENTS = 1 << 24  # query rows x stored rows scored at once (64 MB)


class StoredIndex:
    """Base of every family; `FlatIndex` is this class with no structure at all."""

    family: ClassVar[str] = ""
    build_options: ClassVar[dict[str, Number]] = {}
    search_options: ClassVar[dict[str, Number]] = {}
    extendable: ClassVar[bool] = True  # the structure can take rows after it is built
    metrics: ClassVar[tuple[str, ...]] = ("cosine", "ip", "l2")

    def __init__(self, dim: int, metric: IndexMetric = "cosine",
                 spec: IndexSpec | None = None) -> None:
        self.dim = int(dim)
        self.metric = check_metric(metric)
        self._spec = spec or IndexSpec(self.family)
        if self.metric not in self.metrics:
            raise IndexError_(f"{self._spec}: metric {metric!r} is not supported "
                              f"(use {' or '.join(self.metrics)})")
        known = {**self.build_options, **self.search_options}
        unknown = set(self._spec.options) - set(known)
        if unknown:
            raise IndexError_(f"{self._spec}: unknown option(s) {', '.join(sorted(unknown))}; "
                              f"{self.family} takes {', '.join(known) or 'none'}")
        self.settings: dict[str, Number] = {**known, **self._spec.params()}
        self._ids = np.empty(0, np.int64)
        self._vectors: np.ndarray = np.empty((0, dim), np.float32)
        self._alive = np.empty(0, bool)
        self._live = 0  # live rows, counted as they change (not summed on every search)
        self._by_id: tuple[np.ndarray, np.ndarray] | None = None  # sorted ids, their rows
        self._built = 0  # rows [0, _built) are in the structure

    # -- hooks for the families -----------------------------------------------------------

    def _min_rows(self) -> int:
        """Live rows below which no structure is built (exact search is faster)."""
        return 1 << 62  # flat: never

    def _build(self, vectors: np.ndarray) -> None:
        """Build the structure over `vectors` (all rows, in order)."""

    def _extend(self, vectors: np.ndarray) -> None:
        """Append rows `_built ..` to the structure (only when `extendable`)."""

    def _wants_rebuild(self) -> bool:
        return False

    def _candidates(self, queries: np.ndarray, fetch: int, params: dict[str, Number]
                    ) -> np.ndarray:
        """Up to `fetch` candidate rows for each query, `-1` padded."""
        raise NotImplementedError

    def _shortlist(self, k: int, params: dict[str, Number]) -> int:
        """Candidates to ask the structure for, before re-scoring (k unless it re-ranks)."""
        return max(k, int(params.get("rerank", k)))

    def _save_structure(self, folder: Path) -> None: ...

    def _load_structure(self, folder: Path) -> bool:
        """Read the structure back; False means 'not there, rebuild it'."""
        return False

    def _structure_bytes(self) -> int:
        return 0

    # -- the interface --------------------------------------------------------------------

    @property
    def spec(self) -> str:
        return str(self._spec)

    @property
    def ids(self) -> np.ndarray:
        return self._ids[self._alive]

    def __len__(self) -> int:
        return self._live

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The rows holding `ids` (dead ones too), by binary search: a lookup costs the ids
        asked for, not the rows held (the sorted copy is made once, on the first)."""
        if self._by_id is None:
            order = np.argsort(self._ids, kind="stable")
            self._by_id = (self._ids[order], order)
        sorted_ids, order = self._by_id
        ids = np.asarray(ids, np.int64).reshape(-1)
        at = np.minimum(np.searchsorted(sorted_ids, ids), max(0, len(sorted_ids) - 1))
        hit = sorted_ids[at] == ids if len(sorted_ids) else np.zeros(len(ids), bool)
        return np.sort(order[at[hit]])

    @property
    def dead_ids(self) -> np.ndarray:
        """Ids removed but still among the rows (until the next compaction)."""
        return self._ids[~self._alive]

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        """The live rows' ids and (normalised) vectors, in row order: what a merge of
        segments carries over."""
        return self._ids[self._alive], self._vectors[self._alive]

    def vectors_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The live rows among `ids`, as (ids, vectors): an indexed image's own vectors."""
        rows = self._rows_of(ids)
        rows = rows[self._alive[rows]]
        return self._ids[rows], np.asarray(self._vectors[rows], np.float32)

    def warm(self) -> None:
        """Read the memory-mapped vectors through once, so that the page cache holds them
        and searches re-score without waiting for the disk (a server does, as it starts)."""
        for start in range(0, self._vectors.shape[0], 1024):
            np.add.reduce(self._vectors[start:start + 1024], axis=None)  # every page read

    def describe(self) -> dict[str, Any]:
        """Size and memory, for reports: the structure stays in RAM, the stored vectors
        are memory-mapped once the index is loaded from disk."""
        return {"spec": self.spec, "metric": self.metric, "vectors": len(self),
                "rows": int(self._ids.shape[0]), "in_structure": self._built,
                "structure_bytes": self._structure_bytes(),
                "vector_bytes": int(self._vectors.nbytes)}

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = check_vectors(vectors, self.dim)
        ids = check_ids(ids, vectors.shape[0])
        if np.isin(ids, self.ids).any():
            raise IndexError_("some ids are already in the index; remove them first")
        if self.metric == "cosine":
            vectors = normalise(vectors)
        first = self._ids.shape[0] == 0  # no copy of a big first batch (a merge, a build)
        self._ids = ids.copy() if first else np.concatenate([self._ids, ids])
        self._vectors = (np.ascontiguousarray(vectors, np.float32) if first
                         else np.concatenate([self._vectors, vectors]))
        self._alive = np.concatenate([self._alive, np.ones(len(ids), bool)])
        self._live += len(ids)
        self._by_id = None
        self._maintain()

    def remove(self, ids: np.ndarray) -> None:
        """Drop `ids` (unknown ones are ignored); they never come back from search."""
        rows = self._rows_of(ids)
        self._live -= int(self._alive[rows].sum())
        self._alive[rows] = False
        self._maintain()

    def search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               **params: Any) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best rows for each query, best first, as `(scores, ids)`. With `allowed`
        (ids), only those can be found: a small set is searched exactly, a large one through
        the structure, its other rows filtered out like tombstones; fewer than `k` found are
        padded with -1."""
        queries = check_vectors(queries, self.dim, "queries")
        k = check_k(k)
        if len(self) == 0:
            raise IndexError_("the index is empty")
        if k > len(self) and allowed is None:
            raise IndexError_(f"k={k} is more than the {len(self)} vectors in the index")
        unknown = set(params) - set(self.search_options)
        if unknown:
            raise IndexError_(f"{self.spec}: unknown search option(s) "
                              f"{', '.join(sorted(unknown))}; {self.family} takes "
                              f"{', '.join(self.search_options) or 'none'}")
        settings = {**self.settings, **{n: v for n, v in params.items() if v is not None}}
        if self.metric == "cosine":
            queries = normalise(queries)
        usable = self._alive
        if allowed is not None:
            usable = self._alive & np.isin(self._ids, np.asarray(allowed, np.int64))
            if int(usable.sum()) <= max(k, EXACT_ALLOWED, EXACT_FRACTION * len(self)):
                return self._search_rows(queries, np.flatnonzero(usable), k)
        chunk = max(1, min(1024, _QUERY_CHUNK_ELEMENTS // max(1, self._vectors.shape[0]
                                                              - self._built)))
        parts = [self._search_chunk(queries[i:i + chunk], k, settings, usable)
                 for i in range(0, queries.shape[0], chunk)]
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def _search_rows(self, queries: np.ndarray, rows: np.ndarray, k: int
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among the given rows, -1 padded; queries a chunk at a time, so the
        scores held stay under `_QUERY_CHUNK_ELEMENTS`."""
        step = max(1, _QUERY_CHUNK_ELEMENTS // max(1, len(rows)))
        if len(queries) > step:
            parts = [self._search_rows(queries[i:i + step], rows, k)
                     for i in range(0, len(queries), step)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        scores = self._score_matrix(queries, self._vectors[rows])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(scores, order, axis=1)
        ids = self._ids[rows][order]
        if top.shape[1] < k:
            pad = ((0, 0), (0, k - top.shape[1]))
            top = np.pad(top, pad, constant_values=-np.inf)
            ids = np.pad(ids, pad, constant_values=-1)
        return top.astype(np.float32), ids.astype(np.int64)

    def _search_chunk(self, queries: np.ndarray, k: int, settings: dict[str, Number],
                      usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-k among the `usable` rows (live, and allowed when a filter is given)."""
        rows, scores = self._exact_pending(queries, k, usable)
        if self._built:
            live_built = (self._live - int(usable[self._built:].sum())  # no pass over
                          if usable is self._alive  # every row when nothing is filtered
                          else int(usable[:self._built].sum()))
            fetch = min(self._built, self._shortlist(k, settings))
            fetch = min(self._built, int(fetch * self._built / max(1, live_built)) + 1)
            while True:
                found = self._candidates(queries, fetch, settings)
                valid = found >= 0
                valid[valid] = usable[found[valid]]
                short = valid.sum(axis=1) < min(k, live_built)
                full = (found >= 0).sum(axis=1) == fetch  # short of structure, not of fetch
                if not (short & full).any() or fetch >= self._built:
                    break
                fetch = min(self._built, fetch * 2)  # too many tombstones among these
            found = np.where(valid, found, -1)
            rows = np.concatenate([rows, found], axis=1)
            scores = np.concatenate([scores, self._score_rows(queries, found)], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top_scores = np.take_along_axis(scores, order, axis=1)
        top_rows = np.take_along_axis(rows, order, axis=1)
        out_ids = np.where(top_rows >= 0, self._ids[np.maximum(top_rows, 0)], -1)
        top_scores[top_rows < 0] = -np.inf
        if top_scores.shape[1] < k:  # fewer candidates than k: pad
            pad = k - top_scores.shape[1]
            top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
        return top_scores.astype(np.float32), out_ids.astype(np.int64)

    def _exact_pending(self, queries: np.ndarray, k: int, usable: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among the usable rows outside the structure (all rows for flat)."""
        live = usable[self._built:]
        take = min(k, int(live.sum()))
        if take == 0:
            return (np.empty((queries.shape[0], 0), np.int64),
                    np.empty((queries.shape[0], 0), np.float32))
        sims = self._score_matrix(queries, self._vectors[self._built:])
        if not live.all():
            sims[:, ~live] = -np.inf
        top = np.argpartition(-sims, take - 1, axis=1)[:, :take] if take < live.shape[0] \
            else np.broadcast_to(np.arange(live.shape[0]), sims.shape)
        return top + self._built, np.take_along_axis(sims, top, axis=1)

    def _score_matrix(self, queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        dots = queries @ vectors.T
        if self.metric != "l2":
            return dots
        sq = (queries ** 2).sum(1)[:, None] + (vectors ** 2).sum(1)[None, :] - 2 * dots
        return -np.sqrt(np.maximum(sq, 0))

    def _score_rows(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact scores of each query against its own candidate rows; `-inf` for `-1`.
        faiss's by-index kernels read the rows in place (3-4x faster than gathering them)."""
        nq, per_query = rows.shape
        rows = np.ascontiguousarray(rows, np.int64)
        queries = np.ascontiguousarray(queries, np.float32)
        vectors = self._vectors if self._vectors.flags.c_contiguous else np.ascontiguousarray(
            self._vectors)
        out = np.empty(rows.shape, np.float32)
        kernel = (faiss.fvec_L2sqr_by_idx if self.metric == "l2"  # type: ignore[attr-defined]
                  else faiss.fvec_inner_products_by_idx)  # type: ignore[attr-defined]
        kernel(faiss.swig_ptr(out), faiss.swig_ptr(queries), faiss.swig_ptr(vectors),
               faiss.swig_ptr(rows), self.dim, nq, per_query)
        if self.metric == "l2":
            out = -np.sqrt(np.maximum(out, 0))
        return np.where(rows >= 0, out, -np.inf).astype(np.float32)

    # -- keeping the structure in shape ---------------------------------------------------

    def _maintain(self) -> None:
        rows = self._ids.shape[0]
        dead = rows - len(self)
        pending = rows - self._built
        if self._built == 0:
            if dead > REBUILD_FRACTION * rows or len(self) >= self._min_rows():
                self.rebuild()
        elif dead > REBUILD_FRACTION * rows or self._wants_rebuild():
            self.rebuild()
        elif pending:
            if self.extendable:
                self._extend(self._vectors[self._built:])
                self._built = rows
            elif pending > REBUILD_FRACTION * self._built:
                self.rebuild()

    def rebuild(self) -> None:
        """Drop dead rows and build the structure again over the live ones."""
        keep = self._alive
        self._ids, self._vectors = self._ids[keep], np.ascontiguousarray(self._vectors[keep])
        self._alive = np.ones(self._ids.shape[0], bool)
        self._live, self._by_id = self._ids.shape[0], None
        self._built = 0
        if len(self) >= self._min_rows():
            self._build(self._vectors)
            self._built = self._ids.shape[0]

    # -- files ----------------------------------------------------------------------------

    def save(self, path: Path, *, meta: dict[str, Any] | None = None) -> None:
        """Write a new folder beside `path`, then swap it in by rename; `meta` adds to (or
        overrides) what `meta.json` records."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        np.save(tmp / "ids.npy", self._ids)
        np.save(tmp / "alive.npy", self._alive)
        np.save(tmp / "vectors.npy", self._vectors)
        if self._built:
            self._save_structure(tmp)
        meta = {"format_version": FORMAT_VERSION, "spec": self.spec, "metric": self.metric,
                "dim": self.dim, "built": self._built, "vectors_crc32": _crc32(self._vectors),
                **self._meta(), **(meta or {})}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)

    def _meta(self) -> dict[str, Any]:
        """Extra state the family needs back on load."""
        return {}

    def damage(self, folder: Path) -> str | None:
        """What is wrong with the saved copy of these vectors, if anything: a full read of
        `vectors.npy` against the checksum written beside it (for `lookalike check`)."""
        meta = json.loads((folder / "meta.json").read_text())
        expected = meta.get("vectors_crc32")
        if expected is not None and _crc32(self._vectors) != expected:
            return f"{folder / 'vectors.npy'}: the vectors do not match their checksum"
        return None

    def _restore(self, folder: Path, meta: dict[str, Any], mmap: bool) -> None:
        self._ids = np.load(folder / "ids.npy")
        self._alive = np.load(folder / "alive.npy")
        self._live, self._by_id = int(self._alive.sum()), None
        self._vectors = np.load(folder / "vectors.npy", mmap_mode="r" if mmap else None)
        if not (self._ids.shape[0] == self._alive.shape[0] == self._vectors.shape[0]):
            raise ValueError("ids, alive and vectors differ in length")
        self._built = int(meta["built"])
        if self._built and not self._load_structure(folder):
            self.rebuild()


def _crc32(vectors: np.ndarray, chunk_rows: int = 1 << 14) -> int:
    """CRC-32 of the rows' bytes, read a chunk at a time (a memory map stays unloaded)."""
    crc = 0
    for start in range(0, vectors.shape[0], chunk_rows):
        crc = zlib.crc32(np.ascontiguousarray(vectors[start:start + chunk_rows]).data, crc)
    return crc
