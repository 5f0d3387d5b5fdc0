"""Local features: an image as a bag of visual words, what finds the source of a detail too
small for any one vector (issue 20).

An image's SIFT keypoints (Lowe 2004; RootSIFT descriptors, Arandjelović & Zisserman
2012), spread over the image and capped, are each quantised to the nearest word of a
visual vocabulary (k-means centroids, Philbin et al. 2007) and given a 64-bit signature
(Hamming embedding, Jégou et al. 2008): two descriptors match when they share a word and
their signatures differ in few bits, which a big vocabulary alone would need millions of
words for. A small query (a 50 px detail) is enlarged first, so that the detector sees it
at a scale its source shows.

The vocabulary is shipped (`vocabulary.npz`, trained on photographs by
`scripts/train_vocabulary.py`), so a collection of any size, growing or not, uses one and
never retrains.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from PIL import Image

from lookalike.errors import ImageError, LookalikeError
from lookalike.images import decode
from lookalike.verification import one_thread, opencv

MAX_FEATURES = 2000     # descriptors an image: a 10 % crop holds ~1 % of them
CELLS = 4               # ... spread over CELLS x CELLS parts, so that quiet parts keep some
MIN_SIDE = 160          # an image smaller than this is enlarged to it before detection
MAX_SIDE = 1024         # ... and a larger one shrunk to it: keypoints cost grows with pixels
QUERY_WORDS = 2         # a query's point takes its nearest words: quantisation misses fewer
CONTRAST = 0.002       # SIFT detection threshold: photos low in contrast keep points
BITS = 64               # Hamming-embedding signature length
VOCABULARY = "vocabulary.npz"
LOOKUP_LISTS, LOOKUP_PROBES = 64, 8  # the words' own inverted file, and the lists searched


@dataclass(frozen=True)
class LocalFeatures:
    """RootSIFT descriptors (n, 128) float32, their points (n, 2) in the image's own
    pixels and poses (n, 2) uint8 (see `poses`), with the image's size."""

    points: np.ndarray
    poses: np.ndarray
    descriptors: np.ndarray
    size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.points)


def describe(image: Image.Image, count: int = MAX_FEATURES) -> LocalFeatures:
    """Up to `count` SIFT keypoints of an RGB image, the strongest of each cell."""
    cv2 = opencv()
    side = max(image.size)
    scale = min(MAX_SIDE, max(MIN_SIDE, side)) / side
    work = image if scale == 1.0 else image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.BILINEAR, reducing_gap=2.0)
    grey = np.asarray(work.convert("L"))
    sift = cv2.SIFT_create(contrastThreshold=CONTRAST)
    found = sift.detect(grey, None)
    if found:
        where = cv2.KeyPoint_convert(found).reshape(-1, 2)
        response = np.fromiter((k.response for k in found), np.float32, len(found))
        kept = spread(where, response, grey.shape, count)
        found, descriptors = sift.compute(grey, [found[i] for i in kept])  # the kept only
    if not found or descriptors is None:
        return LocalFeatures(np.empty((0, 2), np.float32), np.empty((0, 2), np.uint8),
                             np.empty((0, 128), np.float32), image.size)
    points = cv2.KeyPoint_convert(found).reshape(-1, 2)
    angles = np.fromiter((k.angle for k in found), np.float32, len(found))
    sizes = np.fromiter((k.size for k in found), np.float32, len(found)) / scale
    return LocalFeatures((points / scale).astype(np.float32), poses(angles, sizes),
                         root_sift(descriptors), image.size)


def poses(angles: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Each keypoint's orientation (degrees) in 256ths of a turn and its size (pixels) in
    16ths of an octave, as bytes: two matches of one copy differ by the same turn and
    scale (weak geometric consistency, Jégou et al. 2008)."""
    turn = np.round(angles / 360.0 * 256).astype(np.int64) % 256
    octave = np.clip(np.round(16 * np.log2(np.maximum(sizes, 1e-3))) + 64, 0, 255)
    return np.stack([turn, octave], axis=1).astype(np.uint8)


def spread(points: np.ndarray, response: np.ndarray, shape: tuple[int, ...], count: int
           ) -> np.ndarray:
    """Which of the points to keep: the strongest `count / CELLS**2` of each cell (a detail
    of a quiet part keeps points to match), then the strongest of the rest up to `count`."""
    height, width = shape[:2]
    cell = (np.minimum(points[:, 1] * CELLS // height, CELLS - 1) * CELLS
            + np.minimum(points[:, 0] * CELLS // width, CELLS - 1)).astype(np.int64)
    order = np.lexsort((-response, cell))  # by cell, strongest first
    first = np.searchsorted(cell[order], cell[order], side="left")
    rank_in_cell = np.empty(len(order), np.int64)
    rank_in_cell[order] = np.arange(len(order)) - first
    # by rank in its cell, then strength: each cell's first before any cell's second
    return np.lexsort((-response, rank_in_cell))[:count]


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT: the square root of the L1-normalised descriptor, compared by L2 (the
    Hellinger kernel on SIFT; better matching at no cost)."""
    d = descriptors.astype(np.float32)
    d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-7)
    return np.sqrt(d)


@dataclass(frozen=True)
class Words:
    """An image quantised: each point's word(s) (n, a) and 64-bit signatures (n, a) (a > 1
    for a query, which takes its nearest `a` words), with points (n, 2) in its own pixels
    and their poses (n, 2)."""

    words: np.ndarray
    signatures: np.ndarray
    points: np.ndarray
    poses: np.ndarray
    size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.points)

    def to_bytes(self) -> bytes:
        """Compact storage of an indexed image (one word a point): 16 bytes a point."""
        if self.words.shape[1] != 1:
            raise ValueError("only singly assigned words are stored")
        relative = np.clip(self.points / np.array(self.size, np.float32), 0, 1)
        header = np.array([len(self), *self.size], np.uint32)
        return b"".join([header.tobytes(), self.words[:, 0].astype(np.uint16).tobytes(),
                         self.signatures[:, 0].astype(np.uint64).tobytes(),
                         np.round(relative * 65535).astype(np.uint16).tobytes(),
                         self.poses.astype(np.uint8).tobytes()])

    @classmethod
    def from_bytes(cls, blob: bytes) -> Words:
        n, width, height = np.frombuffer(blob, np.uint32, 3).tolist()
        at = 12
        words = np.frombuffer(blob, np.uint16, n, at).astype(np.int64)
        at += 2 * n
        signatures = np.frombuffer(blob, np.uint64, n, at)
        at += 8 * n
        relative = np.frombuffer(blob, np.uint16, 2 * n, at).reshape(n, 2) / 65535.0
        at += 4 * n
        points = (relative * np.array([width, height])).astype(np.float32)
        poses = np.frombuffer(blob, np.uint8, 2 * n, at).reshape(n, 2)
        return cls(words[:, None], signatures[:, None], points, poses, (width, height))


class Vocabulary:
    """Visual words: k-means centroids of RootSIFT descriptors, with the Hamming embedding
    (a random orthogonal projection to 64 dimensions, and each word's median there)."""

    def __init__(self, centroids: np.ndarray, projection: np.ndarray, medians: np.ndarray
                 ) -> None:
        self.centroids = np.ascontiguousarray(centroids, np.float32)
        self.projection = np.ascontiguousarray(projection, np.float32)
        self.medians = np.ascontiguousarray(medians, np.float32)
        # words are looked up through an inverted file over the words themselves: ~10 x
        # faster than comparing with all of them, and nearly always the same word
        coarse = faiss.IndexFlatL2(self.centroids.shape[1])
        self._index = faiss.IndexIVFFlat(coarse, self.centroids.shape[1], LOOKUP_LISTS)
        self._index.train(self.centroids)
        self._index.add(self.centroids)
        self._index.nprobe = LOOKUP_PROBES
        self.fingerprint = hashlib.sha256(b"".join(
            a.tobytes() for a in (self.centroids, self.projection, self.medians))).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.centroids)

    @classmethod
    def train(cls, descriptors: np.ndarray, words: int, seed: int = 0) -> Vocabulary:
        """A vocabulary of `words` words from RootSIFT descriptors (k-means, faiss)."""
        kmeans = faiss.Kmeans(descriptors.shape[1], words, niter=20, seed=seed,
                              max_points_per_centroid=100_000)
        kmeans.train(np.ascontiguousarray(descriptors, np.float32))
        assert kmeans.centroids is not None
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.standard_normal((descriptors.shape[1], BITS)))
        projection = q.T.astype(np.float32)
        vocab = cls(kmeans.centroids, projection, np.zeros((words, BITS), np.float32))
        assigned = vocab.assign(descriptors, 1)[:, 0]
        projected = descriptors @ projection.T
        medians = np.tile(np.median(projected, axis=0), (words, 1))
        order = np.argsort(assigned, kind="stable")
        bounds = np.searchsorted(assigned[order], np.arange(words + 1))
        for word in range(words):
            rows = order[bounds[word]:bounds[word + 1]]
            if len(rows) >= 8:  # too few to estimate: the overall median stands
                medians[word] = np.median(projected[rows], axis=0)
        return cls(vocab.centroids, projection, medians)

    def assign(self, descriptors: np.ndarray, nearest: int) -> np.ndarray:
        """Each descriptor's `nearest` words (n, nearest)."""
        with one_thread():
            _, words = self._index.search(np.ascontiguousarray(descriptors, np.float32),
                                          nearest)
        return words.astype(np.int64)

    def quantise(self, features: LocalFeatures, nearest: int = 1) -> Words:
        """Words and signatures of an image's features (`nearest` words each)."""
        if not len(features):
            empty = np.empty((0, nearest), np.int64)
            return Words(empty, empty.astype(np.uint64), features.points, features.poses,
                         features.size)
        words = self.assign(features.descriptors, nearest)
        projected = features.descriptors @ self.projection.T  # (n, BITS)
        bits = projected[:, None, :] > self.medians[words]  # (n, nearest, BITS)
        signatures = np.packbits(bits, axis=-1, bitorder="little").view(np.uint64)[..., 0]
        return Words(words, signatures, features.points, features.poses, features.size)

    def save(self, path: Path) -> None:
        np.savez_compressed(path, centroids=self.centroids.astype(np.float16),
                            projection=self.projection, medians=self.medians.astype(np.float16))

    @classmethod
    def load(cls, path: Path | Any) -> Vocabulary:
        with np.load(path) as data:
            return cls(data["centroids"], data["projection"], data["medians"])


def file_words(path: str, vocabulary: Vocabulary) -> bytes | None:
    """An image file's visual words, stored (None when it does not decode: it is still
    indexed, without them)."""
    try:
        image = decode(path).image
    except ImageError:
        return None
    return vocabulary.quantise(describe(image)).to_bytes()


@functools.cache
def shipped_vocabulary() -> Vocabulary:
    """The vocabulary that comes with lookalike."""
    with resources.as_file(resources.files("lookalike") / VOCABULARY) as path:
        if not path.is_file():
            raise LookalikeError(f"{path}: the visual vocabulary is missing from the package; "
                                 "reinstall lookalike")
        return Vocabulary.load(path)
