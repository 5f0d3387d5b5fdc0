from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lookalike.comparison import bootstrap_interval, compare_runs, randomization_p_value


def _exact_p(diffs: np.ndarray) -> float:
    """The sign-flip test by full enumeration: the slow reference."""
    observed = abs(diffs.mean())
    flips = [abs((np.array(s) * diffs).mean()) >= observed - 1e-12
             for s in itertools.product([-1, 1], repeat=len(diffs))]
    return float(np.mean(flips))


@pytest.mark.parametrize("diffs", [[1.0] * 10, [0.5, -0.1, 0.3, 0.2, 0.0, 0.4, -0.2, 0.1],
                                   [0.1, -0.1, 0.2, -0.2]])
def test_randomization_matches_full_enumeration(diffs: list[float]) -> None:
    d = np.array(diffs)
    estimate = randomization_p_value(d, 40_000, np.random.default_rng(0))
    assert estimate == pytest.approx(_exact_p(d), abs=0.01)


def test_identical_runs_and_bootstrap() -> None:
    assert randomization_p_value(np.zeros(5), 100, np.random.default_rng(0)) == 1.0
    low, high = bootstrap_interval(np.array([0.2] * 20), 1000, np.random.default_rng(0))
    assert low == pytest.approx(0.2) and high == pytest.approx(0.2)
    low, high = bootstrap_interval(np.linspace(-1, 1, 41), 5000, np.random.default_rng(0))
    assert low < 0 < high


def _runs(n: int = 30) -> tuple[dict, dict, dict]:  # type: ignore[type-arg]
    """B moves the second relevant doc up: same first hit (equal MRR), better nDCG."""
    qrels = {f"q{i}": {"r1": 2, "r2": 2} for i in range(n)}
    run_a = {f"q{i}": ["r1", "x1", "x2", "x3", "r2"] for i in range(n)}
    run_b = {f"q{i}": ["r1", "r2", "x1", "x2", "x3"] for i in range(n)}
    return run_a, run_b, qrels


def test_flags_metrics_that_tie_while_others_differ() -> None:
    run_a, run_b, qrels = _runs()
    result = compare_runs(run_a, run_b, qrels, ["mrr", "ndcg@10"], permutations=2000,
                          bootstrap=2000)
    by_name = {m.metric: m for m in result.metrics}
    assert by_name["mrr"].difference == 0 and by_name["mrr"].p_value == 1.0
    assert by_name["ndcg@10"].difference > 0 and by_name["ndcg@10"].p_value < 0.01
    assert by_name["ndcg@10"].ci_low > 0
    assert result.notes == ["mrr ties while ndcg@10 differ: MRR only sees the first "
                            "relevant hit"]
    again = compare_runs(run_a, run_b, qrels, ["mrr", "ndcg@10"], permutations=2000,
                         bootstrap=2000)
    assert again == result  # seeded


def test_compare_command(tmp_path: Path) -> None:
    run_a, run_b, qrels = _runs(12)
    for name, run in (("a", run_a), ("b", run_b)):
        (tmp_path / f"{name}.txt").write_text("".join(
            f"{q} Q0 {d} {r + 1} {10 - r} t\n" for q, docs in run.items()
            for r, d in enumerate(docs)))
    (tmp_path / "qrels.txt").write_text("".join(
        f"{q} 0 {d} {g}\n" for q, docs in qrels.items() for d, g in docs.items()))
    result = subprocess.run(
        [sys.executable, "-m", "lookalike.cli", "compare", *(str(tmp_path / f) for f in
         ("a.txt", "b.txt", "qrels.txt")), "-m", "mrr", "-m", "map", "--json"],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["queries"] == 12 and doc["notes"][0].startswith("mrr ties while map")
