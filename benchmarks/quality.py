"""Retrieval quality of each shipped encoder on the offline evaluation sets.

    .venv/bin/python benchmarks/quality.py [--sets digits fashion-mnist] [--encoders ...]
        [--precisions float32 int8]

Builds each set (lookalike dataset NAME), indexes its database with each encoder (in each
precision: `NAME:int8` is the INT8 graph) and evaluates its queries against its graded
qrels. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from lookalike import Collection, create_encoder
from lookalike.datasets import build_dataset
from lookalike.evaluation import evaluate_collection
from lookalike.trec import read_qrels, read_queries

METRICS = ["mrr", "p@10", "r@10", "map", "ndcg@10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["digits", "fashion-mnist"])
    parser.add_argument("--encoders", nargs="+", default=[
        "efficientnet_lite0", "efficientnet_lite2", "mobilenet_v2", "dinov2_vits14",
        "resnet50_ssl"])
    parser.add_argument("--precisions", nargs="+", default=["float32"],
                        choices=["float32", "int8"])
    parser.add_argument("--db-size", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threshold", type=int, default=1,
                        help="lowest grade a binary metric counts as relevant")
    args = parser.parse_args()

    print(f"database {args.db_size} images, {args.queries} queries a set; binary metrics "
          f"count grade >= {args.threshold}\n")
    print("| set | encoder | precision | " + " | ".join(METRICS) + " | index s |")
    print("|---|---|---|" + "---:|" * (len(METRICS) + 1))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            data = build_dataset(name, Path(tmp) / name, db_size=args.db_size,
                                 queries=args.queries)
            queries, qrels = read_queries(data / "queries.jsonl"), read_qrels(data / "qrels.txt")
            for enc_name, precision in ((e, p) for e in args.encoders for p in args.precisions):
                encoder = create_encoder(enc_name + (":int8" if precision == "int8" else ""))
                coll = Collection.create(Path(tmp) / f"{name}-{enc_name}-{precision}",
                                         encoder=encoder)
                start = time.perf_counter()
                coll.index_folder(data / "database")
                seconds = time.perf_counter() - start
                result = evaluate_collection(coll, queries, qrels, metrics=METRICS,
                                             threshold=args.threshold)
                values = " | ".join(f"{result.mean[m]:.3f}" for m in METRICS)
                print(f"| {name} | {enc_name} | {precision} | {values} | {seconds:.0f} |",
                      flush=True)
                coll.close()


if __name__ == "__main__":
    main()
