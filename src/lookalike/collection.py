"""A persistent, incrementally updated collection of images and their vectors.

Layout of a collection folder:

    manifest.json    encoder (name, weights sha256, dim, preprocessing), index spec, version
    catalog.sqlite   images (id, size, mtime, sha256, width, height, status, error) and
                     vectors (ids and boxes; one or more per image: the whole image, and its
                     regions), holding a vector's bytes only until the index commits it
    index/           the search index in segments (see `lookalike.index.segmented`): where
                     the vectors live, memory-mapped
    index.json       the catalog generation the index reflects; on a mismatch the index is
                     brought up to date by adding and removing the vectors that changed
    lock             held by the one process writing (see `lookalike.lock`)

The catalog commits one batch at a time, so killing the process and re-running resumes
where it stopped; manifest and index are replaced atomically. The catalog keeps a copy of
the manifest, and the manifest the indexed folder, so that either can be rebuilt from the
other (`lookalike check --repair`).

Format 1 kept every vector twice, in the catalog and in the index; `upgrade` (run by
`lookalike upgrade`, and by the first `lookalike index` on it) hands them to the index and
shrinks the catalog. Format 1 stays readable as it is.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from stat import S_ISREG
from typing import Any, Literal

import numpy as np

from lookalike import verification
from lookalike.atomic import atomic_write
from lookalike.calibration import Calibrator
from lookalike.catalog import (
    Catalog,
    ImageRecord,
    MissingVectorsError,
    SyncPoint,
    VectorOwner,
    VectorRow,
)
from lookalike.encoders import (
    DEFAULT_ENCODER,
    BatchEncoder,
    EncodeInput,
    Encoder,
    cached_encoder,
    create_encoder,
)
from lookalike.errors import LookalikeError
from lookalike.folder import FolderScan, image_path, scan_folder, scan_paths, sha256_or_error
from lookalike.hits import Hit
from lookalike.images import Box, ImageError, ImageSource, decode
from lookalike.index import IndexError_, SegmentedIndex, create_index
from lookalike.index.spec import Number
from lookalike.lock import WriterLock
from lookalike.regions import Regions, parse_regions
from lookalike.verification import Keypoints, Thumbnails, keypoints, thumbnails

FORMAT_VERSION = 2  # 1: vectors in the catalog too
BUILD_CHUNK = 250_000  # vectors read at a time when an index is built from the catalog
REMOVALS_KEPT = 100_000  # removed vector ids kept in the log for readers that are behind
Metric = Literal["cosine", "dot", "l2"]
VectorKind = Literal["all", "whole", "regions"]
METRICS: tuple[Metric, ...] = ("cosine", "dot", "l2")


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


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    with atomic_write(path) as fh:
        json.dump(data, fh, indent=2)


def _saved_point(commit: Mapping[str, Any]) -> SyncPoint | None:
    """The sync point a saved index's commit records (None before sync points)."""
    try:
        return SyncPoint(**commit["sync"])
    except (KeyError, TypeError):
        return None


def _aborted_create(path: Path) -> bool:
    """A catalog without a manifest copy or any image: a `create` killed before it wrote
    the manifest, which may start again."""
    if (path / "catalog.sqlite").stat().st_size == 0:
        return True
    try:
        catalog = Catalog(path / "catalog.sqlite")
    except LookalikeError:
        return False
    try:
        return catalog.get_meta("manifest") is None and catalog.is_empty()
    finally:
        catalog.close()


def _check_creatable(path: Path) -> None:
    """A collection can be made at `path`: it is a folder, or can become one."""
    if path.exists() and not path.is_dir():
        raise LookalikeError(f"{path}: not a folder, cannot hold a collection")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise LookalikeError(f"{path}: cannot create the collection ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LookalikeError(f"{path}: cannot create the collection (no permission to "
                             f"write in {existing})")


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


class Collection:
    """Open with `Collection.open(path)` or `Collection.create(path, encoder=...)`."""

    def __init__(self, path: Path, manifest: dict[str, Any], encoder: Encoder | None = None,
                 catalog: Catalog | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.catalog = catalog or Catalog(path / "catalog.sqlite")
        self.writer = WriterLock(path)
        self._encoder = encoder
        self._index: SegmentedIndex | None = None
        self._index_at = -1  # the catalog generation `_index` reflects
        self._synced: SyncPoint | None = None  # how far `_index` has followed the catalog
        self._per_image = 1  # vectors an image, rounded up
        self.upgraded: str | None = None  # what `open(upgrade=True)` did

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, *, encoder: str | Encoder = DEFAULT_ENCODER,
               index: str = "flat", regions: str = "none",
               region_discount: float | None = None) -> Collection:
        """A new, empty collection; `regions` (see `lookalike.regions`) picks the parts of
        each image that get a vector of their own besides the whole image, and
        `region_discount` how much less a region's match counts (the strategy's default
        when None)."""
        path = Path(path)
        if (path / "manifest.json").exists():
            raise LookalikeError(f"{path}: a collection already exists there")
        if (path / "catalog.sqlite").exists() and not _aborted_create(path):
            raise LookalikeError(
                f"{path}: manifest.json is missing but the catalog is there; "
                f"`lookalike check -c {path} --repair` restores it (a new manifest could "
                "mix another model's vectors with these)")
        _check_creatable(path)  # before the model loads
        parsed = parse_regions(regions)
        regions = str(parsed) if parsed else "none"  # normalised: grid -> grid:3
        if region_discount is None:
            region_discount = parsed.discount if parsed else 0.0
        if not 0.0 <= region_discount <= 1.0:
            raise LookalikeError(f"region_discount must be from 0 to 1, got {region_discount}")
        enc = encoder if isinstance(encoder, Encoder) else create_encoder(encoder)
        if parsed and parsed.size:
            enc.at_size(parsed.size)  # refused now, not after a first batch, if it can't
        index = create_index(index, enc.dim).spec  # validated and normalised first
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LookalikeError(f"{path}: cannot create the collection ({exc.strerror})"
                                 ) from None
        manifest = {"format_version": FORMAT_VERSION, "encoder": enc.describe(),
                    "index": index, "regions": regions, "region_discount": region_discount}
        catalog = Catalog(path / "catalog.sqlite", create=True)
        coll = cls(path, manifest, enc, catalog)
        coll.save_manifest(manifest)
        return coll

    @classmethod
    def open(cls, path: str | Path, *, encoder: str | Encoder | None = None,
             upgrade: bool = False, wait: bool = False) -> Collection:
        """Open an existing collection; naming a different encoder than it was built with
        is an error (vectors of two models are not comparable). A loaded `Encoder` is used
        as it is (after the same check) instead of loading the collection's own. A
        collection of an older format is an error that says how to upgrade it, or with
        `upgrade` is upgraded in place first (`upgraded` then says what was done; `wait`:
        for another writer to finish first)."""
        path = Path(path)
        try:
            manifest = json.loads((path / "manifest.json").read_text())
            built_with = manifest["encoder"]["name"]
        except FileNotFoundError:
            if (path / "catalog.sqlite").exists():
                raise LookalikeError(f"{path}: manifest.json is missing; `lookalike check -c "
                                     f"{path} --repair` restores it") from None
            raise LookalikeError(f"{path}: not a lookalike collection (no manifest.json)"
                                 ) from None
        except NotADirectoryError:
            raise LookalikeError(f"{path}: not a lookalike collection (not a folder)"
                                 ) from None
        except PermissionError:
            raise LookalikeError(f"{path}: permission denied (a collection of another user?)"
                                 ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise LookalikeError(f"{path}/manifest.json: malformed ({exc})") from None
        if int(manifest.get("format_version", 1)) > FORMAT_VERSION:
            raise LookalikeError(
                f"{path}: made by a newer lookalike (collection format "
                f"{manifest['format_version']}; this version reads up to {FORMAT_VERSION}); "
                "upgrade lookalike")
        loaded = encoder if isinstance(encoder, Encoder) else None
        name = loaded.name if loaded else encoder
        if name is not None and (name != built_with or (
                loaded and loaded.fingerprint != manifest["encoder"].get("weights_sha256"))):
            raise LookalikeError(
                f"{path}: built with encoder {built_with!r}, cannot use {name!r}; "
                "create a new collection for another encoder"
            )
        if int(manifest.get("format_version", 1)) < FORMAT_VERSION and not upgrade:
            raise LookalikeError(
                f"{path}: made by an older lookalike (collection format "
                f"{manifest.get('format_version', 1)}); `lookalike upgrade -c {path}` brings it "
                f"to format {FORMAT_VERSION} in place, once (so does `lookalike index`)")
        coll = cls(path, manifest, loaded)
        if upgrade:
            with coll.writing(wait=wait):
                coll.upgraded = coll.upgrade()
        return coll

    @classmethod
    def open_or_create(cls, path: str | Path, *, encoder: str | None = None,
                       index: str = "flat", regions: str = "none",
                       region_discount: float | None = None, upgrade: bool = False,
                       wait: bool = False) -> Collection:
        if (Path(path) / "manifest.json").exists():
            return cls.open(path, encoder=encoder, upgrade=upgrade, wait=wait)
        return cls.create(path, encoder=encoder or DEFAULT_ENCODER, index=index,
                          regions=regions, region_discount=region_discount)

    def close(self) -> None:
        self.catalog.close()

    def writing(self, *, wait: bool = False) -> WriterLock:
        """`with coll.writing(wait=...):` holds the collection's writer lock: a second
        writer waits (`wait`) or stops with a message. Every method that writes takes it
        too (re-entering is free)."""
        self.writer.wait = wait
        return self.writer

    def save_manifest(self, manifest: dict[str, Any]) -> None:
        """manifest.json, and its copy in the catalog (what `check --repair` restores)."""
        with self.catalog.transaction() as db:
            self.catalog.set_meta(db, "manifest", json.dumps(manifest))
        _write_json_atomic(self.path / "manifest.json", manifest)
        self.manifest = manifest

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def encoder(self) -> Encoder:
        """Loaded on first use (searching by id needs none); checked against the manifest."""
        if self._encoder is None:
            recorded = self.manifest["encoder"]
            enc = cached_encoder(recorded) or create_encoder(recorded["name"])
            if enc.fingerprint != recorded["weights_sha256"]:
                raise LookalikeError(
                    f"{self.path}: the weights of {recorded['name']!r} differ from those the "
                    "collection was built with; re-create it"
                )
            self._encoder = enc
        return self._encoder

    @property
    def dim(self) -> int:
        return int(self.manifest["encoder"]["dim"])

    @property
    def root(self) -> Path | None:
        root = self.catalog.get_meta("root")
        return Path(root) if root else None

    def __len__(self) -> int:
        return self.catalog.count_ok_images()

    def vector_count(self) -> int:
        """Vectors held: one per image, plus one per region when regions are indexed."""
        return self.catalog.count_vectors()

    def ids(self) -> list[str]:
        return [i for i, r in self.catalog.images().items() if r.status == "ok"]

    def failures(self) -> dict[str, str]:
        return {i: r.error or "" for i, r in self.catalog.images().items()
                if r.status == "error"}

    # -- indexing -------------------------------------------------------------------------

    def index_folder(self, root: str | Path, *, batch_size: int = 32, progress: bool = False,
                     after_batch: Callable[[int], None] | None = None,
                     embed_with: BatchEncoder | None = None) -> IndexReport:
        """Bring the collection in line with the images under `root`: embed new and changed
        files, reuse the vectors of renamed or copied ones (same sha256), drop deleted ones.
        Bad images are recorded with their error and skipped until they change.
        `embed_with` embeds elsewhere than in this process (`distributed.RayEncoder`)."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise LookalikeError(f"{root}: not a directory")
        with self.writer:
            scan = scan_folder(root)
            if self.root != root.resolve():
                with self.catalog.transaction() as db:
                    self.catalog.set_meta(db, "root", str(root.resolve()))
            if self.manifest.get("root") != str(root.resolve()):
                self.save_manifest({**self.manifest, "root": str(root.resolve())})
            return self._index_scan(scan, self.catalog.images(), batch_size, progress,
                                    after_batch, embed_with)

    def index_paths(self, paths: Iterable[str | Path], *, batch_size: int = 32,
                    progress: bool = False, after_batch: Callable[[int], None] | None = None,
                    embed_with: BatchEncoder | None = None) -> IndexReport:
        """Like `index_folder`, for just these files and folders under the collection's
        folder: what a file watcher, or a script that knows what it changed, calls. A path
        that no longer exists is removed. Neither the rest of the folder nor the catalog is
        read, so the cost follows the change, not the collection."""
        root = self.root
        if root is None or not root.is_dir():
            raise LookalikeError(f"{self.path}: its folder {root} is not there; index a "
                                 "folder first (`lookalike index FOLDER`)")
        with self.writer:
            scan, scopes = scan_paths(root, [Path(p).expanduser() for p in paths])
            return self._index_scan(scan, self.catalog.images_in(scopes), batch_size,
                                    progress, after_batch, embed_with)

    def _index_scan(self, scan: FolderScan, known: Mapping[str, ImageRecord], batch_size: int,
                    progress: bool, after_batch: Callable[[int], None] | None,
                    embed_with: BatchEncoder | None) -> IndexReport:
        """Bring the catalog in line with `scan`, within what `known` holds of it."""
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
            twin = self.catalog.ok_image_with_hash(sha)
            (twins if twin is not None else todo).append((image_id, path, stat, sha))
        reused = self._reuse_twins(twins)
        for image_id, path, stat, sha in twins:
            if image_id in reused:
                (report.updated if image_id in known else report.renamed).append(image_id)
            else:
                todo.append((image_id, path, stat, sha))

        gone = sorted(i for i in set(known) - set(on_disk) if not scan.under_unreadable(i))
        if gone or unreadable:
            with self.catalog.transaction() as db:
                self.catalog.remove_images(db, gone)
                for image_id, stat, reason in unreadable:
                    self.catalog.put_image(db, ImageRecord(
                        image_id, stat.st_size, stat.st_mtime_ns, "", None, None, "error", reason
                    ), [])
                    report.failed[image_id] = reason
            report.removed.extend(gone)

        regions = parse_regions(self.manifest.get("regions", "none"))
        embedder = embed_with or self.encoder
        batches = embedder.iter_batches([p for _, p, _, _ in todo], batch_size=batch_size,
                                        progress=progress, regions=regions
                                        ) if todo else iter(())
        for number, batch in enumerate(batches):
            with self.catalog.transaction() as db:
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
                    self.catalog.put_image(db, record, rows)
                    (report.updated if image_id in known else report.added).append(image_id)
                for pos, error in batch.failures:
                    image_id, _, stat, sha = todo[pos]
                    record = ImageRecord(image_id, stat.st_size, stat.st_mtime_ns, sha, None,
                                         None, "error", error.reason)
                    self.catalog.put_image(db, record, [])
                    report.failed[image_id] = error.reason
            if after_batch is not None:
                after_batch(number)
        self.save_index()
        return report

    def _reuse_twins(self, files: list[tuple[str, str, os.stat_result, str]]) -> set[str]:
        """Give each file the vectors of an identical one the catalog has (a rename or a
        copy: same sha256), all in one transaction; the ids that got them (not those whose
        twin's vectors are missing: they are embedded)."""
        if not files:
            return set()
        twins = {sha: self.catalog.ok_image_with_hash(sha) for *_, sha in files}
        boxes = {twin: self.catalog.vector_boxes(twin) for twin in twins.values() if twin}
        ids, vectors = self._load_index().vectors_of(
            np.array([vid for rows in boxes.values() for vid, _ in rows], np.int64))
        found = dict(zip(ids.tolist(), vectors, strict=True))
        sources = {twin: self.catalog.image(twin) for twin in boxes}
        done: set[str] = set()
        with self.catalog.transaction() as db:
            for image_id, _, stat, sha in files:
                twin = twins[sha]
                source = sources.get(twin) if twin else None
                if twin is None or source is None or not all(v in found for v, _ in boxes[twin]):
                    continue
                record = ImageRecord(image_id, stat.st_size, stat.st_mtime_ns, sha,
                                     source.width, source.height, "ok", None)
                self.catalog.put_image(db, record, [VectorRow(image_id, box, found[vid])
                                                    for vid, box in boxes[twin]])
                done.add(image_id)
        return done

    # -- the index ------------------------------------------------------------------------

    def _load_index(self) -> SegmentedIndex:
        """The index, up to date with the catalog. Once loaded it follows the catalog's
        changes (new vectors after its last id, removals after its point: an `index` run
        beside a server costs the server what that run changed); the saved index is read
        once, built when missing, damaged or of another spec than the manifest's."""
        generation = self.catalog.generation
        if self._index is not None and self._index_at == generation:
            return self._index
        index = self._index
        followed = (self._follow(index, self._synced)
                    if index is not None and self._synced is not None else None)
        if index is None or followed is None:  # the saved index's newer commit has it
            index, followed = self._open_index(previous=index)
            if self.manifest.get("regions", "none") != "none":  # else one: nothing to count
                images = max(1, self.catalog.count_ok_images())  # on open, not each commit
                self._per_image = max(1, -(-len(index) // images))  # rounded up
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
                index = SegmentedIndex.load(self.path / "index", previous=previous)
            except IndexError_:
                if self.writer.held:
                    (self.path / "index.json").unlink(missing_ok=True)  # saved anew
                    break
                continue
            if index.spec != self.manifest["index"]:
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
        index = SegmentedIndex(self.manifest["index"], self.dim)
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
            return int(json.loads((self.path / "index.json").read_text())["generation"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_index(self) -> None:
        """Persist the index for the current catalog generation (atomic, its sync point
        inside it); a no-op when the saved one is current. The removal log keeps the last
        `REMOVALS_KEPT` removals the saved index has applied, for readers that are behind
        (one further behind reads the saved index again)."""
        generation = self.catalog.generation
        if self._index_generation() == generation and (self.path / "index").is_dir():
            return
        index = self._load_index()
        assert self._synced is not None
        point = self._synced
        with self.writer:
            index.merge()
            index.save(self.path / "index", meta={"sync": asdict(point)})
            _write_json_atomic(self.path / "index.json",
                               {"generation": generation, "spec": index.spec})
            (self.path / "index.npz").unlink(missing_ok=True)  # the format before index/
            self.catalog.absorb(point.last_vid)  # the index holds them now: once on disk
            if point.removal_seq > 2 * REMOVALS_KEPT:
                self.catalog.prune_removals(point.removal_seq - REMOVALS_KEPT)

    def replace_index(self, index: SegmentedIndex, point: SyncPoint) -> None:
        """Take `index`, which holds the catalog's vectors up to `point`, as the index, and
        save it (what a repair rebuilt from the parts that survived)."""
        with self.writer:
            (self.path / "index.json").unlink(missing_ok=True)
            self._index, self._synced, self._index_at = index, point, -1
            self.save_index()

    @property
    def format_version(self) -> int:
        return int(self.manifest.get("format_version", 1))

    def upgrade(self) -> str | None:
        """Bring a collection of an older format to this one; what was done, or None when
        it is current. Format 1 -> 2: the catalog hands the vectors that the saved index
        holds (when it is whole) over to it, keeps the others pending, and is compacted."""
        old = self.format_version
        if old >= FORMAT_VERSION:
            return None
        with self.writer:
            before = self.catalog.path.stat().st_size
            point = self._whole_saved_point()
            self.catalog.migrate_format_1(point.last_vid if point else 0)
            self.save_manifest({**self.manifest, "format_version": FORMAT_VERSION})
            after = self.catalog.path.stat().st_size
        return (f"{self.path}: upgraded from format {old} to {FORMAT_VERSION} (the catalog "
                f"went from {before / 1e6:.1f} MB to {after / 1e6:.1f} MB)")

    def _whole_saved_point(self) -> SyncPoint | None:
        """The sync point of the saved index if it is readable and whole (a full read of
        its vectors against their checksums); None otherwise."""
        try:
            saved = SegmentedIndex.load(self.path / "index")
        except IndexError_:
            return None
        return None if saved.damage(self.path / "index") else _saved_point(saved.saved)

    @property
    def region_discount(self) -> float:
        """How much lower a region's match counts than the same match of a whole image, so
        that whole-image queries keep ranking by whole images while a detail still finds
        the image that contains it."""
        return float(self.manifest.get("region_discount", 0.0))

    @property
    def calibration(self) -> Calibrator | None:
        """The fitted relevance calibration (`lookalike calibrate`), if there is one."""
        path = self.path / "calibration.json"
        return Calibrator.load(path) if path.is_file() else None

    def set_calibration(self, calibrator: Calibrator | None) -> None:
        """Save (or with None, drop) the calibration used by every later search."""
        with self.writer:
            if calibrator is None:
                (self.path / "calibration.json").unlink(missing_ok=True)
            else:
                calibrator.save(self.path / "calibration.json")

    def reindex(self, spec: str) -> None:
        """Switch to another index spec, built from the stored vectors (no re-embedding)."""
        spec = create_index(spec, self.dim).spec  # validated and normalised first
        with self.writer:
            self.save_manifest({**self.manifest, "index": spec})
            (self.path / "index.json").unlink(missing_ok=True)
            self._index, self._synced = None, None
            self.save_index()

    def load(self) -> None:
        """Read the index now, not at the first search (a server does, when it starts)."""
        self._load_index()

    def image_vectors(self, image_id: str) -> list[VectorRow]:
        """The image's vectors as the index holds them: the whole image first, then its
        regions (none for an id not in the collection)."""
        boxes = self.catalog.vector_boxes(image_id)
        if not boxes:
            return []
        ids, vectors = self._load_index().vectors_of(np.array([v for v, _ in boxes], np.int64))
        found = dict(zip(ids.tolist(), vectors, strict=True))
        return [VectorRow(image_id, box, found[vid]) for vid, box in boxes if vid in found]

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every vector id and vector (for benchmarks and exports; memory-mapped rows are
        read into memory)."""
        return self._load_index().live()

    def index_info(self) -> dict[str, Any]:
        """The index's size and memory, and vectors an image, for reports."""
        info = self._load_index().describe()
        return {**info, "images": len(self),
                "vectors_per_image": round(info["vectors"] / max(1, len(self)), 2)}

    # -- search ---------------------------------------------------------------------------

    def query_vector(self, image: ImageSource | None = None, *, crop: Box | None = None,
                     like: str | None = None) -> np.ndarray:
        """The vector for a query image (or a crop of it), or for an indexed id."""
        if like is not None:
            if image is not None or crop is not None:
                raise LookalikeError("give either a query image or an indexed id, not both")
            rows = self.image_vectors(like)
            if not rows:
                raise LookalikeError(f"{like}: no such id in the collection")
            return rows[0].vector
        if image is None:
            raise LookalikeError("nothing to search for: give an image or an indexed id")
        item: EncodeInput = (image, crop) if crop is not None else image
        return self.encoder.encode([item])[0]

    def search(self, image: ImageSource | None = None, *, crop: Box | None = None,
               like: str | None = None, k: int = 10, metric: Metric = "cosine",
               options: Mapping[str, Number] | None = None,
               min_grade: float | None = None, query_regions: str = "none",
               verify: int = 0, within: Iterable[str] | None = None) -> list[Hit]:
        """The `k` indexed images most similar to a query image, a crop box of it, or an
        indexed id (`like`, which is left out of its own results). `query_regions`
        (a regions spec) also searches with regions of the query image; `verify` re-ranks
        that many top hits by verification (see `search_many`); `within` (image ids) limits
        what can be found to those images."""
        if like is not None and (image is not None or crop is not None):
            raise LookalikeError("give either a query image or an indexed id, not both")
        if like is None and image is None:
            raise LookalikeError("nothing to search for: give an image or an indexed id")
        exclude = [{like}] if like else None
        if like is not None and query_regions == "none" and not verify and not self._two_sizes:
            return self.search_vectors(self.query_vector(like=like)[None, :], k=k,
                                       metric=metric, exclude=exclude, options=options,
                                       min_grade=min_grade, within=within)[0]
        if like is not None:
            if self.catalog.image(like) is None:
                raise LookalikeError(f"{like}: no such id in the collection")
            image = image_path(self.root or self.path, like)
        assert image is not None
        item: EncodeInput = (image, crop) if crop is not None else image
        return self._search_items([item], k=k, metric=metric, options=options,
                                  min_grade=min_grade, query_regions=query_regions,
                                  verify=verify, exclude=exclude, within=within)[0]

    def search_many(self, items: Sequence[EncodeInput], *, k: int = 10,
                    metric: Metric = "cosine", progress: bool = False,
                    options: Mapping[str, Number] | None = None,
                    min_grade: float | None = None, query_regions: str = "none",
                    verify: int = 0, within: Iterable[str] | None = None
                    ) -> list[list[Hit]]:
        """Batch search: images or `(image, box)` crops, embedded in batches.

        With `query_regions` (`grid:2`, `proposals:4`...), each query's regions search too
        and an image scores by its best match with any of them: for partial copies, and for
        queries that show the target among other things. With `verify` (say 50), that many
        top hits are checked by verification (`lookalike.verification`): the images that
        contain the query, or a copy of it, move to the top, those whose keypoints match
        first, then those where the query's pixels match, each with the box where the query
        lies; the rest keep their order. With `within` (image ids), only those images can
        be found: a folder, a date range or tags chosen elsewhere.
        """
        return self._search_items(items, k=k, metric=metric, progress=progress,
                                  options=options, min_grade=min_grade,
                                  query_regions=query_regions, verify=verify, within=within)

    def _search_items(self, items: Sequence[EncodeInput], *, k: int, metric: Metric,
                      progress: bool = False, options: Mapping[str, Number] | None = None,
                      min_grade: float | None = None, query_regions: str = "none",
                      verify: int = 0, exclude: Sequence[set[str]] | None = None,
                      within: Iterable[str] | None = None) -> list[list[Hit]]:
        if metric not in METRICS:
            raise LookalikeError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if verify < 0:
            raise LookalikeError(f"verify must be >= 0, got {verify}")
        wanted = max(self._wanted(k, min_grade), verify)
        rows = self._query_rows(items, parse_regions(query_regions), wanted, exclude, options,
                                progress, self._allowed(within))
        if verify:
            rows = [_verified(item, hits, verify) for item, hits in zip(items, rows, strict=True)]
        return [self._finish(hits, k, metric, min_grade) for hits in rows]

    @property
    def _region_size(self) -> int | None:
        regions = parse_regions(self.manifest.get("regions", "none"))
        return regions.size if regions else None

    @property
    def _two_sizes(self) -> bool:
        """Regions are embedded at another input size than whole images (`grid@160`)."""
        size = self._region_size
        return size is not None and size != self.encoder.preprocess.size

    def _query_rows(self, items: Sequence[EncodeInput], regions: Regions | None, wanted: int,
                    exclude: Sequence[set[str]] | None, options: Mapping[str, Number] | None,
                    progress: bool, allowed: np.ndarray | None) -> list[list[Hit]]:
        """Each query's `wanted` best images. With query `regions`, the query's regions
        search too and an image keeps its best hit. When the collection's regions are at
        another size, the queries are embedded at both sizes, and each vector searches the
        indexed vectors of its own size."""
        passes: list[tuple[Encoder, VectorKind]] = [(self.encoder, "all")]
        if self._two_sizes:
            assert self._region_size is not None
            passes = [(self.encoder, "whole"), (self.encoder.at_size(self._region_size),
                                                "regions")]
        merged: list[list[Hit]] = [[] for _ in items]
        for encoder, kind in passes:
            vectors, owners = _query_vectors(encoder, items, regions, progress)
            skip = [exclude[o] for o in owners] if exclude else None
            found = self._nearest(vectors, wanted, skip, options, kind, allowed)
            for owner, hits in zip(owners, found, strict=True):
                merged[owner] += hits
        if len(passes) == 1 and regions is None:
            return merged
        return [_best_per_image(hits)[:wanted] for hits in merged]

    def search_vectors(self, queries: np.ndarray, *, k: int = 10, metric: Metric = "cosine",
                       exclude: Sequence[set[str]] | None = None,
                       options: Mapping[str, Number] | None = None,
                       min_grade: float | None = None, within: Iterable[str] | None = None
                       ) -> list[list[Hit]]:
        """Search with ready-made query vectors; results are one row per image, each scored
        by its best-matching vector, whose box it carries. `options` are the index's
        search options (`nprobe`, `ef`, `search_k`, `rerank`...). A calibrated collection
        adds each hit's grade; `min_grade` then keeps the hits graded at least that.
        Each vector is matched with all the indexed ones, also where regions are embedded
        at another size (`grid@160`), which `search` handles by embedding at both."""
        wanted = self._wanted(k, min_grade)
        if metric not in METRICS:
            raise LookalikeError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        rows = self._nearest(queries, wanted, exclude, options, allowed=self._allowed(within))
        return [self._finish(hits, k, metric, min_grade) for hits in rows]

    def _allowed(self, within: Iterable[str] | None) -> np.ndarray | None:
        """The vector ids a search may find (None: all)."""
        return None if within is None else self.catalog.vector_ids(within)

    def _wanted(self, k: int, min_grade: float | None) -> int:
        """How many hits a query needs before grading: the calibration sees its depth."""
        if k <= 0:
            raise LookalikeError(f"k must be a positive integer, got {k}")
        calibration = self.calibration
        if min_grade is not None and calibration is None:
            raise LookalikeError(f"{self.path}: not calibrated, so no grades to filter on; "
                                 "run `lookalike calibrate` first")
        return max(k, calibration.depth) if calibration else k

    def _nearest(self, queries: np.ndarray, wanted: int, exclude: Sequence[set[str]] | None,
                 options: Mapping[str, Number] | None, kind: VectorKind = "all",
                 allowed: np.ndarray | None = None) -> list[list[Hit]]:
        """Per query, the `wanted` best images (cosine scores), each by its best vector
        among the `kind` of vectors (whole images, regions, or all)."""
        index = self._load_index()
        results: list[list[Hit]] = [[] for _ in range(len(queries))]
        if len(index) == 0 or (allowed is not None and len(allowed) == 0):
            return results
        size = len(index) if allowed is None else min(len(index), len(allowed))
        fetch = min(size, (wanted + 1) * self._per_image)
        rows = list(range(len(queries)))
        while True:
            try:
                scores, vids = index.search(queries[rows], fetch, allowed=allowed,
                                            **dict(options or {}))
            except IndexError_ as exc:
                raise LookalikeError(f"{self.path}: {exc}") from None
            deeper = []
            owners = self.catalog.vector_owners(vids)
            for row, row_scores, row_vids in zip(rows, scores, vids, strict=True):
                results[row] = self._hits(row_scores, row_vids, owners, wanted,
                                          exclude[row] if exclude else set(), kind)
                # An image's regions, or the vectors of the other kind, can crowd a full
                # shortlist (one with -1s is all the index finds at these options).
                if len(results[row]) < wanted and row_vids[-1] >= 0:
                    deeper.append(row)
            rows = deeper
            if not rows or fetch == size:
                return results
            fetch = min(size, fetch * 4)

    def _hits(self, scores: np.ndarray, vids: np.ndarray, owners: Mapping[int, VectorOwner],
              wanted: int, skip: set[str], kind: VectorKind) -> list[Hit]:
        """One query's shortlist of vectors -> its best images, a region's score lowered by
        the region discount. A vector without an owner was removed since the index last
        followed the catalog: it is passed over."""
        keep = np.array([int(v) in owners and (kind == "all" or owners[int(v)].is_region
                                                == (kind == "regions")) for v in vids], bool)
        scores, vids = scores[keep], vids[keep]
        if self.region_discount:
            regions = np.array([owners[int(v)].is_region for v in vids], bool)
            scores = scores - self.region_discount * regions
        order = np.argsort(-scores, kind="stable")
        root = self.root or self.path
        hits: list[Hit] = []
        seen: set[str] = set()
        for score, vid in zip(scores[order], vids[order], strict=True):
            owner = owners[int(vid)]
            if owner.image_id in seen or owner.image_id in skip:
                continue
            seen.add(owner.image_id)
            hits.append(Hit(len(hits) + 1, owner.image_id,
                            str(image_path(root, owner.image_id)), float(score), owner.box))
            if len(hits) == wanted:
                break
        return hits

    def _finish(self, hits: list[Hit], k: int, metric: Metric, min_grade: float | None
                ) -> list[Hit]:
        """Grades (when calibrated), the cut to k, ranks, and scores in `metric`."""
        if self.calibration is not None:
            hits = _graded(hits, self.calibration, min_grade)
        return [replace(h, rank=rank, score=_metric_score(h.score, metric))
                for rank, h in enumerate(hits[:k], start=1)]


def _query_vectors(encoder: Encoder, items: Sequence[EncodeInput], regions: Regions | None,
                   progress: bool) -> tuple[np.ndarray, list[int]]:
    """The queries' vectors, with their `regions`' vectors after each, and the query each
    vector belongs to."""
    if regions is None:
        return encoder.encode(list(items), progress=progress), list(range(len(items)))
    # A crop query is split like a whole image: cut it out first.
    images = [decode(i[0]).crop(i[1]) if isinstance(i, tuple) else i for i in items]
    vectors: list[np.ndarray] = [np.empty((0, encoder.dim), np.float32)]
    owners: list[int] = []
    for batch in encoder.iter_batches(images, progress=progress, regions=regions):
        if batch.failures:
            raise batch.failures[0][1]
        for i, pos in enumerate(batch.positions):
            vectors += [batch.vectors[i][None], batch.region_vectors[i]]
            owners += [pos] * (1 + len(batch.region_vectors[i]))
    return np.concatenate(vectors), owners


def _verified(query: EncodeInput, hits: list[Hit], depth: int) -> list[Hit]:
    """The first `depth` hits re-ranked by verification against the query: those whose
    keypoints verify first (most inliers first), then those where the query's pixels match
    (least difference first), each boxed where the query lies; then the others in their
    order, then the hits past `depth`."""
    image = decode(query[0]).crop(query[1]) if isinstance(query, tuple) else decode(query).image
    query_points, template = keypoints(image), verification.Template(image)
    by_keypoints, by_pixels, unverified = [], [], []
    for hit in hits[:depth]:
        found = _file_evidence(hit.path)
        match = verification.verify(query_points, found[0]) if found is not None else None
        placed = (verification.locate(template, found[1])
                  if found is not None and match is None else None)
        if match is not None:
            by_keypoints.append(replace(hit, inliers=match.inliers, box=match.box))
        elif placed is not None:
            by_pixels.append(replace(hit, pixel_error=placed.error, box=placed.box))
        else:
            unverified.append(hit)
    by_keypoints.sort(key=lambda h: -(h.inliers or 0))
    by_pixels.sort(key=lambda h: h.pixel_error or 0.0)
    return by_keypoints + by_pixels + unverified + hits[depth:]


def _file_evidence(path: str) -> tuple[Keypoints, Thumbnails] | None:
    """An indexed file's keypoints and thumbnails, cached while the file is unchanged; None if
    it is gone or no longer decodes (the hit then simply stays unverified)."""
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        return None
    return _cached_evidence(path, stamp)


@functools.lru_cache(maxsize=2048)
def _cached_evidence(path: str, mtime_ns: int) -> tuple[Keypoints, Thumbnails] | None:
    try:
        image = decode(path).image
    except ImageError:
        return None
    return keypoints(image), thumbnails(image)


def _best_per_image(hits: list[Hit]) -> list[Hit]:
    """One hit an image, its best-scoring one, best first."""
    best: dict[str, Hit] = {}
    for hit in hits:
        if hit.id not in best or hit.score > best[hit.id].score:
            best[hit.id] = hit
    return sorted(best.values(), key=lambda h: -h.score)


def _graded(hits: list[Hit], calibration: Calibrator, min_grade: float | None) -> list[Hit]:
    """Hits (cosine-scored, best first) with their calibrated grades; with `min_grade`, only
    those the calibration counts as at least that grade."""
    grades, at_least = calibration.predict_scores([h.score for h in hits])
    keep = calibration.at_least(at_least, min_grade or 0.0)
    return [replace(h, grade=float(g), p_relevant=tuple(float(p) for p in ps))
            for h, g, ps, kept in zip(hits, grades, at_least, keep, strict=True) if kept]


def _metric_score(inner_product: float, metric: Metric) -> float:
    """Vectors are unit length, so cosine = dot; L2 is reported as minus the Euclidean
    distance, sqrt(2 - 2 cos), to keep 'higher is more similar'."""
    if metric == "l2":
        return -float(np.sqrt(max(0.0, 2.0 - 2.0 * inner_product)))
    return inner_product
