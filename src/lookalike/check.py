"""`lookalike check`: is a collection whole? What is damaged, and the repair.

Like `git fsck`, each part is checked on its own and every finding names what it found:
the manifest (present, readable, the same encoder as the catalog's copy of it), the catalog
(SQLite's own check), each vector the catalog still holds (its CRC-32), the index, where
the vectors live (readable, the manifest's spec, each segment's checksum, the same vectors
as the catalog) and the indexed files (still there, unchanged).

Repair restores what can be restored and re-embeds what cannot: the manifest from the
catalog's copy; a lost or damaged catalog by indexing the folder again (the damaged file is
kept aside); the index from every segment that is still whole and the vectors the catalog
holds, dropping the images whose vectors survive nowhere (or fail their checksum) so that
indexing the folder embeds them again. The result equals a clean build.
"""

from __future__ import annotations

import json
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lookalike.catalog import Catalog, DamagedVectorsError
from lookalike.collection import Collection
from lookalike.encoders import Encoder
from lookalike.errors import LookalikeError
from lookalike.folder import image_path
from lookalike.index import IndexError_, SegmentedIndex
from lookalike.index.segmented import salvage
from lookalike.live_index import BUILD_CHUNK
from lookalike.lock import WriterLock
from lookalike.manifest import FORMAT_VERSION, Manifest

CATALOG = "catalog.sqlite"


@dataclass(frozen=True)
class Finding:
    """One thing wrong: the part of the collection (manifest, catalog, vectors, index,
    files) and what is wrong with it."""

    part: str
    message: str

    def __str__(self) -> str:
        return f"{self.part}: {self.message}"


def check_collection(path: str | Path) -> list[Finding]:
    """Everything wrong with the collection at `path`; an empty list when it is whole."""
    path = Path(path)
    if not path.is_dir():
        raise LookalikeError(f"{path}: not a collection folder")
    findings: list[Finding] = []
    manifest = _read_manifest(path)
    if isinstance(manifest, str):
        if not (path / CATALOG).exists():
            raise LookalikeError(f"{path}: not a lookalike collection (no manifest.json "
                                 f"and no {CATALOG})")
        findings.append(Finding("manifest", manifest))
    try:
        catalog = _open_catalog(path)
    except LookalikeError as exc:
        return [*findings, Finding("catalog", str(exc))]
    with closing(catalog):
        if catalog.format < 2:
            return [*findings, Finding("catalog", (
                f"made by an older lookalike (format {catalog.format}); `lookalike upgrade "
                f"-c {path}` converts it"))]
        copy = catalog.get_meta("manifest")
        if isinstance(manifest, Manifest) and copy is not None:
            recorded = json.loads(copy)["encoder"]
            if recorded.get("weights_sha256") != manifest.fingerprint:
                findings.append(Finding("manifest", (
                    f"manifest.json names encoder {manifest.encoder_name!r}, but the "
                    f"catalog's vectors come from {recorded['name']!r}")))
        if isinstance(manifest, str):
            return findings
        damaged = catalog.damaged_images(manifest.dim)
        if damaged:
            findings.append(Finding("vectors", str(DamagedVectorsError(catalog.path,
                                                                       damaged))))
        findings += _index_findings(path, manifest, catalog)
        findings += _file_findings(manifest, catalog)
    return findings


def repair_collection(path: str | Path, *, encoder: Encoder | None = None,
                      wait: bool = False, progress: bool = False) -> list[str]:
    """Mend what `check_collection` finds; returns what was done, one line an action.
    `encoder` replaces loading the collection's own (tests pass theirs)."""
    path = Path(path)
    with WriterLock(path, wait=wait) as lock:  # before anything is moved or rebuilt
        return _repair(path, lock, encoder, progress)


def _repair(path: Path, lock: WriterLock, encoder: Encoder | None, progress: bool
            ) -> list[str]:
    actions: list[str] = []
    manifest = _read_manifest(path)
    catalog: Catalog | None
    try:
        catalog = _open_catalog(path)
    except LookalikeError:
        catalog = None
    if isinstance(manifest, str):
        copy = catalog.get_meta("manifest") if catalog is not None else None
        if copy is None:
            raise LookalikeError(f"{path}: cannot restore manifest.json: the catalog holds no "
                                 "copy of it; index the folder into a new collection")
        manifest = Manifest.from_dict(json.loads(copy))
        actions.append("restored manifest.json from the catalog's copy")
    if catalog is None:
        kept = []
        for suffix in ("", "-wal", "-shm"):
            old = path / f"{CATALOG}{suffix}"
            if old.exists():
                old.replace(path / f"{CATALOG}{suffix}.damaged")
                kept.append(f"{CATALOG}{suffix}.damaged")
        catalog = Catalog(path / CATALOG, create=True)
        actions.append("started a new catalog" + (f" (the damaged one is kept as "
                                                  f"{', '.join(kept)})" if kept else ""))
    if catalog.format < 2:
        catalog.migrate_format_1(held_upto=0)  # every vector pending: the index is rebuilt
        actions.append("converted the catalog from format 1")
    manifest = replace(manifest, format_version=FORMAT_VERSION)
    with Collection(path, manifest, encoder, catalog, writer=lock) as coll:
        coll.save_manifest(manifest)
        damaged = catalog.damaged_images(coll.dim)
        if damaged:
            with catalog.transaction() as db:
                catalog.remove_images(db, damaged)
            actions.append(f"dropped the damaged vectors of {len(damaged)} image(s)")
        actions += _rebuild_index(coll)
        if coll.local is not None:
            coll.local.rebuild()
            actions.append("rebuilt the local-feature index from the catalog's words")
        root = _root(manifest, catalog)
        if root is not None and root.is_dir():
            report = coll.index_folder(root, progress=progress)
            actions.append(f"indexed {root} again: {report.summary()}")
        else:
            actions.append(f"could not re-embed anything: the indexed folder {root} is gone; "
                           f"run `lookalike index FOLDER -c {path}`")
    return actions


def _rebuild_index(coll: Collection) -> list[str]:
    """A new index from what survives: the vectors the catalog holds, and those of every
    segment folder that is still readable and whole (commit or not). The images with a
    vector found in neither are dropped from the catalog, for indexing to embed again."""
    catalog, folder = coll.catalog, coll.path / "index"
    index = SegmentedIndex(coll.manifest.index, coll.dim)
    vids = catalog.vector_map()[0]
    held, vectors = catalog.held_vectors(coll.dim)
    found = [held]
    for start in range(0, len(held), BUILD_CHUNK):
        index.add(held[start:start + BUILD_CHUNK], vectors[start:start + BUILD_CHUNK])
    for ids, vectors in salvage(folder, vids[~np.isin(vids, held)]):
        index.add(ids, vectors)
        found.append(ids)
    lost = vids[~np.isin(vids, np.concatenate(found))]
    owners = sorted({o.image_id for o in catalog.vector_owners(lost).values()})
    if owners:
        index.remove(catalog.vector_ids(owners))  # their regions that did survive
        with catalog.transaction() as db:
            catalog.remove_images(db, owners)
    coll.replace_index(index, catalog.sync_point())
    return [f"rebuilt the index from {len(index)} surviving vectors"
            + (f"; the vectors of {len(owners)} image(s) were lost, to be embedded again"
               if owners else "")]


def _read_manifest(path: Path) -> Manifest | str:
    """The manifest, or what is wrong with it."""
    try:
        return Manifest.from_dict(json.loads((path / "manifest.json").read_text()))
    except FileNotFoundError:
        return "manifest.json is missing"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"manifest.json is unreadable ({exc})"


def _open_catalog(path: Path) -> Catalog:
    catalog = Catalog(path / CATALOG)
    problems = catalog.integrity_problems()
    if problems:
        catalog.close()
        raise LookalikeError(f"{path / CATALOG}: damaged ({'; '.join(problems[:3])})")
    return catalog


def _index_findings(path: Path, manifest: Manifest, catalog: Catalog) -> list[Finding]:
    folder = path / "index"
    if not folder.is_dir():
        return [Finding("index", f"{folder} is missing")]
    try:
        index = SegmentedIndex.load(folder)
    except IndexError_ as exc:
        return [Finding("index", str(exc))]
    if index.spec != manifest.index:
        return [Finding("index", f"{folder} is a {index.spec} index, the manifest says "
                                 f"{manifest.index}")]
    damage = index.damage(folder)
    if damage:
        return [Finding("index", damage)]
    try:
        generation = int(json.loads((path / "index.json").read_text())["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return [Finding("index", f"{path / 'index.json'} is missing or unreadable")]
    vids = catalog.vector_map()[0]
    if generation == catalog.generation and not np.array_equal(np.sort(index.ids), vids):
        return [Finding("index", f"{folder} holds other vectors than the catalog")]
    return []


def _file_findings(manifest: Manifest, catalog: Catalog) -> list[Finding]:
    root = _root(manifest, catalog)
    if root is None:
        return []
    if not root.is_dir():
        return [Finding("files", f"{root}: the indexed folder is gone")]
    gone, changed = [], []
    for image_id, record in catalog.images().items():
        try:
            stat = image_path(root, image_id).stat()
        except OSError:
            gone.append(image_id)
            continue
        if (stat.st_size, stat.st_mtime_ns) != (record.size, record.mtime_ns):
            changed.append(image_id)
    return [Finding("files", f"{len(ids)} indexed file(s) {what} ({_few(ids)}); "
                             "`lookalike index` or `check --repair` brings the collection "
                             "in line")
            for ids, what in ((gone, "are gone"), (changed, "changed since indexing")) if ids]


def _root(manifest: Manifest, catalog: Catalog) -> Path | None:
    root = manifest.root or catalog.get_meta("root")
    return Path(root) if root else None


def _few(ids: list[str], shown: int = 3) -> str:
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown
                                     else "")
