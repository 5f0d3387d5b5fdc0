"""An index kept in segments, as Lucene, Milvus and LanceDB keep theirs, so that saving a
change writes the change, not the collection.

Each segment is a complete index of the family (its rows, tombstones and structure, see
`StoredIndex`). New rows go to a new segment; removals are tombstones in the segment that
holds the row. Segments of about the same size are merged (size-tiered, like Lucene's
default policy): when `MERGE_FACTOR` segments share a tier, their live rows become one new
segment, so there are O(log N) segments and each row is rewritten O(log N) times. Merges
stop at `MAX_MERGED` rows, so past a few million rows segments of that size accumulate.

On disk, a folder:

    segments.json        the commit point: which segments are live, and the tombstones file
    seg-000001/ ...      one `StoredIndex` folder each, written once and never changed
    removed-000007.npy   ids removed from the rows of saved segments

A save writes the segments not yet on disk and the tombstones, then replaces
`segments.json` atomically; what it no longer names is deleted after. A crash at any moment
leaves the last complete commit. A folder in the single-index layout of before (`meta.json`
at its top) opens as one segment and is rewritten as segments by the next save.

A search runs on every segment and merges one top-k; every family's scores are exact
(re-scored on the stored vectors), so the merge is exact too.

The segments are where a collection's vectors live (the catalog hands them over once a
commit holds them), so an index is never rebuilt from anything but its own segments.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.atomic import atomic_write
from lookalike.index.base import IndexError_, IndexMetric, VectorIndex, check_k
from lookalike.index.registry import create_index, load_single
from lookalike.index.spec import IndexSpec

MERGE_FACTOR = 4      # segments of one tier that are merged into one
TIER_BASE = 1024      # rows of the smallest tier: segments below this are merged freely
MAX_MERGED = 500_000  # no merge makes a bigger segment (Lucene caps merges at 5 GB too):
                      # a merge holds its segments' vectors in memory
FORMAT_VERSION = 2


@dataclass
class _Segment:
    index: VectorIndex
    name: str | None  # its folder once saved; None while only in memory

    @property
    def rows(self) -> int:
        return len(self.index) + len(self.index.dead_ids)


class SegmentedIndex:
    """`SegmentedIndex(spec, dim)`; `SegmentedIndex.load(folder)`; the `VectorIndex`
    interface otherwise."""

    def __init__(self, spec: str | IndexSpec, dim: int, metric: IndexMetric = "cosine"
                 ) -> None:
        probe = create_index(spec, dim, metric)  # validated and normalised
        self.dim, self.metric, self._spec = probe.dim, probe.metric, probe.spec
        self._segments: list[_Segment] = []
        self._serial = 0  # the last number given to a file of this folder
        self.saved: dict[str, Any] = {}  # the commit it was loaded from (its `meta` too)

    def _new(self) -> VectorIndex:
        return create_index(self._spec, self.dim, self.metric)

    # -- the interface --------------------------------------------------------------------

    @property
    def spec(self) -> str:
        return self._spec

    @property
    def ids(self) -> np.ndarray:
        return np.concatenate([np.empty(0, np.int64)] + [s.index.ids for s in self._segments])

    @property
    def dead_ids(self) -> np.ndarray:
        return np.concatenate([np.empty(0, np.int64)]
                              + [s.index.dead_ids for s in self._segments])

    def __len__(self) -> int:
        return sum(len(s.index) for s in self._segments)

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        parts = [s.index.live() for s in self._segments]
        return (np.concatenate([np.empty(0, np.int64)] + [p[0] for p in parts]),
                np.concatenate([np.empty((0, self.dim), np.float32)] + [p[1] for p in parts]))

    def live_chunks(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The live rows as (ids, vectors) chunks of at most `rows`, a segment at a time:
        what a rebuild under another spec reads, holding one chunk in memory."""
        for segment in self._segments:
            ids, vectors = segment.index.live()
            for start in range(0, len(ids), rows):
                yield ids[start:start + rows], np.asarray(vectors[start:start + rows])

    def vectors_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The live rows among `ids`, as (ids, vectors), segment by segment."""
        parts = [s.index.vectors_of(ids) for s in self._segments]
        return (np.concatenate([np.empty(0, np.int64)] + [p[0] for p in parts]),
                np.concatenate([np.empty((0, self.dim), np.float32)] + [p[1] for p in parts]))

    def warm(self) -> None:
        """Read every segment's vectors into the page cache (see `StoredIndex.warm`)."""
        for segment in list(self._segments):
            segment.index.warm()

    def describe(self) -> dict[str, Any]:
        parts = [s.index.describe() for s in self._segments]
        out: dict[str, Any] = {"spec": self.spec, "metric": self.metric,
                               "vectors": len(self), "segments": len(parts)}
        for key in ("rows", "in_structure", "structure_bytes", "vector_bytes"):
            out[key] = sum(int(p.get(key, 0)) for p in parts)
        if parts and "chosen" in parts[0]:
            out["chosen"] = max(parts, key=lambda p: p["vectors"])["chosen"]
        return out

    def add(self, ids: np.ndarray, vectors: np.ndarray, *, merge: bool = True) -> None:
        """A new segment for these rows (ids must be new: the catalog never reuses one),
        then merges where a tier is full (`merge=False`: a reader following commits leaves
        merging to the writer)."""
        if len(ids) == 0:
            return
        segment = self._new()
        segment.add(ids, vectors)
        self._segments.append(_Segment(segment, None))
        if merge:
            self.merge()

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64).reshape(-1)
        if len(ids) == 0:
            return
        for segment in self._segments:
            rows = segment.rows
            segment.index.remove(ids)
            if segment.rows != rows:  # it compacted itself: its saved copy is stale
                segment.name = None
        self._segments = [s for s in self._segments if s.rows]

    def search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
               **params: Any) -> tuple[np.ndarray, np.ndarray]:
        """Every segment's top-k, merged; `allowed` (ids) restricts what can be found."""
        k = check_k(k)
        total = len(self)
        if total == 0:
            raise IndexError_("the index is empty")
        if k > total and allowed is None:
            raise IndexError_(f"k={k} is more than the {total} vectors in the index")
        scores, ids = [], []
        for segment in self._segments:
            size = len(segment.index)
            if size:
                s, i = segment.index.search(queries, k if allowed is not None else min(k, size),
                                            allowed=allowed, **params)
                scores.append(s)
                ids.append(i)
        all_scores, all_ids = np.concatenate(scores, axis=1), np.concatenate(ids, axis=1)
        order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        return (np.take_along_axis(all_scores, order, axis=1),
                np.take_along_axis(all_ids, order, axis=1))

    # -- merging --------------------------------------------------------------------------

    def merge(self) -> None:
        """Size-tiered: while some tier holds `MERGE_FACTOR` segments, those become one."""
        while True:
            tiers: dict[int, list[_Segment]] = {}
            for segment in self._segments:
                tiers.setdefault(_tier(len(segment.index)), []).append(segment)
            full = [group[:MERGE_FACTOR] for group in tiers.values()
                    if len(group) >= MERGE_FACTOR
                    and sum(len(s.index) for s in group[:MERGE_FACTOR]) <= MAX_MERGED]
            if not full:
                return
            group = min(full, key=lambda g: _tier(len(g[0].index)))
            merged = self._new()
            ids, vectors = zip(*(s.index.live() for s in group), strict=True)
            merged.add(np.concatenate(ids), np.concatenate(vectors))
            self._segments = [s for s in self._segments if s not in group]
            self._segments.append(_Segment(merged, None))

    # -- files ----------------------------------------------------------------------------

    def save(self, path: Path, *, meta: dict[str, Any] | None = None) -> None:
        """Write what is not on disk yet, commit, then delete what the commit dropped."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for segment in self._segments:
            if segment.name is None:
                name = self._next_name(path, "seg-{:06d}")
                segment.index.save(path / name)
                segment.name = name
        removed = self._next_name(path, "removed-{:06d}.npy")
        with atomic_write(path / removed, "wb") as fh:
            np.save(fh, self.dead_ids)
        commit = {"format_version": FORMAT_VERSION, "spec": self.spec, "dim": self.dim,
                  "metric": self.metric, "serial": self._serial,
                  "segments": [s.name for s in self._segments], "removed": removed,
                  **(meta or {})}
        with atomic_write(path / "segments.json") as fh:
            json.dump(commit, fh, indent=2)
        keep = {"segments.json", removed, *commit["segments"]}
        for entry in path.iterdir():  # older segments, or the single layout of before
            if entry.name not in keep:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def _next_name(self, path: Path, pattern: str) -> str:
        while True:
            self._serial += 1
            name = pattern.format(self._serial)
            if not (path / name).exists():
                return name

    @classmethod
    def load(cls, path: Path, *, previous: SegmentedIndex | None = None) -> SegmentedIndex:
        """Open a segments folder (each segment's vectors memory-mapped), or a single
        index in the layout of before as one segment. Segments that `previous` (an
        earlier commit of the same folder) holds unchanged are taken from it, so a reader
        picking up a new commit reads only the new segments."""
        path = Path(path)
        commit_file = path / "segments.json"
        if not commit_file.exists():
            return cls.from_index(load_single(path))
        known = {s.name: s for s in previous._segments if s.name} if previous else {}
        try:
            commit = json.loads(commit_file.read_text())
            index = cls(commit["spec"], int(commit["dim"]), commit["metric"])
            index._serial = int(commit["serial"])
            index._segments = [known.get(name) or _Segment(load_single(path / name), name)
                               for name in commit["segments"]]
            index.saved = commit
            removed = np.load(path / commit["removed"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexError_(f"{path}: not a readable index ({exc})") from None
        index.remove(removed)
        return index

    @classmethod
    def from_index(cls, single: VectorIndex) -> SegmentedIndex:
        """One index as the first segment (not yet saved)."""
        index = cls(single.spec, single.dim, single.metric)
        index._segments = [_Segment(single, None)]
        return index

    def damage(self, path: Path) -> str | None:
        for segment in self._segments:
            if segment.name is not None:
                found = segment.index.damage(Path(path) / segment.name)
                if found:
                    return found
        return None


def salvage(path: Path, wanted: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The vectors among `wanted` (ids) that some readable, undamaged segment folder under
    `path` holds, as (ids, vectors) chunks, each id once: a repair's source when the
    commit, a segment or its tombstones are lost. A vector id is never reused, so any
    segment's copy of it is the right one, whichever commit named it."""
    wanted = np.asarray(wanted, np.int64)
    seen = np.empty(0, np.int64)
    for folder in sorted(Path(path).glob("seg-*")):
        try:
            segment = load_single(folder)
            if segment.damage(folder):
                continue
        except (OSError, ValueError, KeyError, TypeError, IndexError_):
            continue
        ids, vectors = segment.vectors_of(wanted)  # rows removed later are still wanted
        new = ~np.isin(ids, seen)
        if new.any():
            seen = np.concatenate([seen, ids[new]])
            yield ids[new], np.asarray(vectors[new])


def _tier(rows: int) -> int:
    """0 up to `TIER_BASE` rows, then one more for each factor of `MERGE_FACTOR`."""
    return 0 if rows <= TIER_BASE else 1 + int(math.log(rows / TIER_BASE, MERGE_FACTOR))
