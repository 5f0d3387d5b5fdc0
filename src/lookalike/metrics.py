"""Ranking metrics as pure, vectorised functions, with trec_eval's conventions by default.

A run maps each query id to `{doc_id: score}` (or to a ranked list of doc ids, taken as is);
qrels map each query id to `{doc_id: grade}`, grades 0-5. Every query is laid out as one row
of a padded `(queries, depth)` grade matrix with one global sort, so no metric loops over
queries in Python.

| point | convention |
|---|---|
| binary relevance from grades | relevant iff grade >= threshold (default 1) |
| nDCG gain | linear, `rel` (default); `gain="exp"` gives 2^rel - 1 |
| discount | 1 / log2(rank + 1) |
| IDCG | from all judged items of the query (the qrels), cut at k |
| R in Recall@k, AP, R-precision | all relevant items of the query in the qrels |
| P@k when fewer than k results | divide by k |
| order of a scored run | score descending, ties by doc id descending (trec_eval) |
| query with no relevant item | scores 0 and counts in the mean |
| queries averaged | those in both run and qrels; `complete=True` (trec_eval -c): all |
|                  | qrels queries, a query missing from the run scoring 0          |
| MRR | no cut-off unless `mrr@k` is asked |

Metric names (`evaluate(run, qrels, ["ndcg@10", "map"])`):

- `p@k` = |relevant in top k| / k
- `r@k` = |relevant in top k| / R
- `success@k` = 1 if any relevant in top k
- `mrr`, `mrr@k` = 1 / rank of the first relevant item (0 if none, or none within k)
- `map`, `map@k` = (1/R) * sum over relevant ranks i (<= k) of P@i  (Buckley & Voorhees)
- `rprec` = P@R
- `dcg@k` = sum_{i<=k} gain(rel_i) / log2(i + 1)  (Järvelin & Kekäläinen, 2002)
- `ndcg`, `ndcg@k` = DCG@k / IDCG@k
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lookalike.errors import LookalikeError

Run = Mapping[str, Mapping[str, float] | Sequence[str]]
Qrels = Mapping[str, Mapping[str, int]]
Gain = Literal["linear", "exp"]

_NAME = re.compile(r"^(mrr|p|r|map|ndcg|dcg|rprec|success)(?:@(\d+))?$")
_NEEDS_K = {"p", "r", "dcg", "success"}
_NO_K = {"rprec"}


class MetricError(LookalikeError):
    """An unknown metric name, or a run or qrels that cannot be scored."""


@dataclass(frozen=True)
class Metric:
    """A parsed metric name such as `ndcg@10`; `k` is None for no cut-off."""

    kind: str
    k: int | None

    @classmethod
    def parse(cls, name: str) -> Metric:
        match = _NAME.match(name.strip().lower())
        if not match:
            raise MetricError(
                f"unknown metric {name!r}; expected one of mrr, mrr@k, p@k, r@k, map, map@k, "
                "ndcg, ndcg@k, dcg@k, rprec, success@k"
            )
        kind, k = match[1], int(match[2]) if match[2] else None
        if k is not None and k < 1:
            raise MetricError(f"{name!r}: k must be >= 1")
        if kind in _NEEDS_K and k is None:
            raise MetricError(f"{name!r} needs a cut-off, e.g. {kind}@10")
        if kind in _NO_K and k is not None:
            raise MetricError(f"{name!r} takes no cut-off")
        return cls(kind, k)

    def __str__(self) -> str:
        return self.kind if self.k is None else f"{self.kind}@{self.k}"


@dataclass(frozen=True)
class Ranked:
    """Run and qrels laid out for vectorised scoring, one row per query.

    `grades[q, i]` is the grade of the document at rank i+1 (0 when unjudged or past the
    end of the list); `ideal[q]` the query's judged grades sorted descending (zero padded);
    `lengths[q]` the number of retrieved documents.
    """

    query_ids: list[str]
    grades: np.ndarray
    lengths: np.ndarray
    ideal: np.ndarray


def _ordered_run(qid: str, docs: Mapping[str, float] | Sequence[str]) -> list[str]:
    if isinstance(docs, Mapping):
        scores = list(docs.values())
        if any(isinstance(s, float) and math.isnan(s) for s in scores):
            raise MetricError(f"query {qid!r}: the run holds NaN scores")
        # score descending, then doc id descending: sort ascending on both and reverse
        return [d for d, _ in sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]
    ranked = list(docs)
    if len(set(ranked)) != len(ranked):
        raise MetricError(f"query {qid!r}: the run lists a document more than once")
    return ranked


def rank(run: Run, qrels: Qrels, *, complete: bool = False) -> Ranked:
    """Order each query's run and look up the grades of what it retrieved."""
    query_ids = sorted(qrels) if complete else sorted(set(run) & set(qrels))
    rows = [_ordered_run(q, run.get(q, {})) for q in query_ids]
    lengths = np.array([len(r) for r in rows], np.int64)
    depth = max(1, int(lengths.max(initial=0)))
    grades = np.zeros((len(rows), depth), np.float64)
    # One flat gather: (query row, rank) -> grade, unjudged 0.
    flat_rows = np.repeat(np.arange(len(rows)), lengths)
    flat_ranks = np.concatenate([np.arange(n) for n in lengths]) if len(rows) else np.empty(0)
    flat_grades = [qrels[q].get(d, 0) for q, r in zip(query_ids, rows, strict=True) for d in r]
    grades[flat_rows, flat_ranks.astype(np.int64)] = np.asarray(flat_grades, np.float64)
    judged = [sorted(qrels[q].values(), reverse=True) for q in query_ids]
    width = max(1, max((len(j) for j in judged), default=0))
    ideal = np.zeros((len(rows), width), np.float64)
    for row, values in enumerate(judged):
        ideal[row, : len(values)] = values
    return Ranked(query_ids, grades, lengths, ideal)


def _cut(matrix: np.ndarray, k: int | None) -> np.ndarray:
    """The first k columns, zero padded when the matrix is narrower."""
    if k is None:
        return matrix
    if matrix.shape[1] >= k:
        return matrix[:, :k]
    return np.pad(matrix, ((0, 0), (0, k - matrix.shape[1])))


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def _gain(grades: np.ndarray, gain: Gain) -> np.ndarray:
    positive = np.maximum(grades, 0.0)
    return np.exp2(positive) - 1.0 if gain == "exp" else positive


def _dcg(grades: np.ndarray, gain: Gain) -> np.ndarray:
    discounts = 1.0 / np.log2(np.arange(2, grades.shape[1] + 2))
    return (_gain(grades, gain) * discounts).sum(axis=1)


def per_query(ranked: Ranked, metric: Metric | str, *, threshold: int = 1,
              gain: Gain = "linear") -> np.ndarray:
    """One value per query row of `ranked`."""
    m = Metric.parse(metric) if isinstance(metric, str) else metric
    relevant = (ranked.grades >= threshold).astype(np.float64)
    num_rel = (ranked.ideal >= threshold).sum(axis=1).astype(np.float64)
    if m.kind == "p":
        assert m.k is not None
        return _cut(relevant, m.k).sum(axis=1) / m.k
    if m.kind == "r":
        return _safe_div(_cut(relevant, m.k).sum(axis=1), num_rel)
    if m.kind == "success":
        return (_cut(relevant, m.k).sum(axis=1) > 0).astype(np.float64)
    if m.kind == "mrr":
        hits = _cut(relevant, m.k)
        first = np.argmax(hits > 0, axis=1)
        found = hits.max(axis=1, initial=0) > 0
        return np.where(found, 1.0 / (first + 1.0), 0.0)
    if m.kind == "map":
        hits = _cut(relevant, m.k)
        precision_at = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
        return _safe_div((precision_at * hits).sum(axis=1), num_rel)
    if m.kind == "rprec":
        cum = np.cumsum(relevant, axis=1)
        at = np.clip(num_rel.astype(np.int64), 1, relevant.shape[1]) - 1
        return _safe_div(np.take_along_axis(cum, at[:, None], axis=1)[:, 0], num_rel)
    if m.kind == "dcg":
        return _dcg(_cut(ranked.grades, m.k), gain)
    if m.kind == "ndcg":
        return _safe_div(_dcg(_cut(ranked.grades, m.k), gain), _dcg(_cut(ranked.ideal, m.k), gain))
    raise MetricError(f"unknown metric {m}")  # pragma: no cover - parse() guards


def evaluate(run: Run, qrels: Qrels, metrics: Sequence[str], *, threshold: int = 1,
             gain: Gain = "linear", complete: bool = False) -> dict[str, dict[str, float]]:
    """Per-query values: `{metric: {query_id: value}}` (always this shape, whatever the
    number of metrics)."""
    parsed = [Metric.parse(m) for m in metrics]
    ranked = rank(run, qrels, complete=complete)
    out = {}
    for m in parsed:
        values = per_query(ranked, m, threshold=threshold, gain=gain)
        out[str(m)] = dict(zip(ranked.query_ids, values.tolist(), strict=True))
    return out


def mean(per_query_values: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over its queries (0 for no queries)."""
    return {name: float(np.mean(list(values.values()))) if values else 0.0
            for name, values in per_query_values.items()}
