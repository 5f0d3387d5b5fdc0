"""ANN families on clustered synthetic vectors: build time, bytes a vector, recall@10, QPS.

One search thread (builds use every core). Each family's structure is timed twice in the
same run: through lookalike (`index.search`, which re-scores candidates exactly and filters
tombstones) and as the raw library call on the same structure: the overhead, side by side.

    python benchmarks/ann.py --n 1000000 --plot benchmarks/ann_pareto.png
    python benchmarks/ann.py --collection COLL     # the real vectors of a collection
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread, before numpy and faiss load
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from lookalike.index import StoredIndex, create_index

faiss.omp_set_num_threads(1)

# spec, search option, sweep
SWEEPS: list[tuple[str, str, list[int]]] = [
    ("flat", "", [0]),
    ("hnsw32", "ef", [16, 32, 64, 128, 256]),
    ("ivf{nlist}", "nprobe", [4, 8, 16, 32, 64]),
    ("ivf{nlist},pq{m}:rerank=500", "nprobe", [8, 16, 32, 64]),
    ("annoy:trees=50", "search_k", [1000, 5000, 20000]),
    ("lsh:bits=1024", "rerank", [100, 1000]),
    ("scann", "leaves_to_search", [10, 25, 50, 100]),
]


def clustered(n: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(10, n // 1000), dim)).astype(np.float32)

    def draw(count: int) -> np.ndarray:
        x = centres[rng.integers(0, len(centres), count)]
        x = x + 1.0 * rng.normal(size=(count, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return draw(n), draw(queries)


def collection_vectors(path: str, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """A collection's stored vectors, `queries` of them (seeded) held out."""
    from lookalike import Collection

    with Collection.open(path) as coll:
        _, vectors = coll.vectors()
    held = np.random.default_rng(0).permutation(len(vectors))
    return vectors[held[queries:]], vectors[held[:queries]]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds over `repeats` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def raw_call(index: StoredIndex, queries: np.ndarray, k: int, option: str, value: int,
             cache: dict[str, Any]) -> Callable[[], Any]:
    """The library's own search on the structure lookalike built, same parameters. For
    IVF-PQ that is faiss's own re-ranking (`...,RFlat`, built once more); for LSH, the
    Hamming shortlist without re-ranking."""
    family = index.family
    if family == "ivfpq":
        if "refine" not in cache:
            refine = faiss.index_factory(index.dim, index._factory() + ",RFlat",  # type: ignore[attr-defined]
                                         faiss.METRIC_INNER_PRODUCT)
            refine.train(np.asarray(index._vectors[:256 * index.nlist]))  # type: ignore[attr-defined]
            refine.add(np.asarray(index._vectors))
            cache["refine"] = refine
        refine = cache["refine"]
        space = faiss.ParameterSpace()
        space.set_index_parameter(refine, "nprobe", value)
        faiss.downcast_index(refine).k_factor = index.settings["rerank"] / k  # type: ignore[attr-defined]
        return lambda: refine.search(queries, k)
    if family == "flat":
        vectors = np.asarray(index._vectors)

        def flat() -> Any:  # numpy, 64 queries at a time to bound memory
            return [np.argpartition(-(queries[i:i + 64] @ vectors.T), k, axis=1)[:, :k]
                    for i in range(0, len(queries), 64)]
        return flat
    if family in ("hnsw", "ivf", "lsh"):
        fetch = index._shortlist(k, {**index.settings, option: value})
        params = index._faiss_params(fetch, {**index.settings, option: value})  # type: ignore[attr-defined]
        space = faiss.ParameterSpace()
        for name, v in params.items():
            space.set_index_parameter(index._faiss, name, v)  # type: ignore[attr-defined]
        return lambda: index._faiss.search(queries, fetch)  # type: ignore[attr-defined]
    if family == "annoy":
        tree = index._tree  # type: ignore[attr-defined]
        return lambda: [tree.get_nns_by_vector(q, k, value) for q in queries]
    if family == "scann":
        searcher = index._searcher  # type: ignore[attr-defined]
        return lambda: searcher.search_batched(queries, final_num_neighbors=k,
                                               leaves_to_search=value,
                                               pre_reorder_num_neighbors=100)
    raise ValueError(family)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="spec prefixes to run (default: all)")
    parser.add_argument("--plot", help="write the recall/QPS Pareto front here (PNG)")
    parser.add_argument("--collection", help="use this collection's vectors instead "
                        "(--queries of them held out as queries)")
    args = parser.parse_args()
    if args.collection:
        data, queries = collection_vectors(args.collection, args.queries)
        args.n, args.dim = data.shape
    else:
        data, queries = clustered(args.n, args.dim, args.queries)
    ids = np.arange(args.n, dtype=np.int64)
    nlist = 2 ** round(np.log2(np.sqrt(args.n)))
    k = 10
    source = args.collection or "clustered"
    print(f"{args.n} x {args.dim}-d {source} vectors, {args.queries} queries, k={k}, "
          f"1 thread, median of {args.repeats}\n")
    print("| spec | option | build s | bytes/vector | recall@10 | QPS | raw QPS | ours/raw |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    exact = create_index("flat", args.dim)
    exact.add(ids, data)
    _, truth = exact.search(queries, k)
    del exact
    rows: list[dict[str, Any]] = []
    for template, option, values in SWEEPS:
        spec = template.format(nlist=nlist, m=args.dim // 4)
        if args.only and not any(spec.startswith(p) for p in args.only):
            continue
        index = create_index(spec, args.dim)
        assert isinstance(index, StoredIndex)
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # builds may use every core
        start = time.perf_counter()
        index.add(ids, data)
        build = time.perf_counter() - start
        faiss.omp_set_num_threads(1)
        info = index.describe()
        cache: dict[str, Any] = {}
        per_vector = (info["structure_bytes"] or info["vector_bytes"]) / args.n
        for value in values:
            params = {option: value} if option else {}
            seconds, (_, found) = timed(
                lambda p=params, s=index.search: s(queries, k, **p),  # type: ignore[misc]
                args.repeats)
            raw = raw_call(index, queries, k, option, value, cache)
            raw_seconds, _ = timed(raw, args.repeats)
            recall = float(np.mean([np.isin(f, t).mean() for f, t in zip(found, truth,
                                                                           strict=True)]))
            qps, raw_qps = args.queries / seconds, args.queries / raw_seconds
            rows.append({"spec": spec, "option": f"{option}={value}" if option else "",
                         "recall": recall, "qps": qps})
            print(f"| {spec} | {rows[-1]['option']} | {build:.1f} | {per_vector:.0f} | "
                  f"{recall:.3f} | {qps:.0f} | {raw_qps:.0f} | {qps / raw_qps:.2f} |",
                  flush=True)
    flat_qps = next((r["qps"] for r in rows if r["spec"] == "flat"), None)
    good = [r for r in rows if r["recall"] >= 0.95 and r["spec"] != "flat"]
    if flat_qps and good:
        best = max(good, key=lambda r: r["qps"])
        print(f"\nbest at recall@10 >= 0.95: {best['spec']} {best['option']}, "
              f"{best['qps']:.0f} QPS = {best['qps'] / flat_qps:.1f} x exact "
              f"({flat_qps:.0f} QPS)")
    if args.plot:
        plot(rows, args.plot)


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for spec in dict.fromkeys(r["spec"] for r in rows):
        points = [r for r in rows if r["spec"] == spec]
        ax.plot([p["recall"] for p in points], [p["qps"] for p in points], "o-", label=spec)
    ax.set(xlabel="recall@10", ylabel="queries/s (1 thread, log)", yscale="log",
           title="lookalike indexes: recall vs speed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\n{path}")


if __name__ == "__main__":
    main()
