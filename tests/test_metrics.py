"""Metrics against trec_eval (through pytrec_eval) and against the formulas by hand."""

from __future__ import annotations

import math

import pytest
import pytrec_eval
from hypothesis import given, settings
from hypothesis import strategies as st

from lookalike.metrics import MetricError, evaluate, mean

# lookalike name -> trec_eval measure
TREC_NAMES = {
    "p@1": "P_1", "p@5": "P_5", "p@20": "P_20", "r@5": "recall_5", "r@20": "recall_20",
    "map": "map", "map@5": "map_cut_5", "ndcg": "ndcg", "ndcg@5": "ndcg_cut_5",
    "ndcg@20": "ndcg_cut_20", "mrr": "recip_rank", "rprec": "Rprec", "success@5": "success_5",
}
TREC_MEASURES = {"P.1,5,20", "recall.5,20", "map", "map_cut.5", "ndcg", "ndcg_cut.5,20",
                 "recip_rank", "Rprec", "success.5"}


def trec(run, qrels, threshold: int = 1) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    evaluator = pytrec_eval.RelevanceEvaluator(
        {q: dict(d) for q, d in qrels.items()}, TREC_MEASURES, relevance_level=threshold
    )
    results = evaluator.evaluate({q: {d: float(s) for d, s in docs.items()}
                                  for q, docs in run.items()})
    return {name: {q: v[measure] for q, v in results.items()}
            for name, measure in TREC_NAMES.items()}


def assert_same(ours: dict[str, dict[str, float]], theirs: dict[str, dict[str, float]]) -> None:
    for name, values in theirs.items():
        assert set(ours[name]) == set(values), name
        for qid, value in values.items():
            assert ours[name][qid] == pytest.approx(value, abs=1e-9), (name, qid)


docs = st.sampled_from([f"d{i}" for i in range(15)])
runs = st.dictionaries(
    st.sampled_from(["q1", "q2", "q3", "q4"]),
    st.dictionaries(docs, st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.25]), min_size=1,
                    max_size=12),
    min_size=1,
)
qrels_strategy = st.dictionaries(
    st.sampled_from(["q1", "q2", "q3", "q5"]),
    st.dictionaries(docs, st.integers(0, 5), min_size=1, max_size=10),
    min_size=1,
)


@settings(max_examples=150, deadline=None)
@given(run=runs, qrels=qrels_strategy, threshold=st.integers(1, 5))
def test_agrees_with_trec_eval(run, qrels, threshold: int) -> None:  # type: ignore[no-untyped-def]
    ours = evaluate(run, qrels, list(TREC_NAMES), threshold=threshold)
    assert_same(ours, trec(run, qrels, threshold))


def test_edge_cases_against_trec_eval() -> None:
    qrels = {"ties": {"a": 1, "b": 0, "c": 2}, "unretrieved": {"zz": 3, "a": 1},
             "none_relevant": {"a": 0, "b": 0}, "single": {"x": 5}}
    run = {
        "ties": {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0},  # all tied: doc id descending
        "unretrieved": {"a": 0.9, "b": 0.8},
        "none_relevant": {"a": 0.9},
        "single": {"x": 0.1},
    }
    assert_same(evaluate(run, qrels, list(TREC_NAMES)), trec(run, qrels))


def test_hand_computed_values() -> None:
    qrels = {"q": {"a": 3, "b": 0, "c": 1, "d": 2}}
    run = {"q": ["b", "a", "x", "c"]}  # a ranked list, taken as is
    got = mean(evaluate(run, qrels, ["mrr", "p@2", "r@2", "map", "dcg@4", "ndcg@4",
                                      "success@1", "mrr@1"]))
    assert got["mrr"] == 0.5 and got["mrr@1"] == 0.0 and got["success@1"] == 0.0
    assert got["p@2"] == 0.5 and got["r@2"] == pytest.approx(1 / 3)
    assert got["map"] == pytest.approx((1 / 2 + 2 / 4) / 3)
    dcg = 3 / math.log2(3) + 1 / math.log2(5)
    idcg = 3 + 2 / math.log2(3) + 1 / math.log2(4)
    assert got["dcg@4"] == pytest.approx(dcg)
    assert got["ndcg@4"] == pytest.approx(dcg / idcg)
    exp = evaluate(run, qrels, ["ndcg@4"], gain="exp")["ndcg@4"]["q"]
    assert exp == pytest.approx((7 / math.log2(3) + 1 / math.log2(5))
                                / (7 + 3 / math.log2(3) + 1 / math.log2(4)))


def test_k_larger_than_the_list_divides_by_k() -> None:
    got = evaluate({"q": ["a"]}, {"q": {"a": 1}}, ["p@10", "r@10"])
    assert got["p@10"]["q"] == 0.1 and got["r@10"]["q"] == 1.0


def test_complete_counts_missing_runs_as_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": ["a"]}
    assert mean(evaluate(run, qrels, ["mrr"]))["mrr"] == 1.0
    assert mean(evaluate(run, qrels, ["mrr"], complete=True))["mrr"] == 0.5


def test_empty_run() -> None:
    assert evaluate({}, {"q": {"a": 1}}, ["map"]) == {"map": {}}
    assert mean(evaluate({}, {"q": {"a": 1}}, ["map"])) == {"map": 0.0}


@pytest.mark.parametrize(
    ("run", "message"),
    [({"q7": ["a", "b", "a"]}, "q7.*more than once"), ({"q8": {"a": math.nan}}, "q8.*NaN")],
)
def test_bad_runs_name_the_query(run, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MetricError, match=message):
        evaluate(run, {"q7": {"a": 1}, "q8": {"a": 1}}, ["map"])


@pytest.mark.parametrize("name", ["ndcg@0", "p", "rprec@5", "bleu"])
def test_bad_metric_names(name: str) -> None:
    with pytest.raises(MetricError):
        evaluate({}, {}, [name])
