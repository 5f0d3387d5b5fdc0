"""Near-duplicates: which images of a collection derive from one original, and how.

Candidate pairs come from the index, never from all pairs: each image's nearest neighbours
(regions included, so a crop finds the part of its source it shows) above a similarity
floor. Each candidate pair is then classified by looking at the pixels, cheapest test
first: the same bytes (`identical`), the same pixels (`same-pixels`), the same picture at
another size or compression (`resized`, `re-encoded`), mirrored or turned a quarter
(`flipped`, `rotated`); else keypoints that agree on one placement say that one image shows
the other, whole (`edited`: colour, blur, text over it) or in part (`cropped`, with the box
where it lies). A pair none of these confirm is not a copy; with `similar` it is kept as
`similar` (the same scene, a burst shot). Copies are grouped by union-find, so two crops
of one photo belong together when the photo or another copy links them.

The pair's `probability` is left empty until it is calibrated on judged pairs. Clean-up is
moving, never deleting: `move_copies` moves all but each group's keeper into another
folder and logs each move first; `undo_moves` replays the log backwards.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import os
import shutil
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from lookalike import copy_probability, verification
from lookalike.atomic import atomic_write
from lookalike.collection import Collection
from lookalike.copy_probability import CopyProbability, Reliability
from lookalike.copy_truth import Truth, linked
from lookalike.errors import LookalikeError
from lookalike.folder import image_path
from lookalike.images import Box, DecodedImage, ImageError, ImageSource, decode, thumbnail_uri

Keep = Literal["largest", "oldest", "newest", "shortest-path"]
KEEP: tuple[Keep, ...] = ("largest", "oldest", "newest", "shortest-path")
MIN_SCORE = 0.5  # cosine below which a pair is not even a candidate
PLAIN_MIN_SCORE = 0.85  # below it, resized or re-encoded copies are rare (flips: 0.93)
MIN_PROBABILITY = 0.95  # less likely to be a copy than this: not reported as one (a wrong
# link merges two groups; at 0.95, 98 % of the pairs in the groups are right: RESULTS.md)
NEIGHBOURS = 8  # candidates an image
SAME_PICTURE_RMS = 6.0  # levels at 64 px, RGB: the same picture, re-encoded or resized
SAME_PICTURE_AGREEMENT = 0.8  # ... and its pixels correlate this well (two flat skies do not)
MIN_AGREEMENT = 0.3  # a placement's pixels correlate at least this, or it is chance
PREVIEW_SIDE = 128  # JPEG decoded at least this large for the thumbnail checks
PICTURES_HELD = 6000  # images whose keypoints are kept (about 150 KB each: 0.9 GB)
FEW_KEYPOINTS = 500  # fewer than this (blur, sky): the pixels are searched for the copy too
WHOLE_FRAME = 0.9  # a placement covering this share of the source is the whole picture


@dataclass(frozen=True)
class CopyPair:
    """`b` derives from `a` (or, for `similar`, looks like it): how, and the evidence."""

    a: str
    b: str
    relation: str
    score: float
    box: Box | None = None  # where b lies in a (cropped)
    inliers: int | None = None
    pixel_error: float | None = None
    agreement: float | None = None  # correlation of the pixels where b lies in a
    probability: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "relation": self.relation,
                "probability": self.probability,
                "box": list(self.box) if self.box is not None else None,
                "evidence": {"score": round(self.score, 4), "inliers": self.inliers,
                             "pixel_error": None if self.pixel_error is None
                             else round(self.pixel_error, 2),
                             "agreement": None if self.agreement is None
                             else round(self.agreement, 3)}}


@dataclass
class Group:
    images: list[str]
    keep: str
    pairs: list[CopyPair] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "keep": self.keep,
                "pairs": [p.to_dict() for p in self.pairs]}


class _Picture:
    """An image's pixels and keypoints, each made when first asked for: a preview (JPEG
    decoded at a fraction of its size, enough for the thumbnail checks), the full pixels
    (for keypoints and template search) only when those are needed."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source

    @functools.cached_property
    def decoded_preview(self) -> DecodedImage:
        return decode(self.source, draft_size=PREVIEW_SIDE)

    @property
    def preview(self) -> Image.Image:
        return self.decoded_preview.image

    @functools.cached_property
    def size(self) -> tuple[int, int]:
        return self.decoded_preview.full_size

    @functools.cached_property
    def image(self) -> Image.Image:
        if self.preview.size == self.size:  # not a JPEG, or a small one: already whole
            return self.preview
        return decode(self.source).image

    @functools.cached_property
    def small(self) -> np.ndarray:
        return _small(self.preview)

    @functools.cached_property
    def keypoints(self) -> verification.Keypoints:
        return verification.keypoints(self.image)

    def release(self) -> None:
        """Drop the pixels, keep what was learnt from them (size, thumbnail, keypoints): most
        pairs never need an image's pixels again, and they are most of its memory."""
        if "decoded_preview" in self.__dict__:
            _ = (self.size, self.small)  # made now, from the pixels about to go
        self.__dict__.pop("image", None)
        self.__dict__.pop("decoded_preview", None)


class _Pictures:
    """Pictures by id, made when first asked for, the `held` most recently used kept: with
    their pixels released after each pair (`_Picture.release`), each holds its keypoints
    and thumbnail (about 150 KB), so memory stays bounded however many images a run sees."""

    def __init__(self, root: Path, held: int = PICTURES_HELD) -> None:
        self.root, self.limit = root, held
        self.held: OrderedDict[str, _Picture] = OrderedDict()

    def __call__(self, image_id: str) -> _Picture:
        if image_id in self.held:
            self.held.move_to_end(image_id)
            return self.held[image_id]
        self.held[image_id] = picture = _Picture(image_path(self.root, image_id))
        if len(self.held) > self.limit:
            self.held.popitem(last=False)
        return picture


def _small(image: Image.Image, side: int = 64) -> np.ndarray:
    """The picture at `side` x `side`, in colour: a grey copy is an edit, not a re-save."""
    return np.asarray(image.resize((side, side), Image.Resampling.BILINEAR), np.float32)


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return abs(a[0] / a[1] - b[0] / b[1]) <= 0.01 * (a[0] / a[1])


def classify(a: _Picture, b: _Picture, *, same_bytes: bool, score: float, a_id: str,
             b_id: str) -> CopyPair | None:
    """How `b` derives from `a` (or `a` from `b`: the pair comes back as source first), or
    None when the pixels confirm no copy. Every placement found (by thumbnails, keypoints or
    template search) must also agree in its pixels (`verification.agreement`): keypoints on
    repeated structure, or two flat thumbnails, agree by chance; the pixels then do not."""
    same = same_picture(a, b, same_bytes=same_bytes, score=score, a_id=a_id, b_id=b_id)
    if same is not None:
        return same
    if b.size[0] * b.size[1] > a.size[0] * a.size[1]:
        a, b, a_id, b_id = b, a, b_id, a_id  # the larger one is the source
    size_a, size_b = a.size, b.size
    match = verification.verify(b.keypoints, a.keypoints)  # where b lies in a
    if match is not None:
        back = verification.invert(match.transform)
        a_in_b = verification.place(back, size_a, size_b)
        if _whole(match.box, size_a) and a_in_b is not None and not _whole(a_in_b, size_b):
            agrees = verification.agreement(a.image, b.image, back)  # a crop, enlarged
            found = CopyPair(b_id, a_id, "cropped", score, box=a_in_b, inliers=match.inliers,
                             agreement=agrees)
        else:
            agrees = verification.agreement(b.image, a.image, match.transform)
            whole = _whole(match.box, size_a)
            found = CopyPair(a_id, b_id, "edited" if whole else "cropped", score,
                             box=None if whole else match.box, inliers=match.inliers,
                             agreement=agrees)
        if agrees >= MIN_AGREEMENT:
            return found
    if len(b.keypoints) >= FEW_KEYPOINTS:  # keypoints had enough to go on
        return None
    placed = verification.locate(verification.Template(b.image),
                                 verification.thumbnails(a.image))
    if placed is not None:
        x0, y0, x1, y1 = placed.box
        at = np.array([[(x1 - x0) / size_b[0], 0, x0], [0, (y1 - y0) / size_b[1], y0]])
        agrees = verification.agreement(b.image, a.image, at)
        if agrees >= MIN_AGREEMENT:
            return CopyPair(a_id, b_id, "cropped", score, box=placed.box,
                            pixel_error=placed.error, agreement=agrees)
    return None


def same_picture(a: _Picture, b: _Picture, *, same_bytes: bool, score: float, a_id: str,
                 b_id: str) -> CopyPair | None:
    """The cheap part of `classify`: the same file, the same pixels, or the same picture
    resized, re-encoded, mirrored or turned (previews only, no keypoints)."""
    if same_bytes:
        return CopyPair(a_id, b_id, "identical", score)
    if b.size[0] * b.size[1] > a.size[0] * a.size[1]:  # the larger one is the source
        a, b, a_id, b_id = b, a, b_id, a_id
    for relation, turn, small in _views(b, a.size):
        error = _rms(a.small, small)
        if error < SAME_PICTURE_RMS:
            if error < 0.5 and a.size == b.size and np.array_equal(np.asarray(a.image),
                                                                 np.asarray(b.image)):
                return CopyPair(a_id, b_id, "same-pixels", score, pixel_error=0.0,
                                agreement=1.0)
            view = b.preview if turn is None else b.preview.transpose(turn)
            agrees = verification.agreement(view, a.preview, _stretch(view.size,
                                                                       a.preview.size))
            if agrees >= SAME_PICTURE_AGREEMENT:
                return CopyPair(a_id, b_id, relation, score, pixel_error=error,
                                agreement=agrees)
    return None


def _views(picture: _Picture, size: tuple[int, int]
           ) -> Iterator[tuple[str, Image.Transpose | None, np.ndarray]]:
    """The ways `picture` could show the same picture as one of `size` (as it is, mirrored,
    turned), each with its transposition and its thumbnail (turned as a thumbnail: cheap)."""
    width, height = picture.size
    if _same_aspect(size, (width, height)):
        yield ("re-encoded" if size == (width, height) else "resized"), None, picture.small
        yield "flipped", Image.Transpose.FLIP_LEFT_RIGHT, picture.small[:, ::-1]
    if _same_aspect(size, (height, width)):
        yield "rotated", Image.Transpose.ROTATE_90, np.rot90(picture.small, 1)
        yield "rotated", Image.Transpose.ROTATE_270, np.rot90(picture.small, 3)
    if _same_aspect(size, (width, height)):
        yield "rotated", Image.Transpose.ROTATE_180, np.rot90(picture.small, 2)


def _stretch(size: tuple[int, int], to: tuple[int, int]) -> np.ndarray:
    """The transform laying a picture of `size` over one of `to`."""
    return np.array([[to[0] / size[0], 0, 0], [0, to[1] / size[1], 0]])


def _whole(box: Box, size: tuple[int, int]) -> bool:
    """The box covers (nearly) the whole picture."""
    x0, y0, x1, y1 = box
    return (x1 - x0) * (y1 - y0) >= WHOLE_FRAME * size[0] * size[1]


def copies_of(coll: Collection, image: ImageSource | None = None, *, like: str | None = None,
              name: str = "query", neighbours: int = NEIGHBOURS,
              min_score: float = MIN_SCORE, min_probability: float = MIN_PROBABILITY
              ) -> list[CopyPair]:
    """Is this image (or this indexed id) already in the collection, and as what? Its
    copies among its nearest neighbours, the query named `name` (or by its id) in them."""
    if (image is None) == (like is None):
        raise LookalikeError("give either an image or an indexed id")
    root = coll.root or coll.path
    if like is not None:
        record = coll.catalog.image(like)
        if record is None:
            raise LookalikeError(f"{like}: no such id in the collection")
        query, name, sha = _Picture(image_path(root, like)), like, record.sha256
        hits = coll.search(like=like, k=neighbours)
    else:
        assert image is not None
        query = _Picture(image)
        sha = hashlib.sha256(image).hexdigest() if isinstance(image, bytes) else ""
        hits = coll.search(image, k=neighbours)
    pairs = []
    for hit in hits:
        if hit.score < min_score:
            break
        record = coll.catalog.image(hit.id)
        try:
            pair = classify(query, _Picture(image_path(root, hit.id)), score=hit.score,
                            same_bytes=record is not None and record.sha256 == sha,
                            a_id=name, b_id=hit.id)
        except (ImageError, OSError):
            continue
        if pair is not None:
            pairs.append(pair)
    return _probable(coll, pairs, min_probability)


def _probable(coll: Collection, pairs: list[CopyPair], min_probability: float
              ) -> list[CopyPair]:
    """The pairs, with their probability of being a copy, that reach `min_probability`."""
    chances = CopyProbability.for_collection(coll.path)(pairs).tolist()
    return [replace(pair, probability=round(chance, 4))
            for pair, chance in zip(pairs, chances, strict=True) if chance >= min_probability]


CHECKED = "duplicates.json"  # in the collection's folder: what the last run saw and found


def last_run(coll: Collection) -> dict[str, Any]:
    """What the last `duplicates` run recorded (see `record_run`); {} when none ran."""
    try:
        saved = json.loads((coll.path / CHECKED).read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def last_checked(coll: Collection) -> int:
    """The last vector id a `duplicates` run had seen (0: none ran)."""
    try:
        return int(last_run(coll).get("last_vid", 0))
    except (ValueError, TypeError):
        return 0


def record_run(coll: Collection, groups: list[Group], *, upto: int, new_only: bool,
               moved: int = 0) -> None:
    """Record a run: how far it looked (`upto`, the last vector id when it began: `--new`
    starts there) and what it found, as `--json` writes it (the server's page shows it)."""
    with atomic_write(coll.path / CHECKED) as fh:
        json.dump({"last_vid": upto, "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                   "new_only": new_only, "moved": moved,
                   "groups": [g.to_dict() for g in groups]}, fh)


def candidate_pairs(coll: Collection, *, neighbours: int = NEIGHBOURS,
                    min_score: float = MIN_SCORE, after: int = 0, chunk: int = 512
                    ) -> Iterator[tuple[str, str, float]]:
    """Each unordered pair of images of which one is among the other's `neighbours` nearest
    (whole images and regions) with a cosine of at least `min_score`, once; with `after`
    (a vector id), only the pairs of images indexed since. The whole-image vectors are read
    from the index a chunk at a time, in the order they are stored, so memory stays bounded
    and no vector is looked up alone."""
    seen: set[tuple[str, str]] = set()
    for vids, vectors in coll.index.current().live_chunks(chunk):
        if after and int(vids.max()) <= after:
            continue
        owners = coll.catalog.vector_owners(vids[vids > after])
        whole = [i for i, vid in enumerate(vids.tolist())
                 if vid in owners and not owners[vid].is_region]
        if not whole:
            continue
        batch = [owners[int(vids[i])].image_id for i in whole]
        found = coll.search_vectors(np.asarray(vectors[whole]), k=neighbours,
                                    exclude=[{image_id} for image_id in batch])
        for image_id, hits in zip(batch, found, strict=True):
            for hit in hits:
                key = (min(image_id, hit.id), max(image_id, hit.id))
                if hit.score >= min_score and key not in seen:
                    seen.add(key)
                    yield image_id, hit.id, hit.score


def examine(coll: Collection, *, neighbours: int = NEIGHBOURS, min_score: float = MIN_SCORE,
            after: int = 0, progress: Callable[[int, int], None] | None = None
            ) -> list[CopyPair]:
    """Every candidate pair (see `candidate_pairs`) with what its pixels say: how one
    derives from the other, or `similar` when they confirm nothing. No probability yet."""
    candidates = list(candidate_pairs(coll, neighbours=neighbours, min_score=min_score,
                                      after=after))
    records = coll.catalog.images_named({i for pair in candidates for i in pair[:2]})
    picture = _Pictures(coll.root or coll.path)
    pairs = []
    for done, (x, y, score) in enumerate(candidates, start=1):
        try:
            pair = classify(picture(x), picture(y),
                            same_bytes=records[x].sha256 == records[y].sha256,
                            score=score, a_id=x, b_id=y)
        except (ImageError, OSError):  # changed or gone since indexing: not judged
            pair = None
        picture(x).release()
        picture(y).release()
        pairs.append(pair or CopyPair(x, y, "similar", score))
        if progress is not None:
            progress(done, len(candidates))
    return pairs


def plain_copies(coll: Collection, *, after: int, neighbours: int = 1,
                 min_score: float = PLAIN_MIN_SCORE) -> list[CopyPair]:
    """The copies among the images indexed since vector `after` that previews alone
    confirm (`same_picture`: the same file or picture, resized, re-encoded, mirrored or
    turned), for `index` to report as it goes; `find_duplicates` finds crops and edits
    too. About 2 ms an image (a quarter of embedding it): each image's nearest neighbour
    only, when that is close, no keypoints, JPEGs decoded at a fraction of their size."""
    candidates = list(candidate_pairs(coll, neighbours=neighbours, min_score=min_score,
                                      after=after))
    records = coll.catalog.images_named({i for pair in candidates for i in pair[:2]})
    picture = _Pictures(coll.root or coll.path)
    found = []
    for x, y, score in candidates:
        try:
            pair = same_picture(picture(x), picture(y),
                                same_bytes=records[x].sha256 == records[y].sha256,
                                score=score, a_id=x, b_id=y)
        except (ImageError, OSError):
            continue
        finally:
            picture(x).release()
            picture(y).release()
        if pair is not None:
            found.append(pair)
    return found


def find_duplicates(coll: Collection, *, similar: bool = False, keep: Keep = "largest",
                    min_probability: float = MIN_PROBABILITY, neighbours: int = NEIGHBOURS,
                    min_score: float = MIN_SCORE, after: int = 0,
                    progress: Callable[[int, int], None] | None = None) -> list[Group]:
    """Groups of images that derive from one original (with `similar`, also of images of
    the same scene), each with the image to keep and the pairs that link it; with `after`
    (a vector id, see `last_checked`), only the copies of images indexed since. A pair is a
    copy when its calibrated probability is at least `min_probability`."""
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
    examined = examine(coll, neighbours=neighbours, min_score=min_score, after=after,
                       progress=progress)
    pairs = []
    for pair in _probable(coll, examined, 0.0):
        assert pair.probability is not None
        if pair.probability >= min_probability and pair.relation != "similar":
            pairs.append(pair)
        elif similar:
            pairs.append(replace(pair, relation="similar"))
    return group_pairs(coll, pairs, keep)


@dataclass(frozen=True)
class ProbabilityFit:
    """A fit on judged pairs, and how its held-out predictions held up."""

    model: CopyProbability
    judged: list[CopyPair]  # the examined pairs whose two images the truth knows
    is_copy: np.ndarray
    held_out: np.ndarray  # each judged pair's probability, predicted out of fold
    reliability: Reliability  # of those predictions


def fit_probability(examined: Sequence[CopyPair], truth: Truth, *, fitted_on: str = ""
                    ) -> ProbabilityFit:
    """Fit the copy probability on examined pairs (see `examine`) judged by `truth`. Its
    reliability is measured out of fold: the judged groups are split in two halves, each
    half's pairs predicted by a fit on the other's; the model returned is then fitted on
    all of them."""
    judged = [p for p in examined if p.a in truth.group and p.b in truth.group]
    labels = np.array([truth.is_copy(p.a, p.b) for p in judged], bool)
    fold = np.array([zlib.crc32((truth.group[p.a] or p.a).encode()) % 2 for p in judged])
    if any(len(set(labels[fold == half].tolist())) < 2 for half in (0, 1)):
        raise LookalikeError(
            f"{len(judged)} judged candidate pairs are too few to hold half of the groups "
            "out: each half needs pairs that are copies and pairs that are not")
    predicted = np.zeros(len(judged))
    for half in (0, 1):
        model = copy_probability.fit([p for p, f in zip(judged, fold, strict=True)
                                      if f != half], labels[fold != half])
        predicted[fold == half] = model([p for p, f in zip(judged, fold, strict=True)
                                         if f == half])
    return ProbabilityFit(copy_probability.fit(judged, labels, fitted_on=fitted_on), judged,
                          labels, predicted, copy_probability.reliability(predicted, labels))


def group_pairs(coll: Collection, pairs: list[CopyPair], keep: Keep) -> list[Group]:
    """The groups the pairs link, each with its keeper and its pairs, largest first."""
    groups = linked((p.a, p.b) for p in pairs)
    records = coll.catalog.images_named(i for images in groups for i in images)
    root = coll.root or coll.path
    return [Group(images, _keeper(coll, images, records, keep, root),
                  [p for p in pairs if p.a in inside])
            for images in groups for inside in [set(images)]]


def _keeper(coll: Collection, images: list[str], records: dict[str, Any], keep: Keep,
            root: Path) -> str:
    """The image to keep. `largest`: the most pixels; among equals, the most central one
    (each copy strays from its original in its own way, so the original is the closest to
    all of them), then the largest file."""
    if keep == "largest":
        vectors = np.stack([coll.image_vectors(i)[0].vector for i in images])
        central = dict(zip(images, (vectors @ vectors.T).sum(axis=1).tolist(), strict=True))
        return max(images, key=lambda i: ((records[i].width or 0) * (records[i].height or 0),
                                          round(central[i], 3), records[i].size, -len(i)))
    if keep == "shortest-path":
        return min(images, key=lambda i: (len(i), i))
    modified = {i: _mtime(image_path(root, i)) for i in images}
    pick = min if keep == "oldest" else max
    return pick(images, key=lambda i: (modified[i], i))


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def move_copies(groups: list[Group], root: Path, to: Path, log: Path) -> list[Path]:
    """Move every image of each group but its keeper from `root` into `to`, at the same
    relative path, appending each move to `log` (a JSON line, flushed to disk before the
    move) so that `undo_moves` can put everything back, even after a crash half-way.
    Nothing is deleted and nothing overwritten. The moved files' new paths."""
    root, to = root.resolve(), to.resolve()
    if to == root or root in to.parents:
        raise LookalikeError(f"{to}: inside the indexed folder {root}; the copies would be "
                             "indexed again there; choose a folder outside it")
    moved: list[Path] = []
    with open(log, "a", encoding="utf-8") as record:
        for group in groups:
            for image_id in group.images:
                if image_id == group.keep:
                    continue
                source = image_path(root, image_id)
                target = to / source.relative_to(root)
                if target.exists() or not source.exists():
                    continue  # moved already, or gone: left as it is
                record.write(json.dumps({"from": str(source), "to": str(target),
                                         "keep": group.keep}) + "\n")
                record.flush()
                os.fsync(record.fileno())
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(source, target)
                moved.append(target)
    return moved


def undo_moves(log: Path) -> list[Path]:
    """Put back what `move_copies` moved, as its log records it; a file whose place has
    been taken meanwhile stays where it is (named in the error). The restored paths."""
    try:
        moves = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    except (OSError, ValueError) as exc:
        raise LookalikeError(f"{log}: not an undo log of `lookalike duplicates` ({exc})"
                             ) from None
    restored, blocked = [], []
    for move in reversed(moves):
        source, target = Path(move["to"]), Path(move["from"])
        if not source.exists():
            continue  # put back already
        if target.exists():
            blocked.append(str(target))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)
        restored.append(target)
    if blocked:
        raise LookalikeError(f"{log}: {len(blocked)} file(s) not put back, another file is "
                             f"where they were: {', '.join(blocked[:3])}")
    return restored


SHOWN_GROUPS = 500  # a review page holds at most this many groups (the largest first)


def write_review_page(groups: list[Group], root: Path, out: Path) -> Path:
    """`out/index.html`: each group side by side, the image to keep first, every other with
    how it derives from another (and, for a crop, the box where it lies in its source,
    drawn on the source). Self-contained: thumbnails are inline."""
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for number, group in enumerate(groups[:SHOWN_GROUPS], start=1):
        cards = []
        for image_id in sorted(group.images, key=lambda i: i != group.keep):
            links = [p for p in group.pairs if image_id in (p.a, p.b)]
            pair = next((p for p in links if group.keep in (p.a, p.b)), links[0] if links
                        else None)
            box = next((p.box for p in group.pairs if p.a == image_id and p.box), None)
            try:
                thumb = thumbnail_uri(decode(image_path(root, image_id)).image, box, size=220)
            except ImageError:
                thumb = ""
            if image_id == group.keep:
                caption = "keep"
            elif pair is None:
                caption = ""
            else:
                other = pair.a if pair.b == image_id else pair.b
                caption = f"{pair.relation} ({'of' if pair.b == image_id else 'source of'} " \
                          f"{other})"
            cards.append(f'<figure><img src="{thumb}" alt="{html.escape(image_id)}">'
                         f"<figcaption><b>{html.escape(image_id)}</b><br>"
                         f"{html.escape(caption)}</figcaption></figure>")
        sections.append(f"<section><h2>Group {number}: {len(group.images)} images</h2>"
                        f"<div class=row>{''.join(cards)}</div></section>")
    more = (f"<p>{len(groups) - SHOWN_GROUPS} more groups are in the JSON output.</p>"
            if len(groups) > SHOWN_GROUPS else "")
    page = f"""<!doctype html><html lang=en><head><meta charset=utf-8>
<meta name=viewport content="width=device-width, initial-scale=1">
<title>lookalike: duplicates</title><style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #1d1d1d; }}
.row {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; width: 220px; }} img {{ max-width: 220px; max-height: 220px; }}
figcaption {{ overflow-wrap: anywhere; }} h2 {{ font-size: 16px; }}
</style></head><body><h1>Duplicates: {len(groups)} groups</h1>
<p>The image to keep comes first; the others say how they derive from another image of the
group. Crops are outlined in red on their source.</p>{''.join(sections)}{more}</body></html>
"""
    path = out / "index.html"
    with atomic_write(path) as fh:
        fh.write(page)
    return path
