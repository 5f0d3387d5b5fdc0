"""The probability that a pair `duplicates` found is a copy, from the evidence for it.

A similarity threshold is guesswork ("similar is not duplicate"), and so is a count of
keypoint matches: 20 agreeing matches are proof on a photo and chance on a tiled pattern.
What decides is the evidence together, so a logistic model weighs it, fitted on judged
pairs (`lookalike dataset copies`, or a user's own `groups.csv`):

| kind        | the pair was found by                    | its features                      |
|-------------|------------------------------------------|-----------------------------------|
| `exact`     | the same bytes or the same pixels        | -                                 |
| `pixels`    | thumbnails: resized, re-encoded, turned  | agreement, RMS error / 8          |
| `keypoints` | keypoints on one placement               | log(1 + inliers) / 5, agreement   |
| `template`  | a template search for the smaller one    | agreement, RMS error / 8          |
| `none`      | nothing (a `similar` pair)               | -                                 |

Each kind has its own intercept and weights, and all share the embedding's cosine. The
parameters are plain numbers in JSON: the project's fit ships with the package
(`copy_probability.json`); `lookalike duplicates --fit-probability` writes a collection's
own beside its catalog, which then wins.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np

from lookalike.atomic import atomic_write
from lookalike.errors import LookalikeError

FEATURES = ("exact", "pixels", "pixels:agreement", "pixels:error",
            "keypoints", "keypoints:inliers", "keypoints:agreement",
            "template", "template:agreement", "template:error", "none", "score")
SHIPPED = "copy_probability.json"
FILE = "copy-probability.json"  # a collection's own fit, in its folder


class Evidence(Protocol):
    """What a pair's probability is read from (a `duplicates.CopyPair`)."""

    @property
    def relation(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def inliers(self) -> int | None: ...
    @property
    def pixel_error(self) -> float | None: ...
    @property
    def agreement(self) -> float | None: ...


def kind(pair: Evidence) -> str:
    if pair.relation in ("identical", "same-pixels"):
        return "exact"
    if pair.relation == "similar":
        return "none"
    if pair.inliers is not None:
        return "keypoints"
    return "template" if pair.relation == "cropped" else "pixels"


def features(pairs: Sequence[Evidence]) -> np.ndarray:
    rows = np.zeros((len(pairs), len(FEATURES)), np.float64)
    column = {name: i for i, name in enumerate(FEATURES)}
    for row, pair in zip(rows, pairs, strict=True):
        found = kind(pair)
        row[column[found]] = 1.0
        row[column["score"]] = pair.score
        if found in ("pixels", "keypoints", "template"):
            row[column[f"{found}:agreement"]] = pair.agreement or 0.0
        if found in ("pixels", "template"):
            row[column[f"{found}:error"]] = (pair.pixel_error or 0.0) / 8
        if found == "keypoints":
            row[column["keypoints:inliers"]] = math.log1p(pair.inliers or 0) / 5
    return rows


@dataclass(frozen=True)
class CopyProbability:
    """P(copy) = sigmoid(weights . features)."""

    weights: np.ndarray
    fitted_on: str = ""  # what the judged pairs were, for the record

    def __call__(self, pairs: Sequence[Evidence]) -> np.ndarray:
        if not pairs:
            return np.zeros(0)
        return 1 / (1 + np.exp(-(features(pairs) @ self.weights)))

    def save(self, path: Path) -> None:
        with atomic_write(path) as fh:
            json.dump({"features": FEATURES, "weights": self.weights.round(6).tolist(),
                       "fitted_on": self.fitted_on}, fh, indent=1)

    @classmethod
    def load(cls, path: Path) -> CopyProbability:
        try:
            saved = json.loads(path.read_text())
            if tuple(saved["features"]) != FEATURES:
                raise ValueError("fitted on other features")
            return cls(np.asarray(saved["weights"], np.float64), saved.get("fitted_on", ""))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise LookalikeError(f"{path}: not a copy-probability fit ({error}); refit it "
                                 "with lookalike duplicates --fit-probability") from None

    @classmethod
    def for_collection(cls, folder: Path) -> CopyProbability:
        """The collection's own fit when it has one, else the project's."""
        own = folder / FILE
        if own.is_file():
            return cls.load(own)
        with resources.as_file(resources.files("lookalike") / SHIPPED) as shipped:
            return cls.load(shipped)


def fit(pairs: Sequence[Evidence], is_copy: Sequence[bool] | np.ndarray, *, fitted_on: str = ""
        ) -> CopyProbability:
    """Logistic regression (scikit-learn's, lightly regularised) of `is_copy` on the pairs'
    evidence."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise LookalikeError("fitting needs scikit-learn: pip install scikit-learn") from None
    labels = np.asarray(is_copy, bool)
    if labels.all() or not labels.any():
        raise LookalikeError("fitting needs judged pairs of both kinds, copies and not")
    model = LogisticRegression(C=10.0, fit_intercept=False, max_iter=2000)
    model.fit(features(pairs), labels)
    return CopyProbability(model.coef_[0].astype(np.float64), fitted_on)


@dataclass(frozen=True)
class Reliability:
    """Predicted against observed, in bins of predicted probability."""

    expected_error: float  # ECE: the count-weighted mean |predicted - observed|
    bins: list[tuple[float, float, float, int]]  # (low, mean predicted, observed, pairs)


def reliability(predicted: np.ndarray, is_copy: np.ndarray, bins: int = 10) -> Reliability:
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(predicted, edges) - 1, 0, bins - 1)
    rows, error = [], 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            mean, seen = float(predicted[inside].mean()), float(is_copy[inside].mean())
            rows.append((float(edges[b]), mean, seen, int(inside.sum())))
            error += inside.sum() * abs(mean - seen)
    return Reliability(error / max(1, len(predicted)), rows)
