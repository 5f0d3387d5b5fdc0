"""Bringing a collection's catalog in line with its image files.

A scan (of the whole folder, or of a few paths) is compared with what the catalog records
of the same files, by size and modification time: new and changed files are hashed; those
identical to an indexed file (a rename, a copy) take its vectors; the others are embedded
in batches, each batch one transaction, so a run killed at any moment resumes where it
stopped. Files gone from the scan are removed, unless their folder could not be listed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from stat import S_ISREG

import numpy as np

from lookalike.catalog import Catalog, ImageRecord, VectorRow
from lookalike.encoders import BatchEncoder
from lookalike.folder import FolderScan, sha256_or_error
from lookalike.live_index import LiveIndex
from lookalike.local_features import file_words
from lookalike.local_index import LocalIndex
from lookalike.regions import Regions

LOCAL_SAVE_BATCHES = 16  # the local-feature index is saved this often during a long run


@dataclass
class IndexReport:
    """What one `index_folder` run changed."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # not images lookalike can read
    unchanged: int = 0

    def summary(self) -> str:
        return (f"{len(self.added)} added, {len(self.updated)} updated, "
                f"{len(self.renamed)} reused (renamed or copied), {len(self.removed)} removed, "
                f"{len(self.failed)} failed, {len(self.skipped)} skipped, "
                f"{self.unchanged} unchanged")



def _compare(on_disk: Mapping[str, str], known: Mapping[str, ImageRecord]
             ) -> tuple[list[tuple[str, str, os.stat_result]],
                        list[tuple[str, os.stat_result, str]], int]:
    """The files new or changed since the catalog's record of them, those that cannot be
    read (with why), and how many are unchanged."""
    changed: list[tuple[str, str, os.stat_result]] = []
    unreadable: list[tuple[str, os.stat_result, str]] = []
    unchanged = 0
    for image_id, path in on_disk.items():
        error = None
        try:
            stat = os.stat(path)
        except OSError as exc:  # a broken link: the link's own stat tells when it changes
            error = f"cannot read: {exc.strerror}"
            try:
                stat = os.lstat(path)
            except OSError:
                continue  # gone since the scan
        old = known.get(image_id)
        if old and old.size == stat.st_size and old.mtime_ns == stat.st_mtime_ns:
            unchanged += 1
        elif error or not S_ISREG(stat.st_mode):  # reading a pipe would wait forever
            unreadable.append((image_id, stat, error or "not a regular file"))
        else:
            changed.append((image_id, path, stat))
    return changed, unreadable, unchanged



def sync_files(scan: FolderScan, known: Mapping[str, ImageRecord], catalog: Catalog,
               index: LiveIndex, embedder: Callable[[], BatchEncoder], regions: Regions | None,
               *, local: LocalIndex | None = None, batch_size: int = 32,
               progress: bool = False, after_batch: Callable[[int], None] | None = None
               ) -> IndexReport:
    """Bring the catalog in line with `scan`, within what `known` holds of it (all its
    images for a whole folder, those under the paths scanned otherwise), then save the
    index (and `local`, the local-feature index, whose words each new image gets).
    `embedder` is called only when something is to be embedded."""
    on_disk = scan.files
    report = IndexReport(skipped=scan.skipped)
    changed, unreadable, report.unchanged = _compare(on_disk, known)
    todo: list[tuple[str, str, os.stat_result, str]] = []
    twins: list[tuple[str, str, os.stat_result, str]] = []
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # hashlib releases the GIL
        hashes = list(pool.map(sha256_or_error, [path for _, path, _ in changed]))
    for (image_id, path, stat), sha in zip(changed, hashes, strict=True):
        if isinstance(sha, OSError):
            unreadable.append((image_id, stat, f"cannot read: {sha.strerror}"))
            continue
        twin = catalog.ok_image_with_hash(sha)
        (twins if twin is not None else todo).append((image_id, path, stat, sha))
    reused = _reuse_twins(catalog, index, twins, local is not None)
    for image_id, path, stat, sha in twins:
        if image_id in reused:
            (report.updated if image_id in known else report.renamed).append(image_id)
        else:
            todo.append((image_id, path, stat, sha))

    gone = sorted(i for i in set(known) - set(on_disk) if not scan.under_unreadable(i))
    if gone or unreadable:
        with catalog.transaction() as db:
            catalog.remove_images(db, gone)
            for image_id, stat, reason in unreadable:
                catalog.put_image(db, ImageRecord(
                    image_id, stat.st_size, stat.st_mtime_ns, "", None, None, "error", reason
                ), [])
                report.failed[image_id] = reason
        report.removed.extend(gone)

    batches = embedder().iter_batches([p for _, p, _, _ in todo], batch_size=batch_size,
                                    progress=progress, regions=regions
                                    ) if todo else iter(())
    words_of = None
    if local is not None and todo:
        local.claim()
        words_of = partial(file_words, vocabulary=local.vocabulary)
    with ThreadPoolExecutor(os.cpu_count()) as describing:  # OpenCV releases the GIL
        for number, batch in enumerate(batches):
            words: list[bytes | None] = [None] * len(batch.positions)
            if words_of is not None:
                words = list(describing.map(words_of, [todo[pos][1] for pos in batch.positions]))
            with catalog.transaction() as db:
                for i, pos in enumerate(batch.positions):
                    image_id, _, stat, sha = todo[pos]
                    w, h = batch.sizes[i]
                    record = ImageRecord(image_id, stat.st_size, stat.st_mtime_ns, sha, w, h,
                                         "ok", None)
                    rows = [VectorRow(image_id, (0, 0, w, h), batch.vectors[i])]
                    if regions:
                        rows += [VectorRow(image_id, box, vector) for box, vector in
                                 zip(batch.region_boxes[i], batch.region_vectors[i],
                                     strict=True)]
                    catalog.put_image(db, record, rows, words[i])
                    (report.updated if image_id in known else report.added).append(image_id)
                for pos, error in batch.failures:
                    image_id, _, stat, sha = todo[pos]
                    record = ImageRecord(image_id, stat.st_size, stat.st_mtime_ns, sha, None,
                                         None, "error", error.reason)
                    catalog.put_image(db, record, [])
                    report.failed[image_id] = error.reason
            if local is not None and number % LOCAL_SAVE_BATCHES == LOCAL_SAVE_BATCHES - 1:
                local.save()  # a long run: readers beside it then read few unsaved words
            if after_batch is not None:
                after_batch(number)
    index.save()
    if local is not None:
        local.save()
    return report

def _reuse_twins(catalog: Catalog, index: LiveIndex,
                 files: list[tuple[str, str, os.stat_result, str]], local: bool) -> set[str]:
    """Give each file the vectors of an identical one the catalog has (a rename or a
    copy: same sha256), all in one transaction; the ids that got them (not those whose
    twin's vectors are missing: they are embedded)."""
    if not files:
        return set()
    twins = {sha: catalog.ok_image_with_hash(sha) for *_, sha in files}
    boxes = {twin: catalog.vector_boxes(twin) for twin in twins.values() if twin}
    ids, vectors = index.current().vectors_of(
        np.array([vid for rows in boxes.values() for vid, _ in rows], np.int64))
    found = dict(zip(ids.tolist(), vectors, strict=True))
    sources = {twin: catalog.image(twin) for twin in boxes}
    done: set[str] = set()
    with catalog.transaction() as db:
        for image_id, _, stat, sha in files:
            twin = twins[sha]
            source = sources.get(twin) if twin else None
            if twin is None or source is None or not all(v in found for v, _ in boxes[twin]):
                continue
            record = ImageRecord(image_id, stat.st_size, stat.st_mtime_ns, sha,
                                 source.width, source.height, "ok", None)
            catalog.put_image(db, record, [VectorRow(image_id, box, found[vid])
                                           for vid, box in boxes[twin]],
                              catalog.local_words_of(twin) if local else None)
            done.add(image_id)
    return done
