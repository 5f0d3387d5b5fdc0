"""Validation on held-out groups: what a trained model gets on groups it never saw, against
the frozen encoder, with the paired tests `lookalike compare` uses.

A validation that holds out images of the training groups rewards memorising those groups
(0.84 -> 0.93 seen, while new groups lost mAP), so whole groups are held out: every
held-out item queries the other held-out items (same group = relevant), and the figures
estimate what a new group gets. The same groups pick the best epoch, so the trained figure
is slightly optimistic; the frozen one is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lookalike.comparison import MetricComparison, bootstrap_interval, randomization_p_value
from lookalike.errors import LookalikeError
from lookalike.metrics import Ranked, per_query

VALIDATION_DEPTH = 1000  # ranks scored; whole classes of hundreds need them
METRICS = (("map", "map"), ("r@1", "success@1"), ("ndcg@10", "ndcg@10"))
SIGNIFICANCE = 0.05


def held_out_groups(labels: np.ndarray, fraction: float, rng: np.random.Generator
                    ) -> np.ndarray:
    """Which items validate: whole groups (labels), about `fraction` of the items, chosen at
    random among the groups of two or more (a held-out item needs a positive beside it), at
    least two groups (ranking needs a negative), and at least two left to train on."""
    names, counts = np.unique(labels, return_counts=True)
    usable = rng.permutation(names[counts >= 2])
    if len(usable) < 4:
        raise LookalikeError(f"{len(usable)} groups of two or more images: at least 4 are "
                             "needed (2 to train on, 2 held out to validate)")
    sizes = dict(zip(names.tolist(), counts.tolist(), strict=True))
    chosen: list[np.generic] = []
    held = 0
    for name in usable[:-2]:
        if len(chosen) >= 2 and held >= fraction * len(labels):
            break
        chosen.append(name)
        held += sizes[name]
    return np.isin(labels, chosen)


def per_query_metrics(vectors: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Leave-one-out R@1, mAP and nDCG@10 of each item of `vectors` (same label = relevant),
    cut at the top 1,000 (trec_eval's conventions: R from all same-label items)."""
    z = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = z @ z.T
    np.fill_diagonal(sims, -np.inf)
    depth = min(VALIDATION_DEPTH, len(z) - 1)
    top = np.argsort(-sims, axis=1)[:, :depth]
    grades = (labels[top] == labels[:, None]).astype(np.int64)
    counts = (labels[:, None] == labels[None, :]).sum(axis=1) - 1
    ideal = (np.arange(max(1, counts.max()))[None, :] < counts[:, None]).astype(np.int64)
    ranked = Ranked([str(i) for i in range(len(z))], grades, np.full(len(z), depth), ideal)
    return {name: per_query(ranked, metric) for name, metric in METRICS}


def validation_metrics(vectors: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The means of `per_query_metrics`."""
    return {name: float(values.mean())
            for name, values in per_query_metrics(vectors, labels).items()}


@dataclass(frozen=True)
class HeldOutComparison:
    """The best epoch against the frozen encoder on the held-out groups."""

    groups: int
    images: int
    best_epoch: int
    fell_back: bool  # nothing beat the frozen encoder: it is kept as it is
    metrics: list[MetricComparison]

    @property
    def trained_map(self) -> float:
        return next(m.mean_b for m in self.metrics if m.metric == "map")

    @property
    def gained(self) -> bool:
        """The trained model's mAP is higher, significantly (paired randomization test)."""
        found = next(m for m in self.metrics if m.metric == "map")
        return not self.fell_back and found.difference > 0 and found.p_value < SIGNIFICANCE

    def table(self) -> str:
        lines = [f"held out: {self.groups} groups, {self.images} images never trained on",
                 f"{'metric':<9} {'frozen':>7} {'trained':>8} {'change':>8} {'p':>7}  "
                 "95% interval"]
        lines += [f"{m.metric:<9} {m.mean_a:7.4f} {m.mean_b:8.4f} {m.difference:+8.4f} "
                  f"{m.p_value:7.4f}  [{m.ci_low:+.4f}, {m.ci_high:+.4f}]" for m in self.metrics]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {"groups": self.groups, "images": self.images, "best_epoch": self.best_epoch,
                "fell_back": self.fell_back, "gained": self.gained,
                "metrics": [vars(m) for m in self.metrics]}


def compare_to_frozen(frozen: dict[str, np.ndarray], trained: dict[str, np.ndarray],
                      labels: np.ndarray, best_epoch: int, *, seed: int = 0,
                      resamples: int = 10_000) -> HeldOutComparison:
    """Per-query figures of the frozen encoder and of the trained model on the same
    held-out items, compared pairwise (seeded: the same inputs give the same p-values).
    A trained model no better in mAP than the frozen encoder falls back to it."""
    fell_back = bool(trained["map"].mean() <= frozen["map"].mean())
    trained = frozen if fell_back else trained
    rows = []
    for name, _ in METRICS:
        diffs = trained[name] - frozen[name]
        rng = np.random.default_rng(seed)
        low, high = bootstrap_interval(diffs, resamples, rng)
        rows.append(MetricComparison(name, float(frozen[name].mean()),
                                     float(trained[name].mean()), float(diffs.mean()),
                                     randomization_p_value(diffs, resamples, rng), low, high))
    return HeldOutComparison(len(np.unique(labels)), len(labels), best_epoch, fell_back, rows)
