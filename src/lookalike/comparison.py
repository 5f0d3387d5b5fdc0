"""Is run B better than run A? Per-metric differences with a paired randomization test and
a bootstrap confidence interval over queries (Smucker, Allan & Carterette, CIKM 2007).

Both tests resample the per-query differences `d = metric_B - metric_A`:
- randomization: under the null hypothesis each difference is as likely to flip sign, so
  p = (1 + #{|mean(s * d)| >= |mean(d)|}) / (1 + permutations) over random signs s;
- bootstrap: the 2.5th and 97.5th percentiles of mean(d) over queries drawn with replacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.metrics import Gain, Qrels, Run, evaluate

_CHUNK = 1_000_000  # resampled values held in memory at once


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    mean_a: float
    mean_b: float
    difference: float  # mean_b - mean_a
    p_value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Comparison:
    queries: int
    metrics: list[MetricComparison]
    notes: list[str]

    def to_dict(self) -> dict[str, object]:
        return {"queries": self.queries, "metrics": [asdict(m) for m in self.metrics],
                "notes": self.notes}

    def table(self) -> str:
        lines = [f"{'metric':<12} {'A':>8} {'B':>8} {'B-A':>9} {'p':>8}  95% CI of B-A"]
        for r in self.metrics:
            lines.append(f"{r.metric:<12} {r.mean_a:8.4f} {r.mean_b:8.4f} "
                         f"{r.difference:+9.4f} {r.p_value:8.4f}  "
                         f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]")
        lines.append(f"{self.queries} queries")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def randomization_p_value(diffs: np.ndarray, permutations: int, rng: np.random.Generator
                          ) -> float:
    """Two-sided paired randomization (sign-flip) test of mean(diffs) == 0."""
    n = len(diffs)
    if n == 0 or not diffs.any():
        return 1.0
    observed = abs(diffs.mean())
    extreme, done = 0, 0
    rows = max(1, _CHUNK // n)
    while done < permutations:
        size = min(rows, permutations - done)
        signs = rng.integers(0, 2, (size, n), dtype=np.int8) * 2 - 1
        extreme += int((np.abs(signs @ diffs) / n >= observed - 1e-12).sum())
        done += size
    return (extreme + 1) / (permutations + 1)


def bootstrap_interval(diffs: np.ndarray, samples: int, rng: np.random.Generator,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(diffs) over resampled queries."""
    n = len(diffs)
    if n == 0:
        return 0.0, 0.0
    means: list[np.ndarray] = []
    rows = max(1, _CHUNK // n)
    while sum(len(m) for m in means) < samples:
        size = min(rows, samples - sum(len(m) for m in means))
        means.append(diffs[rng.integers(0, n, (size, n))].mean(axis=1))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(np.concatenate(means), [tail, 100 - tail])
    return float(low), float(high)


def compare_runs(run_a: Run, run_b: Run, qrels: Qrels, metrics: Sequence[str], *,
                 permutations: int = 10_000, bootstrap: int = 10_000, seed: int = 0,
                 threshold: int = 1, gain: Gain = "linear") -> Comparison:
    """Compare two runs on the queries both answered (and the qrels judge); seeded, so the
    same inputs always give the same p-values and intervals."""
    a = evaluate(run_a, qrels, metrics, threshold=threshold, gain=gain)
    b = evaluate(run_b, qrels, metrics, threshold=threshold, gain=gain)
    first = next(iter(a))
    queries = sorted(set(a[first]) & set(b[first]))
    if not queries:
        raise LookalikeError("the two runs share no judged query")
    rows = []
    for name in a:
        va = np.array([a[name][q] for q in queries])
        vb = np.array([b[name][q] for q in queries])
        diffs = vb - va
        rng = np.random.default_rng(seed)
        low, high = bootstrap_interval(diffs, bootstrap, rng)
        rows.append(MetricComparison(name, float(va.mean()), float(vb.mean()),
                                     float(diffs.mean()),
                                     randomization_p_value(diffs, permutations, rng), low, high))
    return Comparison(len(queries), rows, _tie_notes(rows))


def _tie_notes(rows: Sequence[MetricComparison], alpha: float = 0.05) -> list[str]:
    """Flag metrics blind to a difference the others see (e.g. MRR only sees the first
    relevant hit, so two runs that differ below it tie on MRR)."""
    differing = [r.metric for r in rows if r.p_value < alpha]
    notes = []
    for row in rows:
        if row.difference == 0 and differing:
            notes.append(f"{row.metric} ties while {', '.join(differing)} differ"
                         + (": MRR only sees the first relevant hit"
                            if row.metric.startswith("mrr") else ""))
    return notes

