"""Keypoint verification's time a candidate, faiss on its default thread count or on one, on a
quiet machine and with every core loaded by other processes (issue 16).

    .venv/bin/python benchmarks/verify_load.py [--candidates 20] [--repeats 9] [--load 2 4]

Queries are crops of the bundled sample photos; candidates are the photos themselves, each
also rotated and shrunk, each verified against the query as `search --verify` does (keypoints
made beforehand, as they are stored). A load is N busy-looping Python processes (by default
as many as the cores, then twice as many), paused (SIGSTOP) for the quiet runs and resumed
(SIGCONT) for the loaded ones, so that every cell is measured in the same run, interleaved,
the two thread counts in alternating order. "default"
is the same `verify` with `verification.one_thread` replaced by a no-op, that is the code
before the fix: faiss on its own thread count (OpenMP's default, the cores).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
from PIL import Image

from lookalike import verification
from lookalike.images import decode
from lookalike.verification import Keypoints, keypoints, verify

SAMPLES = Path(verification.__file__).parent / "samples"
ONE_THREAD = verification.one_thread


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def photos(count: int) -> tuple[list[Keypoints], list[Keypoints]]:
    """Three crop queries, and `count` candidates: the samples, rotated and shrunk copies."""
    images = [decode(p).image for p in sorted(SAMPLES.glob("*.jpg"))]
    variants = [lambda im: im,
                lambda im: im.rotate(90, expand=True),
                lambda im: im.resize((im.width * 3 // 5, im.height * 3 // 5),
                                     Image.Resampling.BILINEAR)]
    candidates = [keypoints(v(im)) for v in variants for im in images][:count]
    queries = [im.crop((im.width // 5, im.height // 4, im.width * 3 // 5, im.height * 2 // 3))
               for im in images[:3]]
    return [keypoints(q) for q in queries], candidates


@contextlib.contextmanager
def load(processes: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`processes` busy loops, started paused; killed at the end whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(processes):
            started.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
            os.kill(started[-1].pid, signal.SIGSTOP)
        yield started
    finally:
        for proc in started:
            proc.kill()
            proc.wait()


def cpu_ticks() -> tuple[int, int]:
    """Busy and all CPU ticks of the machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def busy(started: list[subprocess.Popen[bytes]], running: int) -> None:
    """Let the first `running` busy loops run, pause the others."""
    for i, proc in enumerate(started):
        os.kill(proc.pid, signal.SIGCONT if i < running else signal.SIGSTOP)
    time.sleep(0.3)  # let the scheduler settle


def one_pass(queries: list[Keypoints], candidates: list[Keypoints], query: int,
             threads: Callable[[], contextlib.AbstractContextManager[None]]) -> tuple[float, int]:
    """Seconds a candidate verifying one query against all of them, and how many verified."""
    verification.one_thread = threads  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        found = sum(verify(queries[query], c) is not None for c in candidates)
        return (time.perf_counter() - start) / len(candidates), found
    finally:
        verification.one_thread = ONE_THREAD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cores = os.cpu_count() or 1
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--load", type=int, nargs="+", default=[cores, 2 * cores],
                        help="busy processes of each loaded state")
    args = parser.parse_args()

    queries, candidates = photos(args.candidates)
    modes: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
        "default": contextlib.nullcontext, "1 thread": ONE_THREAD}
    default_threads = faiss.omp_get_max_threads()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; faiss {faiss.__version__}, default "
          f"{default_threads} OpenMP threads; load average {os.getloadavg()[0]:.2f}")
    print(f"{len(candidates)} candidates x {len(queries)} crop queries "
          f"({statistics.mean(len(c) for c in candidates):.0f} keypoints a candidate, "
          f"{statistics.mean(len(q) for q in queries):.0f} a query), {args.repeats} repeats, "
          f"loads: {', '.join(map(str, args.load))} busy processes")

    times: dict[tuple[str, str], list[float]] = {}
    verified: dict[int, set[int]] = {}  # a repeat's query: how many verified, every cell
    usage: dict[str, list[int]] = {}  # busy and all ticks of the machine in each state
    states = {"quiet": 0} | {f"{n} busy": n for n in args.load}
    with load(max(args.load)) as loaders:
        for repeat in range(args.repeats):
            for state, running in states.items():
                busy(loaders, running)
                before = cpu_ticks()
                order = list(modes) if repeat % 2 == 0 else list(modes)[::-1]
                for mode in order:
                    seconds, found = one_pass(queries, candidates, repeat % len(queries),
                                              modes[mode])
                    times.setdefault((state, mode), []).append(seconds)
                    verified.setdefault(repeat, set()).add(found)
                after = cpu_ticks()
                total = usage.setdefault(state, [0, 0])
                total[0] += after[0] - before[0]
                total[1] += after[1] - before[1]
            busy(loaders, 0)
    print()
    print("| machine (CPU busy) | faiss threads | ms a candidate: median | mean | "
          "min-max over repeats |")
    print("|---|---|---:|---:|---:|")
    for state in states:
        for mode in modes:
            t = [1000 * s for s in times[state, mode]]
            threads = default_threads if mode == "default" else 1
            cpu = 100 * usage[state][0] / max(1, usage[state][1])
            print(f"| {state} ({cpu:.0f} %) | {mode} ({threads}) | {statistics.median(t):.1f} | "
                  f"{statistics.mean(t):.1f} | "
                  f"{min(t):.1f}-{max(t):.1f} |")
    same = all(len(found) == 1 for found in verified.values())
    print(f"\nSame candidates verified in every cell: {same}; "
          f"load average at the end {os.getloadavg()[0]:.2f}")
    assert faiss.omp_get_max_threads() == default_threads


if __name__ == "__main__":
    main()
