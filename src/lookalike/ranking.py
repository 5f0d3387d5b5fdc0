"""From an index's candidates to the hits a user sees: one hit an image, grades from the
calibration, scores in the metric asked for, and re-ranking by verification (the images
that contain the query, or a copy of it, first, with the box where it lies)."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Literal

import numpy as np
from PIL import Image

from lookalike import verification
from lookalike.calibration import Calibrator
from lookalike.encoders import EncodeInput
from lookalike.hits import Hit
from lookalike.images import ImageError, decode
from lookalike.verification import Keypoints, Thumbnails, keypoints, thumbnails

Metric = Literal["cosine", "dot", "l2"]
METRICS: tuple[Metric, ...] = ("cosine", "dot", "l2")


def verified(query: EncodeInput, hits: list[Hit], depth: int,
             found: Mapping[str, Hit] | None = None) -> list[Hit]:
    """The first `depth` hits re-ranked by verification against the query: those whose
    keypoints verify first (most inliers first), then those where the query's pixels match
    (least difference first), each boxed where the query lies; then the others in their
    order, then the hits past `depth`. `found` are hits verified already (by the
    local-feature index, with inliers and box), by image id: they join the first group
    where the keypoints do not verify them, from the shortlist or not."""
    found = found or {}
    image = decode(query[0]).crop(query[1]) if isinstance(query, tuple) else decode(query).image
    query_points, template = keypoints(image), verification.Template(image)
    by_keypoints, by_pixels, unverified = [], [], []
    for hit in hits[:depth]:
        evidence = file_evidence(hit.path)
        match = verification.verify(query_points, evidence[0]) if evidence else None
        placed = (verification.locate(template, evidence[1]) if evidence is not None
                  and match is None and hit.id not in found else None)
        if match is not None:
            by_keypoints.append(replace(hit, inliers=match.inliers, box=match.box))
        elif hit.id in found:
            by_keypoints.append(found[hit.id])
        elif placed is not None:
            by_pixels.append(replace(hit, pixel_error=placed.error, box=placed.box))
        else:
            unverified.append(hit)
    shortlist = {h.id for h in hits[:depth]}
    by_keypoints += [h for i, h in found.items() if i not in shortlist]
    by_keypoints.sort(key=lambda h: -(h.inliers or 0))
    by_pixels.sort(key=lambda h: h.pixel_error or 0.0)
    return by_keypoints + by_pixels + unverified + [h for h in hits[depth:] if h.id not in found]


MIN_AGREEMENT = 0.9  # a local-feature placement's pixel correlation, below which it is chance
AGREEMENT_DRAFT = 1024  # candidates are decoded at about this size for the check


def agrees(query: Image.Image, path: str, transform: np.ndarray) -> bool:
    """The indexed file's pixels where `transform` (query pixels -> its pixels) places the
    query correlate with the query's (`verification.agreement`). The local-feature index
    matches quantised points, and a few of them (a small detail has few) can agree on a
    placement by chance: on photo-crops, 90 % of the true placements correlate at least
    0.9, 2 % of the chance ones (benchmarks/RESULTS.md)."""
    try:
        found = decode(path, draft_size=AGREEMENT_DRAFT)
    except ImageError:
        return False
    shrink = found.image.width / found.full_size[0]  # JPEG draft decoding may shrink it
    return verification.agreement(query, found.image, transform * shrink) >= MIN_AGREEMENT


def file_evidence(path: str) -> tuple[Keypoints, Thumbnails] | None:
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


def best_per_image(hits: list[Hit]) -> list[Hit]:
    """One hit an image, its best-scoring one, best first."""
    best: dict[str, Hit] = {}
    for hit in hits:
        if hit.id not in best or hit.score > best[hit.id].score:
            best[hit.id] = hit
    return sorted(best.values(), key=lambda h: -h.score)


def graded(hits: list[Hit], calibration: Calibrator, min_grade: float | None) -> list[Hit]:
    """Hits (cosine-scored, best first) with their calibrated grades; with `min_grade`, only
    those the calibration counts as at least that grade."""
    grades, at_least = calibration.predict_scores([h.score for h in hits])
    keep = calibration.at_least(at_least, min_grade or 0.0)
    return [replace(h, grade=float(g), p_relevant=tuple(float(p) for p in ps))
            for h, g, ps, kept in zip(hits, grades, at_least, keep, strict=True) if kept]


def metric_score(inner_product: float, metric: Metric) -> float:
    """Vectors are unit length, so cosine = dot; L2 is reported as minus the Euclidean
    distance, sqrt(2 - 2 cos), to keep 'higher is more similar'."""
    if metric == "l2":
        return -float(np.sqrt(max(0.0, 2.0 - 2.0 * inner_product)))
    return inner_product
