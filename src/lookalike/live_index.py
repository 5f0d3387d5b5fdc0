"""A collection's index, kept in step with its catalog.

The saved index (`index/`, see `lookalike.index.segmented`) is read once; after that it
follows the catalog by what changed (new vectors after its last id, removals after its sync
point), so an `index` run beside a server costs the server what that run changed. A reader
that falls behind a newer commit reads only that commit's new segments. The writer merges
and saves; the catalog then lets go of the vectors the commit holds (`Catalog.absorb`).

    index.json   the catalog generation the saved index reflects

Threads of one process (a server's) search one index at once; picking up a commit changes
it, so it waits for the searches in progress and they for it (a read-write lock that lets
a waiting refresh go first, so a stream of searches cannot hold new commits back).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.atomic import atomic_write
from lookalike.catalog import Catalog, MissingVectorsError, SyncPoint
from lookalike.index import IndexError_, SegmentedIndex
from lookalike.lock import WriterLock

BUILD_CHUNK = 250_000  # vectors read at a time when an index is built
REMOVALS_KEPT = 100_000  # removed vector ids kept in the log for readers that are behind


def _saved_point(commit: Mapping[str, Any]) -> SyncPoint | None:
    """The sync point a saved index's commit records (None before sync points)."""
    try:
        return SyncPoint(**commit["sync"])
    except (KeyError, TypeError):
        return None


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer goes before new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer: int | None = None  # the thread writing
        self._waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writer is not None or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._writer == me:  # re-entered (a save loads the index first)
            yield
            return
        with self._cond:
            self._waiting += 1
            while self._writer is not None or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = me
        try:
            yield
        finally:
            with self._cond:
                self._writer = None
                self._cond.notify_all()


class LiveIndex:
    """`LiveIndex(folder, catalog, spec, dim, writer)`: `current()` for searching, `save()`
    by the writer. `spec` may change (`switch`): the next load builds the index anew from
    the saved one's vectors."""

    def __init__(self, folder: Path, catalog: Catalog, spec: str, dim: int,
                 writer: WriterLock, *, has_regions: bool = False) -> None:
        self.folder, self.catalog, self.spec, self.dim = folder, catalog, spec, dim
        self.writer = writer
        self.has_regions = has_regions
        self.per_image = 1  # vectors an image, rounded up
        self._index: SegmentedIndex | None = None
        self._index_at = -1  # the catalog generation `_index` reflects
        self._synced: SyncPoint | None = None  # how far `_index` has followed the catalog
        self._lock = _ReadWriteLock()

    @contextmanager
    def reading(self) -> Iterator[SegmentedIndex]:
        """The current index, for searching while other threads may pick up commits."""
        self.current()
        with self._lock.reading():
            assert self._index is not None
            yield self._index

    def current(self) -> SegmentedIndex:
        """The index, up to date with the catalog. Once loaded it follows the catalog's
        changes (new vectors after its last id, removals after its point: an `index` run
        beside a server costs the server what that run changed); the saved index is read
        once, built when missing, damaged or of another spec than the manifest's."""
        generation = self.catalog.generation
        if self._index is not None and self._index_at == generation:
            return self._index
        with self._lock.writing():
            return self._refresh(self.catalog.generation)

    def _refresh(self, generation: int) -> SegmentedIndex:
        if self._index is not None and self._index_at == generation:
            return self._index  # another thread did it meanwhile
        index = self._index
        followed = (self._follow(index, self._synced)
                    if index is not None and self._synced is not None else None)
        if index is None or followed is None:  # the saved index's newer commit has it
            index, followed = self._open_index(previous=index)
            if self.has_regions:  # else one an image: nothing to count
                images = max(1, self.catalog.count_ok_images())  # on open, not each commit
                self.per_image = max(1, -(-len(index) // images))  # rounded up
        self._index, self._synced, self._index_at = index, followed, generation
        return index

    def _open_index(self, previous: SegmentedIndex | None = None
                    ) -> tuple[SegmentedIndex, SyncPoint]:
        """The saved index brought up to date; the segments `previous` (an earlier commit)
        holds are reused, not read again."""
        index: SegmentedIndex | None = None
        for _ in range(10):  # a writer may commit, and drop old segments, while they are read
            index = None
            try:
                index = SegmentedIndex.load(self.folder / "index", previous=previous)
            except IndexError_:
                if self.writer.held:
                    (self.folder / "index.json").unlink(missing_ok=True)  # saved anew
                    break
                continue
            if index.spec != self.spec:
                return self._build_index(index)
            saved = _saved_point(index.saved)  # of the commit that was read, not a later one
            if saved is None:
                return self._full_sync(index)
            followed = self._follow(index, saved)
            if followed is not None:
                return index, followed
        return self._build_index(index)

    def _follow(self, index: SegmentedIndex, point: SyncPoint) -> SyncPoint | None:
        """Apply the catalog's changes after `point`; None when its log no longer reaches
        back that far."""
        changes = self.catalog.changes_since(point, self.dim)
        if changes is None:
            return None
        index.remove(changes.removed)
        if len(changes.vids):  # merging is the writer's job, when it saves
            index.add(changes.vids, changes.vectors, merge=False)
        return changes.point

    def _build_index(self, source: SegmentedIndex | None) -> tuple[SegmentedIndex, SyncPoint]:
        """An index of the manifest's spec, from the vectors of `source` (a saved index of
        another spec) and what the catalog holds after it; without one, from the catalog
        alone (possible until the catalog hands its vectors over)."""
        index = SegmentedIndex(self.spec, self.dim)
        if source is not None:
            for vids, vectors in source.live_chunks(BUILD_CHUNK):
                index.add(vids, vectors)  # a segment each, merged as they come
            saved = _saved_point(source.saved)
            followed = self._follow(index, saved) if saved is not None else None
            return (index, followed) if followed is not None else self._full_sync(index)
        with self.catalog.snapshot():
            point = self.catalog.sync_point()
            for vids, vectors in self.catalog.vector_chunks(self.dim, BUILD_CHUNK):
                index.add(vids, vectors)
        return index, point

    def _full_sync(self, index: SegmentedIndex) -> tuple[SegmentedIndex, SyncPoint]:
        """Compare a saved index with every vector id of the catalog: for an index saved
        before sync points. What it lacks comes from the catalog's blobs."""
        with self.catalog.snapshot():
            point = self.catalog.sync_point()
            vids = self.catalog.vector_map()[0]
            held = index.ids
            index.remove(held[~np.isin(held, vids)])
            missing = vids[~np.isin(vids, held)]
            if len(missing):
                found, vectors = self.catalog.held_vectors(self.dim)
                pick = np.isin(found, missing)
                index.add(found[pick], vectors[pick])
                lost = missing[~np.isin(missing, found)]
                if len(lost):
                    owners = self.catalog.vector_owners(lost).values()
                    raise MissingVectorsError(self.catalog.path,
                                              sorted({o.image_id for o in owners}))
        return index, point

    def _index_generation(self) -> int | None:
        """The catalog generation the saved index reflects, if there is a readable one."""
        try:
            return int(json.loads((self.folder / "index.json").read_text())["generation"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self) -> None:
        """Persist the index for the current catalog generation (atomic, its sync point
        inside it); a no-op when the saved one is current. The removal log keeps the last
        `REMOVALS_KEPT` removals the saved index has applied, for readers that are behind
        (one further behind reads the saved index again)."""
        generation = self.catalog.generation
        if self._index_generation() == generation and (self.folder / "index").is_dir():
            return
        index = self.current()
        assert self._synced is not None
        point = self._synced
        with self.writer, self._lock.writing():
            index.merge()
            index.save(self.folder / "index", meta={"sync": asdict(point)})
            with atomic_write(self.folder / "index.json") as fh:
                json.dump({"generation": generation, "spec": index.spec}, fh)
            (self.folder / "index.npz").unlink(missing_ok=True)  # the format before index/
            self.catalog.absorb(point.last_vid)  # the index holds them now: once on disk
            if point.removal_seq > 2 * REMOVALS_KEPT:
                self.catalog.prune_removals(point.removal_seq - REMOVALS_KEPT)

    def replace(self, index: SegmentedIndex, point: SyncPoint) -> None:
        """Take `index`, which holds the catalog's vectors up to `point`, as the index, and
        save it (what a repair rebuilt from the parts that survived)."""
        with self.writer, self._lock.writing():
            (self.folder / "index.json").unlink(missing_ok=True)
            self._index, self._synced, self._index_at = index, point, -1
            self.save()

    def switch(self, spec: str) -> None:
        """Use another index spec from now on, built from the saved index's vectors."""
        with self.writer:
            with self._lock.writing():
                self.spec = spec
                (self.folder / "index.json").unlink(missing_ok=True)
                self._index, self._synced = None, None
            self.save()

    def whole_saved_point(self) -> SyncPoint | None:
        """The sync point of the saved index if it is readable and whole (a full read of
        its vectors against their checksums); None otherwise."""
        try:
            saved = SegmentedIndex.load(self.folder / "index")
        except IndexError_:
            return None
        return None if saved.damage(self.folder / "index") else _saved_point(saved.saved)
