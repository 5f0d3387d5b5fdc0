"""Region search: crops and partial copies finding their source, per `--regions` strategy.

    .venv/bin/python benchmarks/regions.py [--set DIR] [--regions none grid proposals]
        [--quality-set DIR] [--verify 50]
    .venv/bin/python benchmarks/regions.py --cost 300 [--repeats 3]   # indexing cost only
    .venv/bin/python benchmarks/regions.py --stages --regions SPEC --verify 50  # where
        # small and edited queries lose their source

A spec may set the regions' input size (`grid@160`): see `lookalike.regions`; a spec ending
in `+local` (`proposals:16@160+local`) also builds the local-feature index.

`--set` is a `lookalike dataset photo-crops` folder (built there when missing). For each
strategy: index time and memory an image, then mAP and R@1 of the source tile (grade 5)
and nDCG@10 (other tiles of the same wallpaper count 1) per query kind. `--quality-set`
(a built emoji or fashion-mnist folder) adds whole-image queries on graded categories, to
check that regions do not hurt them. `--verify N` adds, for each strategy, the same queries
with verification of the top N hits, and the time a query either way. The rows
marked `detailed` keep only the crops with as much detail as a database tile must have.
`--busy` times the queries again with both cores held by other processes. `--brute-force N`
adds, for N queries of each small kind, plain SIFT matching with RANSAC against every
database image: the quality ceiling, and a time baseline.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Mapping
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import numpy as np

from lookalike import Collection, ranking
from lookalike.datasets import build_dataset
from lookalike.datasets.crops import MIN_DETAIL, detail
from lookalike.encoders import Encoder, create_encoder
from lookalike.images import decode
from lookalike.metrics import evaluate
from lookalike.regions import parse_regions
from lookalike.trec import read_qrels, read_queries

KINDS = ("crop10", "crop15", "crop25", "crop40", "crop60", "box25", "copy", "edited",
         "edited-blur", "edited-text", "edited-grey", "edited-colour", "whole")
DETAILED = ("crop10, detailed", "crop15, detailed", "crop25, detailed", "box25, detailed")
BRUTE_KINDS = ("crop10", "crop15", "edited")


def run_and_qrels(coll: Collection, folder: Path, query_regions: str, verify: int = 0
                  ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """The set's queries searched in one batch, as a run (ranks kept: a verified run is not
    ordered by score), and its judgements."""
    queries = read_queries(folder / "queries.jsonl")
    found = coll.search_many([(q.image, q.crop) if q.crop else q.image for q in queries],
                             k=100, query_regions=query_regions, verify=verify)
    run = {q.id: {h.id: -float(h.rank) for h in hits}
           for q, hits in zip(queries, found, strict=True)}
    return run, read_qrels(folder / "qrels.txt")


def mean_of(values: Mapping[str, float], prefix: str = "", only: set[str] | None = None
            ) -> float:
    picked = [v for q, v in values.items()
              if q.startswith(prefix) and (only is None or q in only)]
    return float(np.mean(picked)) if picked else float("nan")


def detailed_queries(folder: Path) -> set[str]:
    """The crop queries with as much detail as the set asks of its tiles: a crop of sky or
    of a smooth gradient shows nothing that tells its source apart, so the benchmark also
    reports the others on their own."""
    picked = set()
    for query in read_queries(folder / "queries.jsonl"):
        image = decode(folder / query.image)
        if detail(image.crop(query.crop) if query.crop else image.image) >= MIN_DETAIL:
            picked.add(query.id)
    return picked


def index(spec: str, database: Path, work: Path, encoder: Encoder) -> tuple[Collection, float]:
    regions, local = spec.removesuffix("+local"), spec.endswith("+local")
    coll = Collection.create(work / f"{database.parent.name}-{spec}.lk", encoder=encoder,
                             regions=regions, local_features=local)
    start = time.perf_counter()
    coll.index_folder(database)
    return coll, time.perf_counter() - start


def _spin(stop: Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def busy_ms(coll: Collection, folder: Path, query_regions: str, verify: int,
            sample: int = 60) -> float:
    """Milliseconds a query, for the first `sample` queries, while one process a core
    spins (what a user's machine running other work does to thread pools)."""
    queries = read_queries(folder / "queries.jsonl")[:sample]
    stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=_spin, args=(stop,))
               for _ in range(os.cpu_count() or 2)]
    for burner in burners:
        burner.start()
    try:
        start = time.perf_counter()
        coll.search_many([(q.image, q.crop) if q.crop else q.image for q in queries], k=100,
                         query_regions=query_regions, verify=verify)
        return (time.perf_counter() - start) / len(queries) * 1000
    finally:
        stop.set()
        for burner in burners:
            burner.join()


def brute_force(folder: Path, per_kind: int) -> None:
    """Plain SIFT matching (every keypoint; Lowe's ratio test, RANSAC) of each query against
    every database image, ranked by inliers: R@1 and seconds a query, for `per_kind` queries
    a kind. Nearest descriptors by faiss (exact, BLAS)."""
    import cv2
    import faiss

    from lookalike.local_features import describe

    database = sorted((folder / "database").rglob("*.jpg"))
    ids = [p.relative_to(folder / "database").as_posix() for p in database]
    features = [describe(decode(p).image, count=100_000) for p in database]
    indexes = []
    for found in features:
        flat = faiss.IndexFlatL2(128)
        flat.add(found.descriptors)
        indexes.append(flat)
    qrels = read_qrels(folder / "qrels.txt")
    print(f"\nBrute-force SIFT + RANSAC against all {len(database)} images ({per_kind} "
          "queries a kind)\n\n| query kind | R@1 | s/query |\n|---|---:|---:|", flush=True)
    for kind in BRUTE_KINDS:
        queries = [q for q in read_queries(folder / "queries.jsonl")
                   if q.id.startswith(kind)][:per_kind]
        hits, start = 0, time.perf_counter()
        for query in queries:
            image = decode(query.image).image
            mine = describe(image.crop(query.crop) if query.crop else image, count=100_000)
            inliers = [_inliers(cv2, mine, theirs, flat)
                       for theirs, flat in zip(features, indexes, strict=True)]
            best = ids[int(np.argmax(inliers))] if max(inliers) > 0 else None
            hits += best is not None and qrels[query.id].get(best) == 5
        seconds = (time.perf_counter() - start) / max(1, len(queries))
        print(f"| {kind} | {hits / max(1, len(queries)):.3f} | {seconds:.2f} |", flush=True)


def _inliers(cv2: Any, query: Any, candidate: Any, flat: Any) -> int:
    if len(query) < 2 or len(candidate) < 2:
        return 0
    distances, nearest = flat.search(query.descriptors, 2)
    good = np.flatnonzero(distances[:, 0] < 0.64 * distances[:, 1])  # ratio 0.8, squared
    if len(good) < 4:
        return 0
    _, mask = cv2.estimateAffinePartial2D(query.points[good], candidate.points[nearest[good, 0]],
                                          method=cv2.RANSAC, ransacReprojThreshold=8.0)
    return int(mask.sum()) if mask is not None else 0


def stages(args: argparse.Namespace) -> None:
    """Where each kind of query loses its source, stage by stage, for the first regions
    spec (built with local features): in the embeddings' shortlist of `--verify` hits; if
    there, verified by keypoints or else by pixels; verified by the local-feature index;
    and first in the end."""
    from lookalike import verification
    from lookalike.local_features import QUERY_WORDS, describe

    encoder = create_encoder(args.model)
    spec = args.regions[0].removesuffix("+local") + "+local"
    qrels = read_qrels(args.set / "qrels.txt")
    with tempfile.TemporaryDirectory() as tmp:
        coll, _ = index(spec, args.set / "database", Path(tmp), encoder)
        assert coll.local is not None
        counts: dict[str, list[int]] = {}
        for query in read_queries(args.set / "queries.jsonl"):
            kind = query.id.split("_")[0]
            if not kind.startswith(("crop10", "crop15", "edited", "copy")):
                continue
            source = next(d for d, g in qrels[query.id].items() if g == 5)
            item = (query.image, query.crop) if query.crop else query.image
            image = decode(query.image).image
            image = image.crop(query.crop) if query.crop else image
            shortlist = [h.id for h in coll.search_many([item], k=args.verify)[0]]
            listed = source in shortlist
            evidence = ranking.file_evidence(str(args.set / "database" / source))
            assert evidence is not None
            by_points = verification.verify(verification.keypoints(image), evidence[0])
            by_pixels = verification.locate(verification.Template(image), evidence[1])
            local = coll.local.search(coll.local.vocabulary.quantise(describe(image),
                                                                     QUERY_WORDS))
            owners = coll.catalog.vector_owners(np.array([m.vid for m in local], np.int64))
            local_ids = [owners[m.vid].image_id for m in local if m.vid in owners]
            first = coll.search_many([item], k=1, verify=args.verify)[0]
            row = [1, listed, listed and by_points is not None,
                   listed and by_points is None and by_pixels is not None,
                   source in local_ids, bool(local_ids) and local_ids[0] == source,
                   bool(first) and first[0].id == source]
            counts[kind] = [a + int(b) for a, b in zip(counts.get(kind, [0] * 7), row,
                                                       strict=True)]
    print(f"Stages, {spec}, shortlist {args.verify} (share of the queries)\n")
    print("| query kind | queries | in shortlist | + keypoints verify | + pixels verify | "
          "local index verifies | local index first | first in the end |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind, (n, *rest) in sorted(counts.items()):
        print(f"| {kind} | {n} | " + " | ".join(f"{v / n:.2f}" for v in rest) + " |")


def cost(args: argparse.Namespace) -> None:
    """Indexing time an image per strategy, interleaved repeats after a warm-up, medians."""
    images = sorted((args.set / "database").rglob("*.jpg"))[:args.cost]
    encoder = create_encoder(args.model)
    encoder.encode(images[:64])  # runtime warm-up, files in the page cache
    for spec in args.regions:  # and the graphs of regions embedded at another size
        regions = parse_regions(spec)
        if regions and regions.size:
            encoder.at_size(regions.size).encode(images[:16])
    times: dict[str, list[float]] = {spec: [] for spec in args.regions}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for n, image in enumerate(images):
            (folder / f"{n:05d}.jpg").symlink_to(image)
        for repeat in range(args.repeats):
            for spec in args.regions:
                work = Path(tmp) / f"{repeat}"
                work.mkdir(exist_ok=True)
                _, seconds = index(spec, folder, work, encoder)
                times[spec].append(seconds / len(images) * 1000)
    base = statistics.median(times[args.regions[0]])
    print(f"{len(images)} images of {args.set}, {args.model}, median of {args.repeats}\n")
    print(f"| regions | ms/image | runs | x {args.regions[0]} |\n|---|---:|---|---:|")
    for spec, runs in times.items():
        print(f"| {spec} | {statistics.median(runs):.1f} | "
              f"{', '.join(f'{r:.1f}' for r in runs)} | {statistics.median(runs) / base:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, default=Path("/tmp/photo-crops"))
    parser.add_argument("--regions", nargs="*", default=["none", "grid", "proposals"],
                        help="Specs; DB/QUERY (e.g. grid/grid:2) also splits the queries.")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--quality-set", type=Path)
    parser.add_argument("--cost", type=int, help="Only time indexing this many images.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--verify", type=int, default=0,
                        help="Also run each strategy with verification of this "
                             "many top hits.")
    parser.add_argument("--stages", action="store_true",
                        help="Only say where small and edited queries lose their source, "
                             "stage by stage (the first spec, with local features).")
    parser.add_argument("--busy", action="store_true",
                        help="Also time the queries with both cores held by other processes.")
    parser.add_argument("--brute-force", type=int, default=0, metavar="N",
                        help="SIFT + RANSAC against every database image, for N queries of "
                             "each kind in BRUTE_KINDS (alone with `--regions` and no spec).")
    args = parser.parse_args()
    if not (args.set / "qrels.txt").exists():
        build_dataset("photo-crops", args.set)
    if args.cost:
        return cost(args)
    if args.brute_force and not args.regions:
        return brute_force(args.set, args.brute_force)
    if args.stages:
        return stages(args)

    encoder = create_encoder(args.model)  # one runtime session for every collection
    detailed = detailed_queries(args.set)
    rows, quality = [], []
    with tempfile.TemporaryDirectory() as tmp:
        built: dict[str, tuple[Collection, float]] = {}
        for spec in args.regions:
            db_spec, _, query_spec = spec.partition("/")
            if db_spec not in built:
                built[db_spec] = index(db_spec, args.set / "database", Path(tmp), encoder)
            coll, seconds = built[db_spec]
            info = coll.index_info()
            for verify in sorted({0, args.verify}):
                start = time.perf_counter()
                run, qrels = run_and_qrels(coll, args.set, query_spec or "none", verify)
                query_ms = (time.perf_counter() - start) / len(run) * 1000
                values = evaluate(run, qrels, ["map", "r@1"], threshold=5)
                values.update(evaluate(run, qrels, ["ndcg@10"]))
                rows.append((spec + (f" +verify {verify}" if verify else ""),
                             seconds / len(coll) * 1000, info["vectors_per_image"],
                             (info["vector_bytes"] + info["structure_bytes"]
                              + info.get("local_bytes", 0)) / len(coll) / 1024, query_ms,
                             busy_ms(coll, args.set, query_spec or "none", verify)
                             if args.busy else float("nan"),
                             {kind: tuple(mean_of(values[m], kind.split(",")[0],
                                                  detailed if "," in kind else None)
                                          for m in ("map", "r@1", "ndcg@10"))
                              for kind in KINDS + DETAILED}))
            if args.quality_set and not query_spec:
                q_coll, _ = index(db_spec, args.quality_set / "database", Path(tmp), encoder)
                for verify in sorted({0, args.verify}):
                    q_values = evaluate(*run_and_qrels(q_coll, args.quality_set, "none",
                                                       verify), ["map", "ndcg@10"])
                    quality.append((spec + (f" +verify {verify}" if verify else ""),
                                    mean_of(q_values["map"]), mean_of(q_values["ndcg@10"])))

    print(f"{args.set}: {len(coll)} database images, {args.model}\n")
    print("| regions | index ms/image | vectors/image | KiB/image | ms/query | "
          "ms/query, cores busy |")
    print("|---|---:|---:|---:|---:|---:|")
    for spec, ms, per_image, kib, query_ms, busy, _ in rows:
        print(f"| {spec} | {ms:.1f} | {per_image:.1f} | {kib:.1f} | {query_ms:.1f} | "
              f"{busy:.1f} |")
    print("\nmAP / R@1 of the source tile, nDCG@10\n")
    print("| query kind | " + " | ".join(spec for spec, *_ in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for kind in KINDS + DETAILED:
        cells = [" / ".join(f"{v:.3f}" for v in by_kind[kind]) for *_, by_kind in rows]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    every = [q.id for q in read_queries(args.set / "queries.jsonl")]
    print("\nDetailed queries: " + ", ".join(
        f"{kind} {sum(q.startswith(kind) for q in detailed)}/"
        f"{sum(q.startswith(kind) for q in every)}"
        for kind in (k.split(",")[0] for k in DETAILED)))
    if args.brute_force:
        brute_force(args.set, args.brute_force)
    if quality:
        print(f"\nWhole-image queries on {args.quality_set} (graded, threshold 1)\n")
        print("| regions | mAP | nDCG@10 |\n|---|---:|---:|")
        for spec, m, n in quality:
            print(f"| {spec} | {m:.4f} | {n:.4f} |")


if __name__ == "__main__":
    main()
