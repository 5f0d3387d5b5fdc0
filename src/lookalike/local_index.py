"""The local-feature index: which images share enough local features with a query, and
where the query lies in them (issue 20: a 10 % detail that no vector finds).

Every image's visual words (`lookalike.local_features`) are kept in the catalog, committed
with the image and removed with it. For search they are laid out as an inverted file (for
each word, the points of every image that has it) in immutable segments:

    local/index.json          the segments, the vocabulary and the last vector id covered
    local/seg-FIRST-LAST/     one segment: the images whose whole-image vector ids lie in
                              FIRST..LAST (`vids`, `sizes`), their points sorted by word
                              (`offsets` into `rows`, `signatures`, `points`), and each
                              word's number of images (`df`)

A save turns the images committed since the last segment into a new one and merges the
newest segments while the newer is at least half the older's size, so a point is rewritten
O(log N) times and a save costs what changed. A reader searches the segments, memory-mapped,
plus the images committed after them, read from the catalog.

A query's points vote for images (Hamming embedding with selective weights: Jégou et al.
2008, Tolias et al. 2013): a vote needs the same word and signatures within
`MAX_HAMMING` bits, weighs idf^2 x exp(-h^2 / SIGMA^2), and each query point votes once an
image. The best-voted images are verified by RANSAC on the matched points' positions (a
similarity transform, as `lookalike.verification` does with ORB), which gives the inliers
and the box where the query lies, without reading the image.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lookalike import verification
from lookalike.atomic import atomic_write
from lookalike.catalog import Catalog
from lookalike.errors import LookalikeError
from lookalike.images import Box
from lookalike.local_features import Vocabulary, Words

MAX_HAMMING = 24        # of 64 bits: signatures further apart are not the same feature
SIGMA = 16.0            # a vote's weight falls with its Hamming distance
VERIFIED = 50           # the best-voted images that RANSAC checks
MIN_INLIERS = 4         # fewer agreeing points than this is chance (the pixels then decide:
                        # `ranking.agrees`; a 10 % detail shares 3-10 points with its source)
MIN_SIDE = 24           # a placement smaller than this (pixels, short side) is degenerate
REPROJECTION = 0.015    # RANSAC inlier distance, of the candidate's long side
TURN_BIN, SCALE_BIN = 16, 8  # pose bins: 1/16 of a turn, half an octave
SCALE_RANGE = (0.02, 10.0)  # the query's scale in the candidate: outside is degenerate
ARRAYS = ("vids", "sizes", "offsets", "rows", "signatures", "points", "poses", "df")


@dataclass(frozen=True)
class LocalMatch:
    """An image the query's local features verify in: its whole-image vector id, the
    query's votes for it, the points that agree, the query's box in its pixels, and the
    similarity transform (2 x 3) from the query's pixels to its."""

    vid: int
    votes: float
    inliers: int
    box: Box
    transform: np.ndarray


class _Segment:
    """The inverted file of some images (arrays as listed in `ARRAYS`)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.vids = arrays["vids"]
        self.sizes = arrays["sizes"]
        self.offsets = arrays["offsets"]
        self.rows = arrays["rows"]
        self.signatures = arrays["signatures"]
        self.points = arrays["points"]  # of each image's size, x 65535
        self.poses = arrays["poses"]
        self.df = arrays["df"]

    @classmethod
    def build(cls, items: list[tuple[int, Words]], words: int) -> _Segment:
        """A segment of these images (whole-image vector id, words)."""
        every = [w for _, w in items]
        relative = [w.points / np.maximum(np.array(w.size, np.float32), 1) for w in every]
        return cls._sorted(
            np.array([vid for vid, _ in items], np.int64),
            np.array([w.size for w in every], np.int32).reshape(-1, 2),
            np.concatenate([w.words[:, 0] for w in every] or [np.empty(0, np.int64)]),
            np.repeat(np.arange(len(every), dtype=np.int32), [len(w) for w in every]),
            np.concatenate([w.signatures[:, 0] for w in every] or [np.empty(0, np.uint64)]),
            np.round(np.clip(np.concatenate(relative or [np.empty((0, 2))]), 0, 1) * 65535
                     ).astype(np.uint16),
            np.concatenate([w.poses for w in every] or [np.empty((0, 2), np.uint8)]), words)

    @classmethod
    def merge(cls, parts: list[tuple[_Segment, np.ndarray]], words: int) -> _Segment:
        """One segment of the images that `keep` masks (over `vids`) in each part."""
        columns: list[list[np.ndarray]] = [[] for _ in range(7)]
        base = 0
        for segment, keep in parts:
            rows = np.asarray(segment.rows)
            held = keep[rows]
            renumbered = np.cumsum(keep) - 1 + base  # each kept image's row in the merge
            word = np.repeat(np.arange(words), np.diff(np.asarray(segment.offsets)))
            for column, values in zip(columns, (
                    np.asarray(segment.vids)[keep], np.asarray(segment.sizes)[keep],
                    word[held], renumbered[rows[held]].astype(np.int32),
                    np.asarray(segment.signatures)[held], np.asarray(segment.points)[held],
                    np.asarray(segment.poses)[held]), strict=True):
                column.append(values)
            base += int(keep.sum())
        vids, sizes, word, rows, signatures, points, poses = (np.concatenate(c)
                                                              for c in columns)
        return cls._sorted(vids, sizes, word, rows, signatures, points, poses, words)

    @classmethod
    def _sorted(cls, vids: np.ndarray, sizes: np.ndarray, word: np.ndarray, rows: np.ndarray,
                signatures: np.ndarray, points: np.ndarray, poses: np.ndarray, words: int
                ) -> _Segment:
        """The segment of these postings (each with its word and image row), by word."""
        order = np.argsort(word, kind="stable")
        pairs = np.unique(word.astype(np.int64) * max(1, len(vids)) + rows)  # (word, image)
        return cls({"vids": vids, "sizes": sizes,
                    "offsets": np.searchsorted(word[order], np.arange(words + 1)),
                    "rows": rows[order], "signatures": signatures[order],
                    "points": points[order], "poses": poses[order],
                    "df": np.bincount(pairs // max(1, len(vids)), minlength=words
                                      ).astype(np.int32)})

    def save(self, folder: Path) -> None:
        staging = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in ARRAYS:
            np.save(staging / f"{name}.npy", getattr(self, name))
        for name in ARRAYS:
            with open(staging / f"{name}.npy", "rb+") as f:
                os.fsync(f.fileno())
        _sync_folder(staging)
        os.replace(staging, folder)
        _sync_folder(folder.parent)  # the rename is on disk before index.json names it

    @classmethod
    def load(cls, folder: Path) -> _Segment:
        return cls({name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ARRAYS})

    def __len__(self) -> int:
        return len(self.vids)


def _sync_folder(folder: Path) -> None:
    """fsync a folder's entries (Windows cannot open a folder, nor needs to)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _State:
    """What local/index.json records: the segments, oldest first, and the last vector id
    they cover."""

    segments: tuple[str, ...] = ()
    last_vid: int = 0


@dataclass(frozen=True)
class _Votes:
    """One segment's matches with a query: query point, image row, posting, and weight."""

    query: np.ndarray
    image: np.ndarray
    posting: np.ndarray
    weight: np.ndarray


class LocalIndex:
    """The local-feature index of the collection at `folder`, following `catalog`."""

    def __init__(self, folder: Path, catalog: Catalog, vocabulary: Vocabulary) -> None:
        """Words of another vocabulary than the catalog's would match nonsense: an error."""
        recorded = catalog.get_meta("local_vocabulary")
        if recorded is not None and recorded != vocabulary.fingerprint:
            raise LookalikeError(
                f"{folder}: its local features were made with another visual vocabulary "
                f"({recorded}, this lookalike has {vocabulary.fingerprint}); re-create the "
                "collection to search them")
        self.folder = folder / "local"
        self.catalog = catalog
        self.vocabulary = vocabulary
        self._lock = threading.Lock()
        self._loaded: tuple[str, list[_Segment]] | None = None  # (index.json text, segments)
        self._last = 0  # the last vector id the loaded segments cover
        self._tail: list[_Segment] = []  # the images committed after the saved segments,
        self._tail_last = 0  # ... up to this vector id
        self._generation = -1  # the catalog's, when the tail was last followed

    # -- writing ------------------------------------------------------------------------

    def claim(self) -> None:
        """Record in the catalog which vocabulary its words are of (before any is written)."""
        if self.catalog.get_meta("local_vocabulary") is None:
            with self.catalog.transaction(bump=False) as db:
                self.catalog.set_meta(db, "local_vocabulary", self.vocabulary.fingerprint)

    def _state(self, text: str | None = None) -> _State:
        """What index.json says (`text`, when read already); nothing when it is missing,
        made with another vocabulary, or ahead of the catalog (a catalog made anew): the
        segments are then rebuilt from the catalog."""
        try:
            data = json.loads(text if text is not None
                              else (self.folder / "index.json").read_text())
            state = _State(tuple(map(str, data["segments"])), int(data["last_vid"]))
        except (OSError, ValueError, KeyError, TypeError):
            return _State()
        if (data.get("vocabulary") != self.vocabulary.fingerprint
                or state.last_vid > self.catalog.sync_point().last_vid):
            return _State()
        return state

    def rebuild(self) -> None:
        """Segments made anew from the catalog's words (what `check --repair` does)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.save()

    def save(self) -> None:
        """Make a segment of the images committed since the last one, and merge (the
        collection's writer lock held)."""
        state = self._state()
        segments = list(state.segments)
        new = self.catalog.local_words_after(state.last_vid)
        if not new:
            return
        first, last = new[0][0], new[-1][0]
        self._save(f"seg-{first:012d}-{last:012d}", _Segment.build(
            [(vid, Words.from_bytes(blob)) for vid, blob in new], len(self.vocabulary)))
        segments.append(f"seg-{first:012d}-{last:012d}")
        while len(segments) >= 2 and (
                2 * self._size(segments[-1]) >= self._size(segments[-2])):
            older, newer = segments[-2], segments[-1]
            parts = [_Segment.load(self.folder / name) for name in (older, newer)]
            merged = f"seg-{older[4:16]}-{newer[17:]}"  # removed images are dropped here
            self._save(merged, _Segment.merge(
                [(part, self._alive(np.asarray(part.vids))) for part in parts],
                len(self.vocabulary)))
            segments[-2:] = [merged]
        with atomic_write(self.folder / "index.json") as fh:
            json.dump({"vocabulary": self.vocabulary.fingerprint, "segments": segments,
                       "last_vid": last}, fh)
        for stale in self.folder.iterdir():
            if stale.name.startswith("seg-") and stale.name not in segments:
                shutil.rmtree(stale, ignore_errors=True)

    def _save(self, name: str, segment: _Segment) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.folder / name, ignore_errors=True)  # left by a save cut short
        segment.save(self.folder / name)

    def _size(self, name: str) -> int:
        return int(np.load(self.folder / name / "vids.npy", mmap_mode="r").shape[0])

    def _alive(self, vids: np.ndarray) -> np.ndarray:
        owners = self.catalog.vector_owners(np.asarray(vids, np.int64))
        return np.array([int(v) in owners for v in vids], bool)

    def describe(self) -> dict[str, int]:
        """Images and points in the saved segments, and the bytes they take on disk, with
        the catalog's copy of the words (16 bytes a point)."""
        state = self._state()
        images = points = size = 0
        for name in state.segments:
            folder = self.folder / name
            images += int(np.load(folder / "vids.npy", mmap_mode="r").shape[0])
            points += int(np.load(folder / "rows.npy", mmap_mode="r").shape[0])
            size += sum(f.stat().st_size for f in folder.iterdir())
        return {"local_images": images, "local_points": points,
                "local_bytes": size + 16 * points + 12 * images}

    # -- reading ------------------------------------------------------------------------

    def _segments(self) -> list[_Segment]:
        """The saved segments (loaded again when a save changed them), and the images
        committed after them (read again when the catalog changed)."""
        with self._lock:
            for attempt in range(3):  # a save may delete what an older index.json names
                try:
                    text = (self.folder / "index.json").read_text()
                except OSError:
                    text = ""
                if self._loaded is not None and self._loaded[0] == text:
                    break
                state = self._state(text)
                try:
                    self._loaded = (text, [_Segment.load(self.folder / name)
                                           for name in state.segments])
                except OSError:
                    if attempt == 2:
                        raise
                    continue
                self._tail, self._tail_last, self._generation = [], state.last_vid, -1
                break
            assert self._loaded is not None
            if self._generation != self.catalog.generation:  # only the new commits' words
                self._generation = self.catalog.generation
                new = self.catalog.local_words_after(self._tail_last)
                if new:
                    self._tail.append(_Segment.build(
                        [(v, Words.from_bytes(b)) for v, b in new], len(self.vocabulary)))
                    self._tail_last = new[-1][0]
            return [*self._loaded[1], *self._tail]

    def search(self, query: Words, candidates: int = VERIFIED) -> list[LocalMatch]:
        """The images the query's points verify in, most inliers first; the best-voted
        `candidates` are checked."""
        segments = self._segments()
        if not segments or not len(query):
            return []
        images = sum(len(s) for s in segments)
        df = np.sum([np.asarray(s.df) for s in segments], axis=0)
        idf = np.log(max(images, 1) / np.maximum(df, 1)).astype(np.float32)
        found = [_votes(s, query, idf) for s in segments]
        scores = []
        for number, votes in enumerate(found):
            per_image = np.bincount(votes.image, votes.weight, minlength=len(segments[number]))
            scores += [(float(score), number, row) for row, score in enumerate(per_image)
                       if score > 0]
        scores.sort(key=lambda s: -s[0])
        best = scores[:2 * candidates]
        vids = np.array([int(segments[n].vids[r]) for _, n, r in best], np.int64)
        living = self._alive(vids) if len(vids) else np.zeros(0, bool)
        matches = []
        checked = [(b, v) for b, v, ok in zip(best, vids, living, strict=True) if ok]
        for (score, number, row), vid in checked[:candidates]:
            placed = _place(query, segments[number], found[number], row)
            if placed is not None:
                matches.append(LocalMatch(int(vid), score, *placed))
        matches.sort(key=lambda m: (-m.inliers, -m.votes))
        return matches


def _votes(segment: _Segment, query: Words, idf: np.ndarray) -> _Votes:
    """The query's matching postings in `segment`, each query point's vote an image kept
    once (its heaviest)."""
    words = query.words.reshape(-1)
    signatures = query.signatures.reshape(-1)
    starts = np.asarray(segment.offsets[words])
    lengths = np.asarray(segment.offsets[words + 1]) - starts
    total = int(lengths.sum())
    if total == 0:
        empty = np.empty(0, np.int64)
        return _Votes(empty, empty, empty, np.empty(0, np.float32))
    owner = np.repeat(np.arange(len(words)), lengths)
    posting = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths) \
        + np.repeat(starts, lengths)
    distance = np.bitwise_count(np.asarray(segment.signatures[posting]) ^ signatures[owner])
    close = distance <= MAX_HAMMING
    owner, posting, distance = owner[close], posting[close], distance[close]
    weight = idf[words[owner]] ** 2 * np.exp(-(distance.astype(np.float32) / SIGMA) ** 2)
    point = owner // query.words.shape[1]
    image = np.asarray(segment.rows[posting]).astype(np.int64)
    # one vote per query point and image, and per indexed point: the heaviest
    keep = _heaviest(weight, image, point)
    keep = keep[_heaviest(weight[keep], image[keep], posting[keep])]
    return _Votes(point[keep], image[keep], posting[keep], weight[keep])


def _heaviest(weight: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Where the heaviest vote of each combination of `keys` is."""
    order = np.lexsort((-weight, *keys[::-1]))
    changed = np.zeros(len(order), bool)
    changed[:1] = True
    for key in keys:
        changed[1:] |= np.diff(key[order]) != 0
    return order[changed]


def _consistent(query: np.ndarray, indexed: np.ndarray) -> np.ndarray:
    """Which matches agree with the most common turn and change of scale between the
    query's keypoints and the image's, within a bin either side (weak geometric
    consistency: chance matches scatter, a copy's agree)."""
    turn = ((indexed[:, 0].astype(np.int64) - query[:, 0]) % 256) // TURN_BIN
    scale = (indexed[:, 1].astype(np.int64) - query[:, 1] + 256) // SCALE_BIN
    turns, scales = 256 // TURN_BIN, 512 // SCALE_BIN
    counts = np.bincount(turn * scales + scale, minlength=turns * scales).reshape(turns, scales)
    # each bin with its neighbours (turns wrap around), so a peak on a border counts whole
    pooled = np.sum([np.roll(counts, (a, b), (0, 1)) for a in (-1, 0, 1) for b in (-1, 0, 1)],
                    axis=0)
    best_turn, best_scale = np.unravel_index(int(np.argmax(pooled)), pooled.shape)
    near_turn = np.minimum((turn - best_turn) % turns, (best_turn - turn) % turns) <= 1
    return np.flatnonzero(near_turn & (np.abs(scale - best_scale) <= 1))


def _place(query: Words, segment: _Segment, votes: _Votes, row: int
           ) -> tuple[int, Box, np.ndarray] | None:
    """RANSAC over the query's matched points in image `row`: the inliers and the box."""
    mine = np.flatnonzero(votes.image == row)
    mine = mine[_consistent(query.poses[votes.query[mine]],
                            np.asarray(segment.poses[votes.posting[mine]]))]
    size = (int(segment.sizes[row, 0]), int(segment.sizes[row, 1]))
    target = np.asarray(segment.points[votes.posting[mine]]) / 65535.0 * np.array(size)
    found = verification.similarity(query.points[votes.query[mine]], target,
                                    REPROJECTION * max(size), MIN_INLIERS, SCALE_RANGE)
    if found is None:
        return None
    transform, inliers = found
    box = verification.place(transform, query.size, size)
    if box is None or min(box[2] - box[0], box[3] - box[1]) < MIN_SIDE:
        return None
    return inliers, box, transform
