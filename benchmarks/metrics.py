"""Time all metrics on a large synthetic run, lookalike vs pytrec_eval (and ranx if installed):
from Python dicts end to end, and on data each library has already prepared.

    .venv/bin/python benchmarks/metrics.py [--queries 10000] [--depth 100] [--repeats 3]

Every value is checked against pytrec_eval before anything is timed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytrec_eval

from lookalike.metrics import Ranked, evaluate, mean, per_query, rank

OURS = ["p@10", "r@10", "map", "map@10", "ndcg", "ndcg@10", "mrr", "rprec", "success@10"]
TREC = {"p@10": "P_10", "r@10": "recall_10", "map": "map", "map@10": "map_cut_10",
        "ndcg": "ndcg", "ndcg@10": "ndcg_cut_10", "mrr": "recip_rank", "rprec": "Rprec",
        "success@10": "success_10"}
TREC_MEASURES = {"P.10", "recall.10", "map", "map_cut.10", "ndcg", "ndcg_cut.10",
                 "recip_rank", "Rprec", "success.10"}


def synthetic(queries: int, depth: int, judged: int, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    run, qrels = {}, {}
    for q in range(queries):
        docs = rng.choice(5 * depth, size=depth, replace=False)
        scores = np.round(rng.random(depth), 3)  # rounded: some ties
        run[f"q{q}"] = {f"d{d}": float(s) for d, s in zip(docs, scores, strict=True)}
        pool = rng.choice(5 * depth, size=judged, replace=False)
        qrels[f"q{q}"] = {f"d{d}": int(g) for d, g in zip(pool, rng.integers(0, 6, judged),
                                                          strict=True)}
    return run, qrels


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--judged", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    run, qrels = synthetic(args.queries, args.depth, args.judged)

    def ours() -> dict[str, float]:
        return mean(evaluate(run, qrels, OURS))

    def trec() -> dict[str, float]:
        res = pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES).evaluate(run)
        return {m: float(np.mean([v[TREC[m]] for v in res.values()])) for m in OURS}

    ranked = rank(run, qrels)

    def all_metrics(prepared: Ranked) -> list[np.ndarray]:
        return [per_query(prepared, m) for m in OURS]

    evaluator = pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES)
    t_trec, v_trec = timed(trec, args.repeats)
    t_ours, v_ours = timed(ours, args.repeats)
    worst = max(abs(v_ours[m] - v_trec[m]) for m in OURS)  # type: ignore[index]
    rows = [("from dicts", "pytrec_eval (evaluator + evaluate)", t_trec),
            ("from dicts", "lookalike.metrics.evaluate", t_ours)]
    prepared = [
        ("pytrec_eval: evaluate(run), evaluator built once",
         timed(lambda: evaluator.evaluate(run), args.repeats)[0]),
        ("lookalike: per_query on a Ranked built once",
         timed(lambda: all_metrics(replace(ranked)), args.repeats)[0]),  # fresh caches
    ]
    try:
        import ranx

        names = ["precision@10", "recall@10", "map", "map@10", "ndcg", "ndcg@10", "mrr",
                 "r-precision", "hit_rate@10"]

        def from_dicts() -> object:
            return ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), names)

        from_dicts()  # numba compiles on the first call
        rows.append(("from dicts", "ranx (Qrels + Run + evaluate)",
                     timed(from_dicts, args.repeats)[0]))
        r_run, r_qrels = ranx.Run(run), ranx.Qrels(qrels)
        prepared.append(("ranx: evaluate on Qrels and Run built once",
                         timed(lambda: ranx.evaluate(r_qrels, r_run, names), args.repeats)[0]))
    except ImportError:
        rows.append(("from dicts", "ranx: not installed", float("nan")))
    t_prepared = prepared[0][1]

    print(f"{args.queries} queries x {args.depth} retrieved, {args.judged} judged a query, "
          f"{len(OURS)} metrics, median of {args.repeats}; "
          f"largest difference from pytrec_eval: {worst:.2e}\n")
    print("| input | implementation | seconds | pytrec_eval / this |")
    print("|---|---|---:|---:|")
    for kind, name, seconds in rows:
        print(f"| {kind} | {name} | {seconds:.3f} | {t_trec / seconds:.1f} x |")
    for name, seconds in prepared:
        print(f"| prepared | {name} | {seconds:.3f} | {t_prepared / seconds:.1f} x |")


if __name__ == "__main__":
    main()
