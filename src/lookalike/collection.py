"""A persistent, incrementally updated collection of images and their vectors: the facade
over its parts, each in a module of its own and passed in.

Layout of a collection folder:

    manifest.json    what the vectors mean and how they are indexed (`lookalike.manifest`)
    catalog.sqlite   images and their vectors' ids and boxes (`lookalike.catalog`)
    index/           the search index in segments, where the vectors live, memory-mapped
    index.json       the catalog generation the saved index reflects (`lookalike.live_index`)
    lock             held by the one process writing (`lookalike.lock`)

Indexing is `lookalike.folder_sync`; turning an index's candidates into ranked, graded and
verified hits is `lookalike.ranking`. The catalog keeps a copy of the manifest, and the
manifest the indexed folder, so that either can be rebuilt from the other
(`lookalike check --repair`). A collection of an older format is upgraded in place
(`upgrade`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lookalike.calibration import Calibrator
from lookalike.catalog import Catalog, ImageRecord, SyncPoint, VectorOwner, VectorRow
from lookalike.encoders import (
    DEFAULT_ENCODER,
    BatchEncoder,
    EncodeInput,
    Encoder,
    cached_encoder,
    create_encoder,
)
from lookalike.encoders.model_folder import is_model_folder
from lookalike.errors import LookalikeError
from lookalike.folder import FolderScan, image_path, scan_folder, scan_paths
from lookalike.folder_sync import IndexReport, sync_files
from lookalike.hits import Hit
from lookalike.images import Box, ImageSource, decode
from lookalike.index import IndexError_, SegmentedIndex, create_index
from lookalike.index.spec import Number
from lookalike.live_index import LiveIndex
from lookalike.local_features import QUERY_WORDS, describe, shipped_vocabulary
from lookalike.local_index import LocalIndex
from lookalike.lock import WriterLock
from lookalike.manifest import FORMAT_VERSION, Manifest
from lookalike.ranking import (
    METRICS,
    Metric,
    agrees,
    best_per_image,
    graded,
    metric_score,
    verified,
)
from lookalike.regions import Regions, parse_regions

VectorKind = Literal["all", "whole", "regions"]
__all__ = ["Collection", "Hit", "IndexReport", "Metric"]


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


def _names_recorded(path: Path, manifest: Manifest, name: str) -> bool:
    """`name` is the encoder the manifest records: the same name, or the same trained model
    folder (by its place relative to the collection, or its path)."""
    if name == manifest.encoder_name:
        return True
    relative = manifest.encoder.get("model_folder")
    given = Path(name).expanduser().resolve()
    return relative is not None and given in ((path / relative).resolve(),
                                              Path(manifest.encoder_name))


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


class Collection:
    """Open with `Collection.open(path)` or `Collection.create(path, encoder=...)`."""

    def __init__(self, path: Path, manifest: Manifest, encoder: Encoder | None = None,
                 catalog: Catalog | None = None, writer: WriterLock | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.catalog = catalog or Catalog(path / "catalog.sqlite")
        self.writer = writer or WriterLock(path)
        self.index = LiveIndex(path, self.catalog, manifest.index, manifest.dim, self.writer,
                               has_regions=manifest.regions != "none")
        self._encoder = encoder
        self.upgraded: str | None = None  # what `open(upgrade=True)` did

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, *, encoder: str | Encoder = DEFAULT_ENCODER,
               index: str = "flat", regions: str = "none",
               region_discount: float | None = None, local_features: bool = False
               ) -> Collection:
        """A new, empty collection; `regions` (see `lookalike.regions`) picks the parts of
        each image that get a vector of their own besides the whole image, and
        `region_discount` how much less a region's match counts (the strategy's default
        when None); `local_features` adds a local-feature index (`lookalike.local_index`),
        which verified searches use to find small details."""
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
        described = enc.describe()
        if is_model_folder(Path(enc.name)):  # found again beside the collection if both move
            described["model_folder"] = os.path.relpath(enc.name, path.resolve())
        manifest = Manifest(encoder=described, index=index, regions=regions,
                            region_discount=region_discount, local_features=local_features)
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
        manifest = Manifest.read(path)
        loaded = encoder if isinstance(encoder, Encoder) else None
        name = loaded.name if loaded else encoder if isinstance(encoder, str) else None
        if name is not None and (not _names_recorded(path, manifest, name) or (
                loaded and loaded.fingerprint != manifest.fingerprint)):
            raise LookalikeError(
                f"{path}: built with encoder {manifest.encoder_name!r}, cannot use {name!r}; "
                "create a new collection for another encoder"
            )
        if not upgrade:
            manifest.check_current(path)
        coll = cls(path, manifest, loaded)
        if upgrade:
            with coll.writing(wait=wait):
                coll.upgraded = coll.upgrade()
        return coll

    @classmethod
    def open_or_create(cls, path: str | Path, *, encoder: str | None = None,
                       index: str = "flat", regions: str = "none",
                       region_discount: float | None = None, local_features: bool = False,
                       upgrade: bool = False, wait: bool = False) -> Collection:
        if (Path(path) / "manifest.json").exists():
            return cls.open(path, encoder=encoder, upgrade=upgrade, wait=wait)
        return cls.create(path, encoder=encoder or DEFAULT_ENCODER, index=index,
                          regions=regions, region_discount=region_discount,
                          local_features=local_features)

    def close(self) -> None:
        self.catalog.close()

    def writing(self, *, wait: bool = False) -> WriterLock:
        """`with coll.writing(wait=...):` holds the collection's writer lock: a second
        writer waits (`wait`) or stops with a message. Every method that writes takes it
        too (re-entering is free)."""
        self.writer.wait = wait
        return self.writer

    def save_manifest(self, manifest: Manifest) -> None:
        """manifest.json, and its copy in the catalog (what `check --repair` restores)."""
        with self.catalog.transaction() as db:
            self.catalog.set_meta(db, "manifest", json.dumps(manifest.to_dict()))
        manifest.write(self.path / "manifest.json")
        self.manifest = manifest

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @functools.cached_property
    def local(self) -> LocalIndex | None:
        """The local-feature index, if the collection has one (its vocabulary, 0.25 s to
        load, loads on first use: a search that does not verify needs none)."""
        if not self.manifest.local_features:
            return None
        return LocalIndex(self.path, self.catalog, shipped_vocabulary())

    @property
    def encoder(self) -> Encoder:
        """Loaded on first use (searching by id needs none); checked against the manifest."""
        if self._encoder is None:
            recorded = self.manifest.encoder
            enc = cached_encoder(recorded) or create_encoder(self._encoder_name())
            if enc.fingerprint != self.manifest.fingerprint:
                raise LookalikeError(
                    f"{self.path}: the weights of {self.manifest.encoder_name!r} differ from "
                    "those the collection was built with; re-create it"
                )
            self._encoder = enc
        return self._encoder

    def _encoder_name(self) -> str:
        """The recorded encoder; a trained model folder where it lies relative to the
        collection (both may have moved), else where it was."""
        name = self.manifest.encoder_name
        relative = self.manifest.encoder.get("model_folder")
        if relative is None:
            return name
        moved = (self.path / relative).resolve()
        if is_model_folder(moved):
            return str(moved)
        if is_model_folder(Path(name)):
            return name
        raise LookalikeError(f"{self.path}: its model folder is gone (not at {moved} nor at "
                             f"{name}); put it back or re-create the collection")

    @property
    def dim(self) -> int:
        return self.manifest.dim

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
            if self.manifest.root != str(root.resolve()):
                self.save_manifest(replace(self.manifest, root=str(root.resolve())))
            return self._sync(scan, self.catalog.images(), batch_size, progress, after_batch,
                              embed_with)

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
            return self._sync(scan, self.catalog.images_in(scopes), batch_size, progress,
                              after_batch, embed_with)

    def _sync(self, scan: FolderScan, known: Mapping[str, ImageRecord], batch_size: int,
              progress: bool, after_batch: Callable[[int], None] | None,
              embed_with: BatchEncoder | None) -> IndexReport:
        """The model loads only if something is to be embedded."""
        return sync_files(scan, known, self.catalog, self.index,
                          lambda: embed_with or self.encoder, self.regions, local=self.local,
                          batch_size=batch_size, progress=progress, after_batch=after_batch)

    def save_index(self) -> None:
        """Persist the index for the current catalog state (a no-op when it is saved)."""
        self.index.save()

    def replace_index(self, index: SegmentedIndex, point: SyncPoint) -> None:
        """Take `index`, which holds the catalog's vectors up to `point`, as the index, and
        save it (what a repair rebuilt from the parts that survived)."""
        self.index.replace(index, point)

    @property
    def format_version(self) -> int:
        return self.manifest.format_version

    @property
    def regions(self) -> Regions | None:
        """What parts of each image have vectors of their own (None: whole images only)."""
        return parse_regions(self.manifest.regions)

    def upgrade(self) -> str | None:
        """Bring a collection of an older format to this one; what was done, or None when
        it is current. Format 1 -> 2: the catalog hands the vectors that the saved index
        holds (when it is whole) over to it, keeps the others pending, and is compacted."""
        old = self.format_version
        if old >= FORMAT_VERSION:
            return None
        with self.writer:
            before = self.catalog.path.stat().st_size
            point = self.index.whole_saved_point()
            self.catalog.migrate_format_1(point.last_vid if point else 0)
            self.save_manifest(replace(self.manifest, format_version=FORMAT_VERSION))
            after = self.catalog.path.stat().st_size
        return (f"{self.path}: upgraded from format {old} to {FORMAT_VERSION} (the catalog "
                f"went from {before / 1e6:.1f} MB to {after / 1e6:.1f} MB)")

    @property
    def region_discount(self) -> float:
        """How much lower a region's match counts than the same match of a whole image, so
        that whole-image queries keep ranking by whole images while a detail still finds
        the image that contains it."""
        return self.manifest.region_discount

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
            self.save_manifest(replace(self.manifest, index=spec))
            self.index.switch(spec)

    def load(self) -> None:
        """Read the index now, not at the first search (a server does, when it starts)."""
        self.index.current()

    def image_vectors(self, image_id: str) -> list[VectorRow]:
        """The image's vectors as the index holds them: the whole image first, then its
        regions (none for an id not in the collection)."""
        boxes = self.catalog.vector_boxes(image_id)
        if not boxes:
            return []
        with self.index.reading() as index:
            ids, vectors = index.vectors_of(np.array([v for v, _ in boxes], np.int64))
        found = dict(zip(ids.tolist(), vectors, strict=True))
        return [VectorRow(image_id, box, found[vid]) for vid, box in boxes if vid in found]

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every vector id and vector (for benchmarks and exports; memory-mapped rows are
        read into memory)."""
        return self.index.current().live()

    def index_info(self) -> dict[str, Any]:
        """The index's size and memory, and vectors an image, for reports (with the
        local-feature index's images, points and bytes when there is one)."""
        info = self.index.current().describe()
        local = self.local.describe() if self.local else {}
        return {**info, **local, "images": len(self),
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
        allowed = self._allowed(within)
        regions = parse_regions(query_regions)
        rows = self._query_rows(items, regions, wanted, exclude, options, progress, allowed)
        if verify:
            rows = [verified(item, hits, verify, self._local_matches(
                        item, verify, exclude[n] if exclude else set(), allowed, regions,
                        options))
                    for n, (item, hits) in enumerate(zip(items, rows, strict=True))]
        return [self._finish(hits, k, metric, min_grade) for hits in rows]

    def _local_matches(self, item: EncodeInput, depth: int, skip: set[str],
                       allowed: np.ndarray | None, regions: Regions | None,
                       options: Mapping[str, Number] | None) -> dict[str, Hit]:
        """The images the local-feature index verifies the query in (none without one),
        scored as the search scores them, with their inliers and boxes."""
        if self.local is None:
            return {}
        image = decode(item[0]).crop(item[1]) if isinstance(item, tuple) else \
            decode(item).image
        words = self.local.vocabulary.quantise(describe(image), QUERY_WORDS)
        matches = self.local.search(words, depth)
        owners = self.catalog.vector_owners(np.array([m.vid for m in matches], np.int64))
        permitted = None if allowed is None else set(allowed.tolist())
        root = self.root or self.path
        found = {owners[m.vid].image_id: m for m in matches
                 if m.vid in owners and owners[m.vid].image_id not in skip
                 and (permitted is None or m.vid in permitted)
                 and agrees(image, str(image_path(root, owners[m.vid].image_id)), m.transform)}
        if not found:
            return {}
        scored = self._query_rows([item], regions, len(found), None, options, False,
                                  self.catalog.vector_ids(found))[0]
        return {h.id: replace(h, inliers=found[h.id].inliers, box=found[h.id].box)
                for h in scored if h.id in found}

    @property
    def _region_size(self) -> int | None:
        return self.regions.size if self.regions else None

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
        return [best_per_image(hits)[:wanted] for hits in merged]

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
        with self.index.reading() as index:  # other threads may search meanwhile
            results: list[list[Hit]] = [[] for _ in range(len(queries))]
            if len(index) == 0 or (allowed is not None and len(allowed) == 0):
                return results
            size = len(index) if allowed is None else min(len(index), len(allowed))
            fetch = min(size, (wanted + 1) * self.index.per_image)
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
            hits = graded(hits, self.calibration, min_grade)
        return [replace(h, rank=rank, score=metric_score(h.score, metric))
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


