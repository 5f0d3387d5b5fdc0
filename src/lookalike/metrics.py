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

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Literal

import numpy as np

from lookalike.errors import LookalikeError

Run = Mapping[str, Mapping[str, float] | Sequence[str]]
Qrels = Mapping[str, Mapping[str, int]]
Gain = Literal["linear", "exp"]

DEFAULT_METRICS = ("mrr", "p@10", "r@10", "map", "ndcg@10")
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


def _flatten(run: Run, query_ids: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """All retrieved docs in one list, their scores (a ranked list gets descending
    pseudo-scores), and each query's count."""
    docs: list[str] = []
    scores: list[float] = []
    lengths = np.zeros(len(query_ids), np.int64)
    for row, qid in enumerate(query_ids):
        entries = run.get(qid, {})
        if isinstance(entries, Mapping):
            docs.extend(entries)
            scores.extend(entries.values())
        else:
            ranked = list(entries)
            if len(set(ranked)) != len(ranked):
                raise MetricError(f"query {qid!r}: the run lists a document more than once")
            docs.extend(ranked)
            scores.extend(range(len(ranked), 0, -1))
        lengths[row] = len(entries)
    values = np.asarray(scores, np.float64)
    if np.isnan(values).any():
        row = int(np.searchsorted(np.cumsum(lengths), int(np.argmax(np.isnan(values))),
                                  side="right"))
        raise MetricError(f"query {query_ids[row]!r}: the run holds NaN scores")
    return docs, values, lengths


def _padded(lengths: np.ndarray, values: np.ndarray, fill: float) -> np.ndarray:
    """Row-grouped entries as a (rows, longest row) matrix, padded with `fill`."""
    rows = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    matrix = np.full((len(lengths), max(1, int(lengths.max(initial=0)))), fill, np.float64)
    matrix[rows, np.arange(len(values)) - starts[rows]] = values
    return matrix


def _rank_order(scores: np.ndarray, docs: list[str], lengths: np.ndarray) -> np.ndarray:
    """Per row, the column order: score descending, ties by doc id descending (trec_eval).
    Only the entries that tie need their doc ids compared as strings."""
    matrix = _padded(lengths, scores, -np.inf)
    order = np.argsort(-matrix, axis=1, kind="stable")
    ranked = np.take_along_axis(matrix, order, axis=1)
    same = (ranked[:, 1:] == ranked[:, :-1]) & np.isfinite(ranked[:, 1:])
    if not same.any():
        return order
    in_tie = np.zeros(ranked.shape, bool)
    in_tie[:, 1:] |= same
    in_tie[:, :-1] |= same
    flat_index = _padded(lengths, np.arange(len(docs), dtype=np.float64), -1).astype(np.int64)
    tied = np.take_along_axis(flat_index, order, axis=1)[in_tie]
    _, doc_rank = np.unique(np.array([docs[i] for i in tied.tolist()]), return_inverse=True)
    tiebreak = np.zeros(len(docs))
    tiebreak[tied] = doc_rank + 1
    by_doc = np.argsort(-_padded(lengths, tiebreak, 0.0), axis=1, kind="stable")
    then_score = np.argsort(-np.take_along_axis(matrix, by_doc, axis=1), axis=1, kind="stable")
    return np.take_along_axis(by_doc, then_score, axis=1)


def rank(run: Run, qrels: Qrels, *, complete: bool = False) -> Ranked:
    """Order each query's run and look up the grades of what it retrieved, all queries at
    once as padded matrices (no per-query sort)."""
    query_ids = sorted(qrels) if complete else sorted(set(run) & set(qrels))
    docs, scores, lengths = _flatten(run, query_ids)
    grades = np.empty(len(docs), np.float64)
    at = 0
    for qid, n in zip(query_ids, lengths.tolist(), strict=True):
        grades[at:at + n] = list(map(qrels[qid].get, docs[at:at + n], repeat(0, n)))
        at += n
    order = _rank_order(scores, docs, lengths)
    ranked_grades = np.take_along_axis(_padded(lengths, grades, 0.0), order, axis=1)
    judged_counts = np.array([len(qrels[q]) for q in query_ids], np.int64)
    judged = np.fromiter(chain.from_iterable(qrels[q].values() for q in query_ids),
                         np.float64, int(judged_counts.sum()))
    ideal = -np.sort(-_padded(judged_counts, judged, -np.inf), axis=1)
    ideal[np.isneginf(ideal)] = 0.0
    return Ranked(query_ids, ranked_grades, lengths, ideal)


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
