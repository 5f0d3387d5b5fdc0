"""Verification: is the query a piece of this candidate, and where? Two checks re-rank a
shortlist.

An embedding says two images look alike; it cannot say that one is a piece of the other.

- Keypoints (`keypoints`, `verify`): a crop, a rotated or re-encoded partial copy, or a
  re-saved duplicate shares keypoints with its source that line up under a single similarity
  transform, and unrelated images almost never do. This is the spatial-verification stage of
  instance retrieval (Philbin et al., 2007): ORB keypoints and RANSAC from OpenCV (the
  `verify` extra), descriptors matched by faiss.
- Pixels (`thumbnails`, `locate`): a crop of sky, blur or a smooth gradient has no corners,
  but its pixels are still its source's. A template search over scales and positions (OpenCV's
  `matchTemplate`, coarse to fine on small thumbnails) finds the placement where they differ
  least; a source shows the query within a few grey levels, where look-alikes differ by more.
  It sees no rotation and little change of colour: copies are the keypoints' part.

Both tell where in the candidate the query lies, which becomes the hit's box.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError
from lookalike.images import Box

FEATURES = 3000         # ORB keypoints an image: a 25 % crop keeps only ~1/16 of them
CELLS = 4               # ... so they are spread over CELLS x CELLS parts of the image
CANDIDATES = 20000      # corners detected before the spreading
MAX_SIDE = 1024         # images are shrunk to this first: keypoints cost grows with pixels
RATIO = 0.8             # Lowe's ratio test on the two nearest descriptors
REPROJECTION_PX = 8.0   # RANSAC inlier distance, in the candidate's working pixels
MIN_INLIERS = 8         # fewer agreeing matches than this is chance (measured: see RESULTS)
SCALE_RANGE = (0.1, 10.0)  # a placement outside this is degenerate (points collapse)
BORDER = 32             # ORB's patch reach: corners closer to the edge get no descriptor

COARSE_SIDE = 64        # pixel placement: all scales are tried on a 64 px thumbnail,
FINE_SIDE = 128         # ... the best one refined on a 128 px one, near where it was found
COARSE_STEP = 1.15      # scale steps: coarse, then fine within one coarse step either side
FINE_STEP = 1.03
MIN_TEMPLATE = 8        # the query's long side on the coarse thumbnail: no smaller placement
SLACK = 8               # fine pixels around the coarse placement that the refinement searches
MAX_PIXEL_ERROR = 8.0   # RMS difference (grey levels, RGB) below which the pixels match


def opencv() -> Any:
    """OpenCV, on one thread (its own pools collapse when other processes hold the cores)."""
    try:
        import cv2
    except ImportError:
        raise LookalikeError("verification and local features need OpenCV: "
                             "pip install 'lookalike[verify]'") from None
    cv2.setNumThreads(1)
    return cv2


@contextmanager
def one_thread() -> Iterator[None]:
    """Run faiss on one OpenMP thread within, then restore its thread count: a search of a few
    thousand descriptors gains nothing from more threads, and when other processes load the
    cores they spin against each other (issue 16: 0.735 s a candidate against 0.062 s)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


@dataclass(frozen=True)
class Keypoints:
    """ORB keypoints of one image: `points` (n, 2) in working pixels (the image shrunk by
    `scale` to at most `MAX_SIDE`), `descriptors` (n, 32) uint8, `size` the image's own."""

    points: np.ndarray
    descriptors: np.ndarray
    size: tuple[int, int]
    scale: float

    def __len__(self) -> int:
        return len(self.points)


def keypoints(image: Image.Image, count: int = FEATURES) -> Keypoints:
    """Detect and describe up to `count` ORB keypoints of an RGB image."""
    cv2 = opencv()
    scale = min(1.0, MAX_SIDE / max(image.size))
    work = image if scale == 1.0 else image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.BILINEAR, reducing_gap=2.0)
    grey = np.asarray(work.convert("L"))
    # ORB ignores a 31 px border, most of a small crop: mirror the edges out so that it
    # sees them (the source of a 25 % crop verified for 63 % of the queries, up from 45 %)
    grey = cv2.copyMakeBorder(grey, BORDER, BORDER, BORDER, BORDER, cv2.BORDER_REFLECT_101)
    orb = cv2.ORB_create(nfeatures=CANDIDATES, fastThreshold=5)
    detected = orb.detect(grey, None)
    if not detected:
        return Keypoints(np.empty((0, 2), np.float32), np.empty((0, 32), np.uint8),
                         image.size, scale)
    where = cv2.KeyPoint_convert(detected).reshape(-1, 2)
    inside = np.flatnonzero((where.min(axis=1) >= BORDER)
                            & (where[:, 0] < grey.shape[1] - BORDER)
                            & (where[:, 1] < grey.shape[0] - BORDER))
    response = np.fromiter((k.response for k in detected), np.float32, len(detected))
    kept = inside[_spread(where[inside], response[inside], grey.shape, count)]
    found, descriptors = orb.compute(grey, [detected[i] for i in kept])
    points = cv2.KeyPoint_convert(found).reshape(-1, 2) - BORDER if found else \
        np.empty((0, 2), np.float32)
    if descriptors is None:
        descriptors = np.empty((0, 32), np.uint8)
    return Keypoints(points.astype(np.float32), descriptors, image.size, scale)


def _spread(points: np.ndarray, response: np.ndarray, shape: tuple[int, ...], count: int
            ) -> np.ndarray:
    """Which of the corners to keep: the strongest `count / CELLS**2` of each cell. ORB's own
    top `count` crowd into the most textured part, and a crop of a quiet part then has none
    to match (spreading them raised a 25 % crop's R@1 from 0.76 to 0.79 on photo-crops)."""
    height, width = shape[:2]
    cell = (np.minimum(points[:, 1] * CELLS // height, CELLS - 1) * CELLS
            + np.minimum(points[:, 0] * CELLS // width, CELLS - 1))
    order = np.lexsort((-response, cell))  # by cell, strongest first
    first = np.searchsorted(cell[order], cell[order], side="left")
    return order[np.arange(len(order)) - first < max(1, count // CELLS**2)]


def _matches(query: Keypoints, candidate: Keypoints) -> tuple[np.ndarray, np.ndarray]:
    """Matched point pairs: each query descriptor's nearest candidate descriptor (Hamming,
    faiss's binary index), kept when clearly nearer than the second (Lowe's ratio test), at
    most one query point a candidate point (the nearest)."""
    with one_thread():
        index = faiss.IndexBinaryFlat(candidate.descriptors.shape[1] * 8)
        index.add(candidate.descriptors)
        distances, nearest = index.search(query.descriptors, 2)
    rows = np.flatnonzero(distances[:, 0] < RATIO * distances[:, 1])
    rows = rows[np.lexsort((distances[rows, 0], nearest[rows, 0]))]  # by target, nearest first
    rows = rows[np.r_[True, np.diff(nearest[rows, 0]) != 0]] if len(rows) else rows
    return query.points[rows], candidate.points[nearest[rows, 0]]


@dataclass(frozen=True)
class Match:
    """A verified placement: the matches that agree on it, the query's box in the
    candidate's pixels, and the similarity transform (2 x 3) taking the query's pixels to
    the candidate's."""

    inliers: int
    box: Box
    transform: np.ndarray


def verify(query: Keypoints, candidate: Keypoints) -> Match | None:
    """Where `query` lies inside `candidate`, if at least `MIN_INLIERS` keypoint matches agree
    on one similarity transform; otherwise None."""
    if len(query) < MIN_INLIERS or len(candidate) < MIN_INLIERS:
        return None
    found = similarity(*_matches(query, candidate), REPROJECTION_PX, MIN_INLIERS, SCALE_RANGE)
    if found is None:
        return None
    transform, inliers = found
    # in the images' own pixels: query pixels -> working -> candidate working -> own
    transform = np.hstack([transform[:, :2] * query.scale, transform[:, 2:]]) / candidate.scale
    box = place(transform, query.size, candidate.size)
    return None if box is None else Match(inliers, box, transform)


def similarity(source: np.ndarray, target: np.ndarray, reach: float, least: int,
               scales: tuple[float, float]) -> tuple[np.ndarray, int] | None:
    """The similarity transform (2 x 3, source -> target) that the most point pairs agree
    on within `reach` pixels (RANSAC), and how many do; None when fewer than `least` do or
    its scale is outside `scales` (points collapsed or spread: degenerate)."""
    if len(source) < least:
        return None
    cv2 = opencv()
    transform, inlier_mask = cv2.estimateAffinePartial2D(
        source.astype(np.float32), target.astype(np.float32), method=cv2.RANSAC,
        ransacReprojThreshold=reach)
    if transform is None or inlier_mask is None:
        return None
    inliers = int(inlier_mask.sum())
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    if inliers < least or not scales[0] < scale < scales[1]:
        return None
    return transform, inliers


def place(transform: np.ndarray, size: tuple[int, int], within: tuple[int, int]
          ) -> Box | None:
    """The box that a picture of `size` covers in one of size `within` under `transform`
    (2 x 3), clipped to it; None when it falls outside."""
    width, height = size
    corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], float)
    placed = corners @ transform.T
    x0, y0 = np.clip(placed.min(0), 0, within).astype(int)
    x1, y1 = np.clip(np.ceil(placed.max(0)), 0, within).astype(int)
    if x1 <= x0 or y1 <= y0:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def invert(transform: np.ndarray) -> np.ndarray:
    """The 2 x 3 transform undoing `transform`."""
    linear = np.linalg.inv(transform[:, :2])
    return np.hstack([linear, -linear @ transform[:, 2:]])


@dataclass(frozen=True)
class Thumbnails:
    """An image's RGB pixels shrunk to `COARSE_SIDE` and `FINE_SIDE` (uint8 arrays), with the
    image's own size, for pixel placement."""

    coarse: np.ndarray
    fine: np.ndarray
    size: tuple[int, int]


def thumbnails(image: Image.Image) -> Thumbnails:
    return Thumbnails(_pixels(image, COARSE_SIDE), _pixels(image, FINE_SIDE), image.size)


def _pixels(image: Image.Image, side: int) -> np.ndarray:
    scale = min(1.0, side / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


class Template:
    """The query's pixels at any size, each size made once (a shortlist's candidates mostly
    share their thumbnails' sizes)."""

    def __init__(self, image: Image.Image) -> None:
        self.image = image
        self._sized: dict[tuple[int, int], np.ndarray] = {}

    def at(self, scale: float) -> np.ndarray:
        size = (max(1, round(self.image.width * scale)), max(1, round(self.image.height * scale)))
        if size not in self._sized:
            self._sized[size] = np.asarray(
                self.image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
        return self._sized[size]

    def fit(self, pixels: np.ndarray) -> float:
        """The largest scale at which the query fits inside `pixels`."""
        return min(pixels.shape[1] / self.image.width, pixels.shape[0] / self.image.height)


@dataclass(frozen=True)
class Placement:
    """Where the query's pixels lie in a candidate: the RMS difference there (grey levels) and
    the query's box in the candidate's own pixels."""

    error: float
    box: Box


def locate(query: Template, candidate: Thumbnails) -> Placement | None:
    """The query's best placement in `candidate` if its pixels match there (RMS difference
    below `MAX_PIXEL_ERROR`); otherwise None."""
    best: tuple[float, tuple[int, int], float] | None = None  # error, corner, scale
    scale = query.fit(candidate.coarse)
    while max(query.image.size) * scale >= MIN_TEMPLATE:
        found = _best_position(candidate.coarse, query.at(scale))
        if best is None or found[0] < best[0]:
            best = (*found, scale)
        scale /= COARSE_STEP
    if best is None:
        return None
    _, (x, y), scale = best
    # refine on the fine thumbnail, within a window around the coarse placement
    zoom = candidate.fine.shape[1] / candidate.coarse.shape[1]
    reach = COARSE_STEP * max(query.image.size) * scale * zoom
    x0, y0 = (max(0, int(v * zoom) - SLACK) for v in (x, y))
    window = candidate.fine[y0:y0 + int(reach) + 2 * SLACK, x0:x0 + int(reach) + 2 * SLACK]
    fine: tuple[float, tuple[int, int], float] | None = None
    scale = min(scale * zoom * COARSE_STEP, query.fit(window))
    while scale >= best[2] * zoom / COARSE_STEP:
        found = _best_position(window, query.at(scale))
        if fine is None or found[0] < fine[0]:
            fine = (*found, scale)
        scale /= FINE_STEP
    if fine is None or fine[0] >= MAX_PIXEL_ERROR:
        return None
    error, (x, y), scale = fine
    width, height = query.at(scale).shape[1], query.at(scale).shape[0]
    to_image = candidate.size[0] / candidate.fine.shape[1]
    box = (round((x0 + x) * to_image), round((y0 + y) * to_image),
           round((x0 + x + width) * to_image), round((y0 + y + height) * to_image))
    return Placement(error, box)


def _best_position(pixels: np.ndarray, template: np.ndarray) -> tuple[float, tuple[int, int]]:
    """The RMS difference at the template's best position in `pixels`, and that position."""
    cv2 = opencv()
    least, _, corner, _ = cv2.minMaxLoc(cv2.matchTemplate(pixels, template, cv2.TM_SQDIFF))
    return float(np.sqrt(max(least, 0.0) / template.size)), (int(corner[0]), int(corner[1]))


AGREEMENT_SIDE = 96     # the photometric check compares the pictures at this long side
AGREEMENT_BLUR = 1.0    # Gaussian sigma (pixels at that side): blur and resampling even out


def agreement(query: Image.Image, candidate: Image.Image, transform: np.ndarray) -> float:
    """How well the query's pixels agree with the candidate's where `transform` (2 x 3,
    query pixels -> candidate pixels) places them: the correlation of their grey levels,
    both slightly blurred, over the part of the query that lands inside the candidate.
    Keypoints on repeated or look-alike structure (two tiles of one pattern, two cups of
    one photo) can agree on a placement by chance; the pixels there then do not. A
    correlation is blind to brightness, contrast and colour changes, which copies have."""
    cv2 = opencv()
    shrink = AGREEMENT_SIDE / max(query.size)
    width, height = (max(8, round(v * shrink)) for v in query.size)
    small = np.asarray(query.convert("L").resize((width, height), Image.Resampling.BILINEAR,
                                                 reducing_gap=2.0), np.float32)
    stride = float(np.sqrt(abs(np.linalg.det(transform[:, :2])))) / shrink
    reduce = min(1.0, 1.0 / stride)  # shrink the candidate first, so warping does not alias
    source = candidate.convert("L")
    if reduce < 1.0:
        source = source.resize((max(1, round(candidate.width * reduce)),
                                max(1, round(candidate.height * reduce))),
                               Image.Resampling.BILINEAR, reducing_gap=2.0)
    to_source = np.hstack([transform[:, :2] / shrink, transform[:, 2:]]) * reduce
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(np.asarray(source, np.float32), to_source, (width, height),
                            flags=flags, borderValue=-1.0)
    inside = cv2.warpAffine(np.ones(np.asarray(source).shape, np.float32), to_source,
                            (width, height), flags=flags, borderValue=0.0)
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8)) > 0.99  # clear of the blurred edge
    if inside.sum() < 64:
        return 0.0
    a = cv2.GaussianBlur(small, (0, 0), AGREEMENT_BLUR)[inside]
    b = cv2.GaussianBlur(np.where(inside, warped, 0), (0, 0), AGREEMENT_BLUR)[inside]
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / norm) if norm > 0 else 0.0
