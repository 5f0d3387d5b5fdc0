"""Indexing on a Ray cluster against a local run, side by side on one machine.

    .venv/bin/python benchmarks/distributed.py [--images 320] [--repeats 3]

One machine cannot show Ray's scaling; it shows what Ray costs: the driver reading and
shipping every file, the actors' batches, the results coming back. Each Ray layout's actors
are started once, before timing (as on a cluster, where they outlive one folder). Prints
images/s medians and the ratio to the local run.
"""

from __future__ import annotations

import os
import statistics

import ray
from embed import BATCH, end_to_end, jpeg_folder, parse_args  # benchmarks/ is on sys.path

from lookalike import create_encoder
from lookalike.distributed import RayEncoder


def main() -> None:
    args = parse_args(__doc__)

    paths, folder = jpeg_folder(args.data, args.images)
    encoder = create_encoder("efficientnet_lite0")
    cores = os.cpu_count() or 1
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    layouts = {f"Ray, 1 actor x {cores} CPUs": (1, cores)}
    if cores > 1:
        layouts[f"Ray, {cores} actors x 1 CPU"] = (cores, 1)
    runs: dict[str, list[float]] = {"local (this process)": [], **{name: [] for name in layouts}}
    for _ in range(args.repeats):  # interleaved, so machine noise hits all alike
        runs["local (this process)"].append(end_to_end(encoder, folder, len(paths)))
        for name, (actors, cpus) in layouts.items():
            embedder = RayEncoder(encoder, actors=actors, cpus_per_actor=cpus)
            runs[name].append(end_to_end(encoder, folder, len(paths), embedder))
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
