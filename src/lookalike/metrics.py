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
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Literal

import numpy as np

from lookalike.errors import LookalikeError

Run = Mapping[str, Mapping[str, float] | Sequence[str]]
Qrels = Mapping[str, Mapping[str, int]]
Gain = Literal["linear", "exp"]

DEFAULT_METRICS = ("mrr", "p@10", "r@10", "map", "ndcg@10")
_NAME = re.compile(r"^(mrr|p|r|map|ndcg|dcg|rprec|success)(?:@([0-9]+))?$")
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
    _hits: dict[int, _Hits] = field(default_factory=dict, init=False, repr=False,
                                    compare=False)

    def hits(self, threshold: int) -> _Hits:
        """Where the relevant documents sit, computed once per threshold and shared by
        every binary metric."""
        if threshold not in self._hits:
            self._hits[threshold] = _Hits.locate(self, threshold)
        return self._hits[threshold]


@dataclass(frozen=True)
class _Hits:
    """The relevant retrieved documents as sparse coordinates, row-major: binary metrics
    then cost O(relevant retrieved), not O(queries x depth)."""

    rows: np.ndarray  # query row of each relevant retrieved document
    ranks: np.ndarray  # its 1-based rank
    nth: np.ndarray  # 1 for the query's first relevant document, 2 for the second, ...
    num_rel: np.ndarray  # per query: relevant documents in the qrels (R)

    @classmethod
    def locate(cls, ranked: Ranked, threshold: int) -> _Hits:
        rows, cols = np.nonzero(ranked.grades >= threshold)
        row_starts = np.searchsorted(rows, np.arange(len(ranked.grades)))
        nth = np.arange(1, len(rows) + 1) - row_starts[rows]
        num_rel = np.count_nonzero(ranked.ideal >= threshold, axis=1).astype(np.float64)
        return cls(rows, cols + 1, nth, num_rel)

    def count(self, within: np.ndarray, queries: int) -> np.ndarray:
        """Per query, how many of its hits satisfy `within`."""
        return np.bincount(self.rows[within], minlength=queries).astype(np.float64)


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


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def _dcg(grades: np.ndarray, k: int | None, gain: Gain) -> np.ndarray:
    top = grades[:, :k]
    positive = np.maximum(top, 0.0)
    gains = np.exp2(positive) - 1.0 if gain == "exp" else positive
    return gains @ (1.0 / np.log2(np.arange(2, top.shape[1] + 2)))


def per_query(ranked: Ranked, metric: Metric | str, *, threshold: int = 1,
              gain: Gain = "linear") -> np.ndarray:
    """One value per query row of `ranked`."""
    m = Metric.parse(metric) if isinstance(metric, str) else metric
    if m.kind in ("dcg", "ndcg"):
        dcg = _dcg(ranked.grades, m.k, gain)
        return dcg if m.kind == "dcg" else _safe_div(dcg, _dcg(ranked.ideal, m.k, gain))
    hits, queries = ranked.hits(threshold), len(ranked.grades)
    within = hits.ranks <= (m.k or ranked.grades.shape[1])
    if m.kind == "p":
        assert m.k is not None
        return hits.count(within, queries) / m.k
    if m.kind == "r":
        return _safe_div(hits.count(within, queries), hits.num_rel)
    if m.kind == "success":
        return (hits.count(within, queries) > 0).astype(np.float64)
    if m.kind == "mrr":
        first = within & (hits.nth == 1)
        out = np.zeros(queries)
        out[hits.rows[first]] = 1.0 / hits.ranks[first]
        return out
    if m.kind == "map":
        precision_at = hits.nth[within] / hits.ranks[within]
        sums = np.bincount(hits.rows[within], weights=precision_at, minlength=queries)
        return _safe_div(sums, hits.num_rel)
    if m.kind == "rprec":
        return _safe_div(hits.count(hits.ranks <= hits.num_rel[hits.rows], queries),
                         hits.num_rel)
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
