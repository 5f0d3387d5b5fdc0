"""Near-duplicates: `lookalike duplicates` against imagededup's hashes, on one set.

    .venv/bin/python benchmarks/duplicates.py [--set DIR] [--originals 150] [--size 2000]
        [--regions grid@160] [--write-default] [--plot reliability.png]

`--set` is a `lookalike dataset copies` folder (built there when missing): originals, one
copy of each of ten kinds, distractors (half of them transformed alike). Its images are
indexed into a collection beside it, then:

- lookalike: every candidate pair examined (the time of the nearest-neighbour searches
  alone is measured too), the copy probability fitted out of fold (the judged groups split
  in two halves, each half predicted by a fit on the other), pairs at probability >= 0.5,
  0.9 and the default grouped by union-find; pairwise precision, recall by copy family,
  F1; the probability's
  expected calibration error and reliability table; the relation named for each
  original-copy pair found directly (at the default probability cut, the last row);
- imagededup (pip install imagededup): PHash, DHash, WHash and AHash, each at the Hamming
  threshold (0-16, of 64 bits) with the best F1 on this very set (their most flattering setting),
  grouped the same way.

`--write-default` saves the fit on all pairs as the probability model the package ships
(src/lookalike/copy_probability.json); `--plot` draws the reliability diagram (matplotlib).
"""

from __future__ import annotations

import argparse
import resource
import time
from collections import Counter
from pathlib import Path

import numpy as np

from lookalike import Collection
from lookalike.copy_probability import Reliability
from lookalike.copy_truth import Quality, Truth, linked, quality, read_truth
from lookalike.datasets import build_dataset
from lookalike.datasets.copies import FAMILIES, RELATION
from lookalike.duplicates import (
    MIN_PROBABILITY,
    CopyPair,
    candidate_pairs,
    examine,
    fit_probability,
)

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "lookalike" / "copy_probability.json"
HASHES = ("PHash", "DHash", "WHash", "AHash")
THRESHOLDS = (0.5, 0.9, MIN_PROBABILITY)  # the default last
MAX_DISTANCE = 16  # of 64 bits; imagededup's default is 10
FAMILY_ORDER = (*FAMILIES, "copy-copy")


def lookalike_rows(coll_path: Path, truth: Truth, write_default: bool, plot: Path | None
                   ) -> tuple[dict[float, Quality], dict[str, float], list[str]]:
    with Collection.open(coll_path) as coll:
        start = time.perf_counter()
        candidates = sum(1 for _ in candidate_pairs(coll))
        searches = time.perf_counter() - start
        start = time.perf_counter()
        examined = examine(coll)
        examined_s = time.perf_counter() - start
        images = len(coll)
    fitted = fit_probability(examined, truth, fitted_on="lookalike dataset copies "
                             f"({images} images, efficientnet_lite0)")
    if write_default:
        fitted.model.save(SHIPPED)
    if plot is not None:
        draw_reliability(fitted.reliability, plot)
    found = {}
    for threshold in THRESHOLDS:
        copies = [p for p, chance in zip(fitted.judged, fitted.held_out, strict=True)
                  if chance >= threshold and p.relation != "similar"]
        found[threshold] = quality(linked((p.a, p.b) for p in copies), truth)
    stats = {"images": images, "candidates": candidates, "search_s": searches,
             "examine_s": examined_s, "ece": fitted.reliability.expected_error,
             "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    table = [f"  {low:.1f}-{low + 0.1:.1f}  predicted {mean:.3f}  observed {seen:.3f}  "
             f"pairs {n}" for low, mean, seen, n in fitted.reliability.bins]
    return found, stats | _relations_named(copies, truth), table  # named at the default


def draw_reliability(reliability: Reliability, path: Path) -> None:
    """Predicted against observed, each bin a point sized by its pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="#999", linewidth=1, label="perfect")
    predicted, observed, pairs = (np.array([b[i] for b in reliability.bins])
                                  for i in (1, 2, 3))
    ax.scatter(predicted, observed, s=20 + 200 * np.sqrt(pairs / pairs.max()), zorder=3,
               label="held-out pairs, by bin")
    ax.set(xlabel="predicted probability of a copy", ylabel="share that are copies",
           xlim=(0, 1), ylim=(0, 1),
           title=f"expected calibration error {reliability.expected_error:.3f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _relations_named(copies: list[CopyPair], truth: Truth) -> dict[str, float]:
    """For original-copy pairs linked directly: the share named as their family is."""
    right: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    for pair in copies:
        families = {truth.family[pair.a], truth.family[pair.b]}
        if truth.is_copy(pair.a, pair.b) and "original" in families and len(families) == 2:
            family = (families - {"original"}).pop()
            seen[family] += 1
            right[family] += pair.relation == RELATION[family]
    return {f"named {family}": right[family] / seen[family] for family in seen}


def imagededup_rows(folder: Path, truth: Truth) -> list[tuple[str, int, Quality, float]]:
    try:
        from imagededup import methods
    except ImportError:
        print("imagededup is not installed (pip install imagededup): its rows are left out")
        return []
    rows = []
    for name in HASHES:
        hasher = getattr(methods, name)(verbose=False)
        start = time.perf_counter()
        codes = hasher.encode_images(image_dir=folder)
        found = hasher.find_duplicates(encoding_map=codes, max_distance_threshold=MAX_DISTANCE,
                                       scores=True)
        seconds = time.perf_counter() - start
        best: tuple[int, Quality] | None = None
        true = len(truth.copy_pairs())
        for threshold in range(MAX_DISTANCE + 1):
            pairs = [(a, b) for a, hits in found.items() for b, d in hits if d <= threshold]
            groups = linked(pairs)
            if sum(len(g) * (len(g) - 1) // 2 for g in groups) > 20 * true:
                break  # chained into giant groups: precision only falls from here
            scored = quality(groups, truth)
            if best is None or scored.f1 > best[1].f1:
                best = (threshold, scored)
        assert best is not None
        rows.append((name, best[0], best[1], seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", type=Path, default=Path("/tmp/lookalike-copies"))
    parser.add_argument("--originals", type=int, default=150)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--regions", default="grid@160")
    parser.add_argument("--write-default", action="store_true")
    parser.add_argument("--plot", type=Path, help="draw the reliability diagram here")
    args = parser.parse_args()
    if not (args.set / "groups.csv").exists():
        build_dataset("copies", args.set, db_size=args.size, queries=args.originals, seed=0)
    truth = read_truth(args.set / "groups.csv")
    coll_path = args.set.with_name(args.set.name + f"-coll-{args.regions.replace('@', '-')}")
    if not coll_path.exists():
        from lookalike.encoders import create_encoder

        start = time.perf_counter()
        with Collection.create(coll_path, encoder=create_encoder("efficientnet_lite0"),
                               regions=args.regions) as coll:
            coll.index_folder(args.set / "database")
        print(f"indexed in {time.perf_counter() - start:.0f} s")
    found, stats, table = lookalike_rows(coll_path, truth, args.write_default, args.plot)
    print(f"\n{int(stats['images'])} images, regions {args.regions}; "
          f"{int(stats['candidates'])} candidate pairs")
    print(f"lookalike: nearest-neighbour searches {stats['search_s']:.1f} s, examining "
          f"the pairs {stats['examine_s']:.1f} s; peak RSS {stats['rss_mb']:.0f} MB")
    print(f"probability, held out: expected calibration error {stats['ece']:.4f}")
    print("\n".join(table))
    print("relation named right (original-copy pairs linked directly): " + ", ".join(
        f"{k[6:]} {v:.2f}" for k, v in sorted(stats.items()) if k.startswith("named ")),
          flush=True)
    rivals = imagededup_rows(args.set / "database", truth)
    head = ["method", "threshold", "precision", "recall", "F1", "s / 1000 images"]
    head += [f for f in FAMILY_ORDER]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    per_k = 1000 / stats["images"]
    seconds = (stats["search_s"] + stats["examine_s"]) * per_k
    rows = [("lookalike", f"p >= {t}", q, seconds) for t, q in found.items()]
    rows += [(name, f"<= {t}", q, s * per_k) for name, t, q, s in rivals]
    for name, threshold, q, seconds in rows:
        cells = [name, threshold, f"{q.precision:.3f}", f"{q.recall:.3f}", f"{q.f1:.3f}",
                 f"{seconds:.1f}"]
        cells += [f"{q.recall_by_family.get(f, float('nan')):.2f}" for f in FAMILY_ORDER]
        print("| " + " | ".join(cells) + " |")
    if args.write_default:
        print(f"wrote {SHIPPED}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
