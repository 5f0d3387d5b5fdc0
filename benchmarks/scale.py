"""How each operation's cost grows with the collection (issue 17): add, remove, re-index,
open, search, disk.

Embedding a million images takes hours here, so the collections are built through the same
engine code an indexing run uses (`Collection.index_folder`: folder scan, hashing, catalog,
index), on real files (tiny distinct PNGs), with an encoder that hands out real embeddings:
the efficientnet_lite0 vectors of crops of the bundled photos, each reused with small noise.
Every measured operation runs in a fresh process, timed around the operation only; peak RSS
and bytes written (`wchar` of /proc/self/io) are that process's. "Named" operations are
`lookalike update PATH...` (`Collection.index_paths`): no scan of the folder.

    .venv/bin/python benchmarks/scale.py --sizes 10000 100000 --specs flat hnsw32
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one search thread, before numpy and faiss

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "lookalike" / "samples"
POOL = 400  # real vectors the collection's vectors are drawn from
BUILD_RUN = 100_000  # images an indexing run adds while a collection is built


def _pool_file(work: Path) -> Path:
    """Real embeddings: random crops of the sample photos through efficientnet_lite0."""
    path = work / "pool.npy"
    if not path.exists():
        from PIL import Image

        from lookalike import create_encoder

        rng = np.random.default_rng(0)
        crops = []
        for i in range(POOL):
            image = Image.open(sorted(SAMPLES.glob("*.jpg"))[i % 10]).convert("RGB")
            w, h = image.size
            side = rng.uniform(0.2, 0.9)
            x, y = rng.uniform(0, 1 - side, 2)
            crops.append(image.crop((int(x * w), int(y * h), int((x + side) * w),
                                     int((y + side) * h))))
        np.save(path, create_encoder("efficientnet_lite0").encode(crops, batch_size=64))
    return path


class PoolEncoder:
    """An `index_folder` encoder that hands each file a pool vector plus noise, chosen by
    the file's name: real embedding statistics at the speed of a lookup."""

    def __init__(self, pool: np.ndarray) -> None:
        self.pool = pool

    def iter_batches(self, items: Sequence[Any], *, batch_size: int = 32,
                     progress: bool = False, regions: Any = None) -> Iterator[Any]:
        from lookalike.encoders import EncodedBatch

        for start in range(0, len(items), batch_size):
            names = [Path(p).stem for p in items[start:start + batch_size]]
            seeds = np.array([int(n.split("-")[-1]) for n in names])
            rng = np.random.default_rng(seeds[0])
            vectors = self.pool[seeds % len(self.pool)] + 0.02 * rng.normal(
                size=(len(seeds), self.pool.shape[1]))
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            yield EncodedBatch(list(range(start, start + len(names))),
                               vectors.astype(np.float32), [(8, 8)] * len(names))


def write_images(folder: Path, first: int, count: int) -> None:
    """`count` distinct 8x8 PNGs (distinct bytes, so distinct hashes), 100 a sub-folder."""
    from PIL import Image

    for i in range(first, first + count):
        sub = folder / f"{i // 1000:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        pixels = np.frombuffer(i.to_bytes(8, "little") * 24, np.uint8).reshape(8, 8, 3)
        Image.fromarray(pixels).save(sub / f"img-{i}.png")


def build(coll: Path, folder: Path, n: int, spec: str, pool: Path) -> float:
    """Index the folder in runs of at most `BUILD_RUN` new images, as a library grows (and
    so that no run holds more than that many vectors in memory at once)."""
    from lookalike import Collection, create_encoder

    fresh = not folder.exists()
    seconds = 0.0
    with Collection.create(coll, encoder=create_encoder("efficientnet_lite0"),
                           index=spec) as made:
        for first in range(0, n, BUILD_RUN):
            if fresh:
                write_images(folder, first, min(BUILD_RUN, n - first))
            start = time.perf_counter()
            made.index_folder(folder, batch_size=2000, embed_with=PoolEncoder(np.load(pool)))
            seconds += time.perf_counter() - start
            if not fresh:
                break
    return seconds


# -- one operation, in its own process ---------------------------------------------------

def _io_written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def run_op(op: str, coll: Path, folder: Path, pool: Path, count: int) -> dict[str, Any]:
    import faiss

    from lookalike import Collection

    faiss.omp_set_num_threads(1)
    out: dict[str, Any] = {}
    start = time.perf_counter()
    c = Collection.open(coll)
    if op == "open":
        c.load()
        out["seconds"] = time.perf_counter() - start
    elif op in ("search-like", "search-vector"):
        ids = [r[0] for r in c.catalog.db.execute(
            "SELECT id FROM images ORDER BY random() LIMIT 200")]
        queries = np.load(pool)[:200]
        c.search(like=ids[0], k=10)  # the index loads
        times = []
        for i in range(200):
            t = time.perf_counter()
            if op == "search-like":
                c.search(like=ids[i], k=10)
            else:
                c.search_vectors(queries[i:i + 1], k=10)
            times.append(time.perf_counter() - t)
        out["p50_ms"] = 1000 * statistics.median(times)
        out["p99_ms"] = 1000 * float(np.percentile(times, 99))
    else:
        c.search(like=c.catalog.db.execute("SELECT id FROM images LIMIT 1").fetchone()[0],
                 k=10)  # the index resident, as in a server or a second run
        rss = _rss_now()
        named: list[Path] = []
        if op in ("add", "add-named"):
            last = int(c.catalog.db.execute("SELECT COUNT(*) FROM images").fetchone()[0])
            added = folder / ("added" if op == "add" else "named")
            write_images(added, 10**8 + last, count)
            named = sorted(added.rglob("*.png"))
        elif op in ("remove", "remove-named"):
            named = sorted(folder.glob("*/img-*.png"))[:count]
            for path in named:
                path.unlink()
        written = _io_written()
        start = time.perf_counter()
        if op.endswith("-named"):  # `lookalike update PATH...`: no scan of the folder
            c.index_paths(named, batch_size=2000, embed_with=PoolEncoder(np.load(pool)))
        else:
            c.index_folder(folder, batch_size=2000, embed_with=PoolEncoder(np.load(pool)))
        out["seconds"] = time.perf_counter() - start
        out["written_mb"] = (_io_written() - written) / 2**20
        out["rss_before_mb"] = rss
    c.close()
    out["peak_rss_mb"] = _status_mb("VmHWM")  # ru_maxrss would count the parent's, from
    return out                                 # before exec


def _rss_now() -> float:
    return _status_mb("VmRSS")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(op: str, coll: Path, folder: Path, pool: Path, count: int = 0) -> dict[str, Any]:
    result = subprocess.run([sys.executable, __file__, "--op", op, "--coll", str(coll),
                             "--folder", str(folder), "--pool", str(pool),
                             "--count", str(count)], capture_output=True, text=True,
                            check=True)
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--specs", nargs="+", default=["flat", "hnsw32"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lookalike-scale"))
    parser.add_argument("--op")
    parser.add_argument("--coll", type=Path)
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--pool", type=Path)
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args()
    if args.op:
        print(json.dumps(run_op(args.op, args.coll, args.folder, args.pool, args.count)))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    pool = _pool_file(args.work)
    rows = []
    for n in args.sizes:
        for spec in args.specs:
            folder, coll = args.work / f"images-{n}", args.work / f"coll-{n}-{spec}"
            shutil.rmtree(coll, ignore_errors=True)
            shutil.rmtree(folder / "added", ignore_errors=True)
            built = build(coll, folder, n, spec, pool)
            row: dict[str, Any] = {"n": n, "spec": spec, "build_s": built}
            row["open"] = measure("open", coll, folder, pool)
            row["like"] = measure("search-like", coll, folder, pool)
            row["vector"] = measure("search-vector", coll, folder, pool)
            row["same"] = measure("same", coll, folder, pool)
            row["add1000"] = measure("add", coll, folder, pool, 1000)
            row["add10"] = measure("add", coll, folder, pool, 10)
            row["remove1000"] = measure("remove", coll, folder, pool, 1000)
            row["named10"] = measure("add-named", coll, folder, pool, 10)
            row["named1000"] = measure("add-named", coll, folder, pool, 1000)
            row["unnamed1000"] = measure("remove-named", coll, folder, pool, 1000)
            images = n + 20  # +1,000 +10 -1,000, then named +10 +1,000 -1,000
            row["disk_per_image"] = disk_bytes(coll) / images
            row["catalog_per_image"] = (coll / "catalog.sqlite").stat().st_size / images
            rows.append(row)
            print(json.dumps(row), flush=True)
            for extra in ("added", "named"):
                shutil.rmtree(folder / extra, ignore_errors=True)
            for i in range(n):  # the removed ones back, for the next spec's build
                if not (folder / f"{i // 1000:05d}" / f"img-{i}.png").exists():
                    write_images(folder, i, 1)
    print_table(rows)


def print_table(rows: list[dict[str, Any]]) -> None:
    print("\n| N | index | open s | like p50/p99 ms | vector p50/p99 ms | no change s "
          "| add 1,000 s (MB written, peak RSS MB) | add 10 s (MB, RSS) "
          "| remove 1,000 s (MB, RSS) | named: add 10 s (MB, RSS above resident) "
          "| named: add 1,000 | named: remove 1,000 | disk KB/image (catalog) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def op(row: dict[str, Any], name: str, above: bool = False) -> str:
        o = row[name]
        rss = o["peak_rss_mb"] - (o["rss_before_mb"] if above else 0)
        return f"{o['seconds']:.2f} ({o['written_mb']:.1f}, {rss:,.0f})"

    for r in rows:
        print(f"| {r['n']:,} | {r['spec']} | {r['open']['seconds']:.2f} "
              f"| {r['like']['p50_ms']:.1f} / {r['like']['p99_ms']:.1f} "
              f"| {r['vector']['p50_ms']:.1f} / {r['vector']['p99_ms']:.1f} "
              f"| {r['same']['seconds']:.2f} | {op(r, 'add1000')} | {op(r, 'add10')} "
              f"| {op(r, 'remove1000')} | {op(r, 'named10', True)} "
              f"| {op(r, 'named1000', True)} | {op(r, 'unnamed1000', True)} "
              f"| {r['disk_per_image'] / 1024:.2f} ({r['catalog_per_image'] / 1024:.2f}) |")


if __name__ == "__main__":
    main()
