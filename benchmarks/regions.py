"""Region search: crops and partial copies finding their source, per `--regions` strategy.

    .venv/bin/python benchmarks/regions.py [--set DIR] [--regions none grid proposals]
        [--quality-set DIR]

`--set` is a `lookalike dataset photo-crops` folder (built there when missing). For each
strategy: index time and memory an image, then mAP and R@1 of the source tile (grade 5)
and nDCG@10 (other tiles of the same wallpaper count 1) per query kind. `--quality-set`
(a built emoji or fashion-mnist folder) adds whole-image queries on graded categories, to
check that regions do not hurt them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lookalike import Collection
from lookalike.datasets import build_dataset
from lookalike.encoders import Encoder, create_encoder
from lookalike.metrics import evaluate
from lookalike.trec import read_qrels, read_queries

KINDS = ("crop15", "crop25", "crop40", "crop60", "box25", "copy", "whole")


def run_and_qrels(coll: Collection, folder: Path, query_regions: str
                  ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """The set's queries searched in one batch, as a run, and its judgements."""
    queries = read_queries(folder / "queries.jsonl")
    found = coll.search_many([(q.image, q.crop) if q.crop else q.image for q in queries],
                             k=100, query_regions=query_regions)
    run = {q.id: {h.id: h.score for h in hits} for q, hits in zip(queries, found, strict=True)}
    return run, read_qrels(folder / "qrels.txt")


def mean_of(values: Mapping[str, float], prefix: str = "") -> float:
    picked = [v for q, v in values.items() if q.startswith(prefix)]
    return float(np.mean(picked)) if picked else float("nan")


def index(spec: str, database: Path, work: Path, encoder: Encoder) -> tuple[Collection, float]:
    coll = Collection.create(work / f"{database.parent.name}-{spec}.lk", encoder=encoder,
                             regions=spec)
    start = time.perf_counter()
    coll.index_folder(database)
    return coll, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, default=Path("/tmp/photo-crops"))
    parser.add_argument("--regions", nargs="+", default=["none", "grid", "proposals"],
                        help="Specs; DB/QUERY (e.g. grid/grid:2) also splits the queries.")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--quality-set", type=Path)
    args = parser.parse_args()
    if not (args.set / "qrels.txt").exists():
        build_dataset("photo-crops", args.set)

    encoder = create_encoder(args.model)  # one runtime session for every collection
    rows, quality = [], []
    with tempfile.TemporaryDirectory() as tmp:
        built: dict[str, tuple[Collection, float]] = {}
        for spec in args.regions:
            db_spec, _, query_spec = spec.partition("/")
            if db_spec not in built:
                built[db_spec] = index(db_spec, args.set / "database", Path(tmp), encoder)
            coll, seconds = built[db_spec]
            info = coll.index_info()
            run, qrels = run_and_qrels(coll, args.set, query_spec or "none")
            values = evaluate(run, qrels, ["map", "r@1"], threshold=5)
            values.update(evaluate(run, qrels, ["ndcg@10"]))
            rows.append((spec, seconds / len(coll) * 1000, info["vectors_per_image"],
                         (info["vector_bytes"] + info["structure_bytes"]) / len(coll) / 1024,
                         {kind: (mean_of(values["map"], kind), mean_of(values["r@1"], kind),
                                 mean_of(values["ndcg@10"], kind)) for kind in KINDS}))
            if args.quality_set and not query_spec:
                q_coll, _ = index(db_spec, args.quality_set / "database", Path(tmp), encoder)
                q_values = evaluate(*run_and_qrels(q_coll, args.quality_set, "none"),
                                    ["map", "ndcg@10"])
                quality.append((spec, mean_of(q_values["map"]), mean_of(q_values["ndcg@10"])))

    print(f"{args.set}: {len(coll)} database images, {args.model}\n")
    print("| regions | index ms/image | vectors/image | KiB/image |")
    print("|---|---:|---:|---:|")
    for spec, ms, per_image, kib, _ in rows:
        print(f"| {spec} | {ms:.1f} | {per_image:.1f} | {kib:.1f} |")
    print("\nmAP / R@1 of the source tile, nDCG@10\n")
    print("| query kind | " + " | ".join(spec for spec, *_ in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for kind in KINDS:
        cells = [" / ".join(f"{v:.3f}" for v in by_kind[kind]) for *_, by_kind in rows]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    if quality:
        print(f"\nWhole-image queries on {args.quality_set} (graded, threshold 1)\n")
        print("| regions | mAP | nDCG@10 |\n|---|---:|---:|")
        for spec, m, n in quality:
            print(f"| {spec} | {m:.4f} | {n:.4f} |")


if __name__ == "__main__":
    main()
