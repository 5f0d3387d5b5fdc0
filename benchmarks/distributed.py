"""Indexing on a Ray cluster against a local run, side by side on one machine.

    .venv/bin/python benchmarks/distributed.py [--images 320] [--repeats 3]

One machine cannot show Ray's scaling; it shows what Ray costs: the driver reading and
shipping every file, the actors' batches, the results coming back. Each Ray layout's actors
are started once, before timing (as on a cluster, where they outlive one folder). Prints
images/s medians and the ratio to the local run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import ray
from embed import BATCH, make_jpegs  # benchmarks/ is on sys.path when run

from lookalike import Collection, create_encoder
from lookalike.distributed import RayEncoder


def index_rate(encoder, folder: Path, count: int, embed_with=None) -> float:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        coll = Collection.create(Path(tmp) / "coll", encoder=encoder)
        start = time.perf_counter()
        report = coll.index_folder(folder, batch_size=BATCH, embed_with=embed_with)
        elapsed = time.perf_counter() - start
        assert len(report.added) == count, report.summary()
        coll.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(__file__).parent / "data" / "jpegs")
    args = parser.parse_args()

    paths = make_jpegs(args.data, args.images)
    folder = args.data.parent / f"jpegs-{args.images}"
    folder.mkdir(exist_ok=True)
    for p in paths:
        if not (folder / p.name).exists():
            (folder / p.name).symlink_to(p.resolve())
    encoder = create_encoder("efficientnet_lite0")
    cores = os.cpu_count() or 1
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    layouts = {f"Ray, 1 actor x {cores} CPUs": (1, cores)}
    if cores > 1:
        layouts[f"Ray, {cores} actors x 1 CPU"] = (cores, 1)
    runs: dict[str, list[float]] = {"local (this process)": [], **{name: [] for name in layouts}}
    for _ in range(args.repeats):  # interleaved, so machine noise hits all alike
        runs["local (this process)"].append(index_rate(encoder, folder, len(paths)))
        for name, (actors, cpus) in layouts.items():
            embedder = RayEncoder(encoder, actors=actors, cpus_per_actor=cpus)
            runs[name].append(index_rate(encoder, folder, len(paths), embedder))
            del embedder  # frees its CPUs for the next layout
    ray.shutdown()

    local = statistics.median(runs["local (this process)"])
    print(f"efficientnet_lite0, {len(paths)} JPEGs 1024x768, batch {BATCH}, {args.repeats} "
          f"repeats, {cores} cores, Ray {ray.__version__}\n")
    print("| pipeline | images/s (median) | runs | this / local |")
    print("|---|---:|---|---:|")
    for name, values in runs.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.1f} | {', '.join(f'{v:.1f}' for v in values)} | "
              f"{med / local:.2f} x |")


if __name__ == "__main__":
    main()
