"""The collection's SQLite catalog: one row per image file, one row per vector.

It records which images are indexed and which vectors (ids and boxes) each has, and every
change is one transaction, so a crash at any moment leaves the last committed state.

A vector's bytes are stored once, in the index's segments. The catalog holds them only
from the moment an image is embedded until the index commits them, in `pending` (a
write-ahead log): then `absorb` deletes them, up to the index's sync point, and the freed
pages go back to the disk. Each pending vector carries a CRC-32, so damage to the file is
found (and named) instead of ranking with garbage; the segments have checksums of their own.

Format 1 kept every vector's bytes in `vectors` itself; `migrate_format_1` converts it.
"""

from __future__ import annotations

import sqlite3
import threading
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.images import Box

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,          -- path relative to the indexed root, '/' separators
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    width INTEGER,
    height INTEGER,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    error TEXT
);
CREATE INDEX IF NOT EXISTS images_sha256 ON images (sha256);
CREATE TABLE IF NOT EXISTS vectors (
    vid INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: a deleted id never comes back
    image_id TEXT NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    x0 INTEGER NOT NULL, y0 INTEGER NOT NULL, x1 INTEGER NOT NULL, y1 INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS vectors_image ON vectors (image_id);
-- The bytes of the vectors no index commit holds yet.
CREATE TABLE IF NOT EXISTS pending (
    vid INTEGER PRIMARY KEY REFERENCES vectors (vid) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    crc32 INTEGER                            -- of `vector`; NULL in catalogs made before
);
-- Every removed vector id, in order: an index follows the catalog by applying the removals
-- after its own point and adding the vectors after its last id, never by a full diff.
CREATE TABLE IF NOT EXISTS removed_vectors (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    vid INTEGER NOT NULL
);
-- Each image's visual words (`lookalike.local_features`), by its whole-image vector, for
-- collections with local features; the local index's segments follow them.
CREATE TABLE IF NOT EXISTS local_words (
    vid INTEGER PRIMARY KEY REFERENCES vectors (vid) ON DELETE CASCADE,
    words BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS vectors_removed AFTER DELETE ON vectors
BEGIN INSERT INTO removed_vectors (vid) VALUES (old.vid); END;
"""


@dataclass(frozen=True)
class SyncPoint:
    """How far a copy of the vectors (an index) has followed the catalog: the highest vector
    id ever assigned when it was taken, and the last removal applied."""

    last_vid: int = 0
    removal_seq: int = 0


@dataclass(frozen=True)
class Changes:
    """What changed after a sync point: removed vector ids, new ids and their vectors, and
    the point they bring a copy to."""

    removed: np.ndarray
    vids: np.ndarray
    vectors: np.ndarray
    point: SyncPoint


@dataclass(frozen=True)
class VectorOwner:
    image_id: str
    box: Box
    is_region: bool  # a part of the image, not the whole of it


class MissingVectorsError(LookalikeError):
    """Vectors that neither the catalog nor the index holds any more (the index was lost
    after it took them over)."""

    def __init__(self, path: Path, image_ids: list[str]) -> None:
        super().__init__(f"{path}: the vectors of {len(image_ids)} image(s) are in no index "
                         f"({_few(image_ids)}); `lookalike check -c {path.parent} --repair` "
                         "re-embeds them")
        self.image_ids = image_ids


def _few(ids: list[str], shown: int = 5) -> str:
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown
                                     else "")


class DamagedVectorsError(LookalikeError):
    """Vectors whose bytes no longer match their checksum, or that are not finite."""

    def __init__(self, path: Path, image_ids: list[str]) -> None:
        super().__init__(f"{path}: the stored vectors of {len(image_ids)} image(s) are "
                         f"damaged ({_few(image_ids)}); `lookalike check --repair` "
                         "re-embeds them")
        self.image_ids = image_ids


def checksum(vector: bytes) -> int:
    return zlib.crc32(vector)


def vector_ok(blob: bytes, crc: int | None, dim: int) -> bool:
    """The blob is `dim` float32s matching its checksum; a row from before checksums must at
    least be finite."""
    if len(blob) != 4 * dim:
        return False
    if crc is not None:
        return checksum(blob) == crc
    return bool(np.isfinite(np.frombuffer(blob, np.float32)).all())


@dataclass(frozen=True)
class ImageRecord:
    id: str
    size: int
    mtime_ns: int
    sha256: str
    width: int | None
    height: int | None
    status: str
    error: str | None


@dataclass(frozen=True)
class VectorRow:
    """One vector of an image: the whole image, or a region given by its box."""

    image_id: str
    box: Box
    vector: np.ndarray


class Catalog:
    """Open an existing catalog, or with `create` a new one. A missing, empty or foreign
    file is an error: read as an empty collection, it would have everything re-embedded
    or searches answer nothing."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        if not create and not _has_content(path):
            raise LookalikeError(
                f"{path}: the catalog is {'empty' if path.exists() else 'missing'}; "
                f"`lookalike check -c {path.parent} --repair` rebuilds it from the images")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        try:
            self._connect(new=not _has_content(path))
            tables = {r[0] for r in self.db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not create and not {"meta", "images", "vectors"} <= tables:
                raise LookalikeError(f"{path}: not a lookalike catalog (tables missing); "
                                     f"`lookalike check -c {path.parent} --repair` rebuilds it")
            self.format = 1 if "vector" in self._columns("vectors") else 2
            if self.format == 2:
                self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise LookalikeError(f"{path}: not a usable catalog ({exc}); "
                                 f"`lookalike check -c {path.parent}` says more") from None
        except BaseException:
            self.close()
            raise

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection: the threads of a server each read in transactions
        of their own (a connection's transaction is not to be shared)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        return db if db is not None else self._connect()

    def _connect(self, new: bool = False) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30,
                                 check_same_thread=False)  # `close` closes it, in any thread
        except sqlite3.Error as exc:
            raise LookalikeError(f"{self.path}: cannot open the catalog ({exc})") from None
        with self._connections_lock:
            self._connections.append(db)
        if new:  # the pages of absorbed blobs go back to the disk; set before WAL is
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        # Debian's SQLite zeroes every freed page: removing 1,000 images wrote 63 MB
        db.execute("PRAGMA secure_delete=FAST")
        self._local.db = db
        return db

    def _columns(self, table: str) -> set[str]:
        return {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}

    def migrate_format_1(self, held_upto: int) -> None:
        """Format 1 -> 2: the bytes of the vectors after `held_upto` (what a saved, whole
        index holds; 0 if none) move to `pending`, those up to it are dropped, and the
        file is compacted. Ids and the removal log are kept, so an index follows on."""
        if self.format != 1:
            return
        crc = "crc32" if "crc32" in self._columns("vectors") else "NULL"
        self.db.executescript(_SCHEMA)  # what is missing: `pending`, perhaps the removal log
        with self.transaction(bump=False) as db:
            db.execute(f"INSERT INTO pending SELECT vid, vector, {crc} FROM vectors "
                       "WHERE vid > ?", (held_upto,))
            for column in ("vector", "crc32") if crc == "crc32" else ("vector",):
                db.execute(f"ALTER TABLE vectors DROP COLUMN {column}")
            self.set_meta(db, "absorbed", str(held_upto))
        self.format = 2
        self.vacuum()

    def close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    @contextmanager
    def transaction(self, *, bump: bool = True) -> Iterator[sqlite3.Connection]:
        """All or nothing; bumps the generation that tells derived files they are stale
        (`bump=False` for housekeeping that changes no image or vector)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            if bump:
                self.db.execute(
                    "INSERT INTO meta VALUES ('generation', '1') ON CONFLICT(key) "
                    "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
                )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads within see one committed state, whatever a writer commits meanwhile."""
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            self.db.execute("COMMIT")

    def sync_point(self) -> SyncPoint:
        """The point a copy of every current vector is at."""
        seqs = dict(self.db.execute("SELECT name, seq FROM sqlite_sequence WHERE name IN "
                                    "('vectors', 'removed_vectors')").fetchall())
        return SyncPoint(int(seqs.get("vectors", 0)), int(seqs.get("removed_vectors", 0)))

    def changes_since(self, point: SyncPoint, dim: int) -> Changes | None:
        """The removals and new vectors after `point`, read in one snapshot; their cost
        follows the change, not the catalog. None when the removal log no longer reaches
        back that far (it was pruned), or when vectors after `point` are no longer in the
        catalog (the index took them over): the copy must then read the index's commit."""
        with self.snapshot():
            if (point.removal_seq < int(self.get_meta("removals_pruned") or 0)
                    or point.last_vid < self.absorbed):
                return None
            end = self.sync_point()
            removed = np.array([r[0] for r in self.db.execute(
                "SELECT vid FROM removed_vectors WHERE seq > ? ORDER BY seq",
                (point.removal_seq,))], np.int64)
            rows = self._pending_after(point.last_vid)
        damaged = sorted({r[1] for r in rows if not vector_ok(r[2], r[3], dim)})
        if damaged:
            raise DamagedVectorsError(self.path, damaged)
        vids = np.array([r[0] for r in rows], np.int64)
        vectors = np.frombuffer(b"".join(r[2] for r in rows), np.float32).reshape(-1, dim)
        return Changes(removed, vids, vectors, end)

    @property
    def absorbed(self) -> int:
        """The last vector id whose bytes the index holds instead of the catalog."""
        return int(self.get_meta("absorbed") or 0)

    def absorb(self, upto: int) -> None:
        """Drop the pending bytes of vectors up to `upto`, which a saved index commit
        holds: each vector's bytes stay on disk once. Costs what arrived since the last
        call."""
        start = self.absorbed
        if upto <= start:
            return
        with self.transaction(bump=False) as db:
            db.execute("DELETE FROM pending WHERE vid <= ?", (upto,))
            self.set_meta(db, "absorbed", str(upto))
        self.db.executescript("PRAGMA incremental_vacuum;")  # all of it (execute: a page)

    def vacuum(self) -> None:
        """Rewrite the file without its free pages, returning later ones as they come
        (after an upgrade emptied the blobs)."""
        self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self.db.execute("VACUUM")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the file shrinks now

    def prune_removals(self, upto: int) -> None:
        """Forget removals up to `upto`, which every saved copy has applied."""
        with self.transaction(bump=False) as db:
            db.execute("DELETE FROM removed_vectors WHERE seq <= ?", (upto,))
            self.set_meta(db, "removals_pruned", str(upto))

    def vector_ids(self, image_ids: Iterable[str]) -> np.ndarray:
        """The vector ids of these images (a search filter: only they can be found)."""
        wanted = sorted(set(image_ids))
        found: list[int] = []
        for start in range(0, len(wanted), 10_000):
            chunk = wanted[start:start + 10_000]
            found += [r[0] for r in self.db.execute(
                f"SELECT vid FROM vectors WHERE image_id IN ({','.join('?' * len(chunk))})",
                chunk)]
        return np.array(sorted(found), np.int64)

    def vector_owners(self, vids: np.ndarray) -> dict[int, VectorOwner]:
        """The image and box of each vector id that still exists (a search's candidates:
        looked up by primary key, so opening a collection builds no map of every vector)."""
        owners: dict[int, VectorOwner] = {}
        unique = np.unique(vids[vids >= 0]).tolist()
        for start in range(0, len(unique), 10_000):
            chunk = unique[start:start + 10_000]
            rows = self.db.execute(
                "SELECT v.vid, v.image_id, v.x0, v.y0, v.x1, v.y1, i.width, i.height "
                f"FROM vectors v JOIN images i ON i.id = v.image_id WHERE v.vid IN "
                f"({','.join('?' * len(chunk))})", chunk)
            for vid, image_id, x0, y0, x1, y1, width, height in rows:
                owners[vid] = VectorOwner(image_id, (x0, y0, x1, y1),
                                          (x0, y0, x1, y1) != (0, 0, width, height))
        return owners

    @property
    def generation(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def count_ok_images(self) -> int:
        sql = "SELECT COUNT(*) FROM images WHERE status = 'ok'"
        return int(self.db.execute(sql).fetchone()[0])

    def is_empty(self) -> bool:
        return self.db.execute("SELECT 1 FROM images LIMIT 1").fetchone() is None

    def count_vectors(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def images(self) -> dict[str, ImageRecord]:
        rows = self.db.execute(
            "SELECT id, size, mtime_ns, sha256, width, height, status, error FROM images"
        )
        return {r[0]: ImageRecord(*r) for r in rows}

    def images_named(self, ids: Iterable[str]) -> dict[str, ImageRecord]:
        """The records of these ids (those the catalog has), in one query a thousand."""
        wanted = sorted(set(ids))
        found: dict[str, ImageRecord] = {}
        for start in range(0, len(wanted), 1000):
            chunk = wanted[start:start + 1000]
            rows = self.db.execute(
                "SELECT id, size, mtime_ns, sha256, width, height, status, error FROM images "
                f"WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            found.update((r[0], ImageRecord(*r)) for r in rows)
        return found

    def images_in(self, scopes: Iterable[str]) -> dict[str, ImageRecord]:
        """The images an id names, or that lie under an id prefix ending in `/`: a range
        of the primary key each, so the cost follows what is asked, not the catalog."""
        found: dict[str, ImageRecord] = {}
        columns = "id, size, mtime_ns, sha256, width, height, status, error"
        for scope in scopes:
            if scope == "":
                return self.images()
            if scope.endswith("/"):  # '/' + 1 is '0': [prefix, prefix-with-0) holds it all
                rows = self.db.execute(f"SELECT {columns} FROM images WHERE id >= ? AND "
                                       "id < ?", (scope, scope[:-1] + "0"))
            else:
                rows = self.db.execute(f"SELECT {columns} FROM images WHERE id = ?", (scope,))
            found.update((r[0], ImageRecord(*r)) for r in rows)
        return found

    def image(self, image_id: str) -> ImageRecord | None:
        row = self.db.execute(
            "SELECT id, size, mtime_ns, sha256, width, height, status, error FROM images "
            "WHERE id = ?", (image_id,)
        ).fetchone()
        return ImageRecord(*row) if row else None

    def put_image(self, db: sqlite3.Connection, record: ImageRecord, rows: Iterable[VectorRow],
                  local_words: bytes | None = None) -> None:
        """Insert or replace an image and all its vectors (the whole image first), and its
        visual words when given."""
        db.execute("DELETE FROM vectors WHERE image_id = ?", (record.id,))
        db.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (
            record.id, record.size, record.mtime_ns, record.sha256, record.width,
            record.height, record.status, record.error,
        ))
        for row in rows:
            vid = db.execute("INSERT INTO vectors (image_id, x0, y0, x1, y1) VALUES "
                             "(?, ?, ?, ?, ?)", (row.image_id, *row.box)).lastrowid
            blob = np.asarray(row.vector, np.float32).tobytes()
            db.execute("INSERT INTO pending VALUES (?, ?, ?)", (vid, blob, checksum(blob)))
            if local_words is not None:
                db.execute("INSERT INTO local_words VALUES (?, ?)", (vid, local_words))
                local_words = None

    def local_words_after(self, vid: int) -> list[tuple[int, bytes]]:
        """(whole-image vector id, visual words) of the images committed after `vid`."""
        return self.db.execute("SELECT vid, words FROM local_words WHERE vid > ? ORDER BY vid",
                               (vid,)).fetchall()

    def local_words_of(self, image_id: str) -> bytes | None:
        row = self.db.execute("SELECT l.words FROM local_words l JOIN vectors v ON v.vid = l.vid "
                              "WHERE v.image_id = ?", (image_id,)).fetchone()
        return row[0] if row else None

    def remove_images(self, db: sqlite3.Connection, ids: Iterable[str]) -> None:
        db.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in ids])

    def vector_boxes(self, image_id: str) -> list[tuple[int, Box]]:
        """The image's vector ids and boxes, the whole image first."""
        rows = self.db.execute("SELECT vid, x0, y0, x1, y1 FROM vectors WHERE image_id = ? "
                               "ORDER BY vid", (image_id,))
        return [(r[0], (r[1], r[2], r[3], r[4])) for r in rows]

    def ok_image_with_hash(self, sha256: str) -> str | None:
        row = self.db.execute(
            "SELECT id FROM images WHERE sha256 = ? AND status = 'ok' LIMIT 1", (sha256,)
        ).fetchone()
        return row[0] if row else None

    def vector_chunks(self, dim: int, rows: int = 50_000
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every vector as (vids, vectors) chunks of `rows`, in vid order, each checked
        against its checksum: building an index over a million vectors holds one chunk
        of the catalog's bytes at a time, not all of them twice."""
        self._check_holds_all()
        last = 0
        while True:
            chunk = self._pending_after(last, rows)
            if not chunk:
                return
            damaged = sorted({r[1] for r in chunk if not vector_ok(r[2], r[3], dim)})
            if damaged:
                raise DamagedVectorsError(self.path, damaged)
            vids = np.array([r[0] for r in chunk], np.int64)
            yield vids, np.frombuffer(b"".join(r[2] for r in chunk), np.float32
                                      ).reshape(-1, dim)
            last = int(vids[-1])

    def _check_holds_all(self) -> None:
        """Only a catalog that still holds every vector can rebuild an index alone."""
        if self.absorbed:
            missing = [r[0] for r in self.db.execute(
                "SELECT DISTINCT image_id FROM vectors WHERE vid <= ? LIMIT 6",
                (self.absorbed,))]
            if missing:
                raise MissingVectorsError(self.path, missing)

    def held_vectors(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(vids, vectors) of the vectors the catalog still holds (not yet absorbed), each
        checked against its checksum."""
        rows = self._pending_after(self.absorbed)
        damaged = sorted({r[1] for r in rows if not vector_ok(r[2], r[3], dim)})
        if damaged:
            raise DamagedVectorsError(self.path, damaged)
        vids = np.array([r[0] for r in rows], np.int64)
        return vids, np.frombuffer(b"".join(r[2] for r in rows), np.float32).reshape(-1, dim)

    def damaged_images(self, dim: int) -> list[str]:
        """The images any of whose vectors held here fail their checksum (a full read of
        what is not absorbed yet)."""
        rows = self._pending_after(self.absorbed)
        return sorted({r[1] for r in rows if not vector_ok(r[2], r[3], dim)})

    def _pending_after(self, vid: int, limit: int = -1) -> list[tuple[int, str, bytes, int]]:
        """(vid, image id, bytes, crc32) of the pending vectors after `vid`, in order."""
        return self.db.execute(
            "SELECT p.vid, v.image_id, p.vector, p.crc32 FROM pending p JOIN vectors v "
            "ON v.vid = p.vid WHERE p.vid > ? ORDER BY p.vid LIMIT ?", (vid, limit)).fetchall()

    def integrity_problems(self) -> list[str]:
        """What SQLite's own check finds wrong in the file (nothing: an empty list)."""
        try:
            found = [r[0] for r in self.db.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            return [str(exc)]
        return [] if found == ["ok"] else found

    def vector_map(self) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(vids, image ids, boxes) without the vectors."""
        rows = self.db.execute(
            "SELECT vid, image_id, x0, y0, x1, y1 FROM vectors ORDER BY vid"
        ).fetchall()
        vids = np.array([r[0] for r in rows], np.int64)
        boxes = np.array([r[2:6] for r in rows], np.int64).reshape(-1, 4)
        return vids, [r[1] for r in rows], boxes


def _has_content(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False
