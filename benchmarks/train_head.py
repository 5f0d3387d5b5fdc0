"""Training on groups it never saw: does a trained head beat the frozen encoder there?

    python benchmarks/train_head.py [--sets emoji fashion-mnist copies] [--variants ...]
                                    [--out runs/]

Every set is split by group, and nothing of a test group is seen in training (validation,
which picks the epoch, holds out whole training groups, as `lookalike train` does):
- emoji: the head trains on the Google and Twitter drawings of the set's `train` emoji
  (label = the emoji); the test is `lookalike dataset emoji`'s: Google drawings of the test
  emoji query 2,000 Twitter drawings, relevant = the same emoji;
- fashion-mnist: trains on 600 photos of each of classes 0-6 (train split); the test is 500
  photos of each of the unseen classes 7-9 (test split) querying each other, same class =
  relevant;
- copies: `lookalike dataset copies` split by original: the copy groups of half the
  originals train (label = the original); the other half's images and half of the
  distractors form the test database, each grouped image queries it, same original =
  relevant.

The frozen encoder's vectors are cached in OUT/features (embedding is the slow part); each
variant then trains in seconds. Test figures over the whole test ranking (trec_eval
conventions) with a paired randomization test against the frozen encoder. Prints one
markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lookalike import create_encoder
from lookalike.comparison import bootstrap_interval, randomization_p_value
from lookalike.datasets.builders import FASHION_DIR, _read_idx, build_emoji, emoji_dir
from lookalike.datasets.copies import build_copies
from lookalike.encoders import Encoder
from lookalike.metrics import Ranked, per_query
from lookalike.train.head import HeadConfig, train_head
from lookalike.train.validation import held_out_groups
from lookalike.trec import read_qrels, read_queries

FASHION_TRAIN_CLASSES, FASHION_TEST_CLASSES = range(7), range(7, 10)
METRICS = (("map", "map"), ("r@1", "success@1"), ("ndcg@10", "ndcg@10"))


def test_metrics(queries: np.ndarray, q_labels: np.ndarray, db: np.ndarray,
                 db_labels: np.ndarray, q_in_db: np.ndarray | None = None
                 ) -> dict[str, np.ndarray]:
    """Per-query mAP, R@1 and nDCG@10 over the whole database; `q_in_db`: each query's own
    row in the database, left out of its ranking."""
    sims = queries @ db.T
    left_out = int(q_in_db is not None)
    if q_in_db is not None:
        sims[np.arange(len(queries)), q_in_db] = -np.inf
    order = np.argsort(-sims, axis=1)[:, : db.shape[0] - left_out]
    grades = (db_labels[order] == q_labels[:, None]).astype(np.int64)
    counts = (db_labels[None, :] == q_labels[:, None]).sum(axis=1) - left_out
    ideal = (np.arange(max(1, counts.max()))[None, :] < counts[:, None]).astype(np.int64)
    ranked = Ranked([str(i) for i in range(len(queries))], grades,
                    np.full(len(queries), order.shape[1]), ideal)
    return {name: per_query(ranked, metric) for name, metric in METRICS}


def test_map(queries: np.ndarray, q_labels: np.ndarray, db: np.ndarray, db_labels: np.ndarray
             ) -> float:
    return float(test_metrics(queries, q_labels, db, db_labels)["map"].mean())


def _embed_arrays(encoder: Encoder, arrays: np.ndarray) -> np.ndarray:
    return encoder.encode([Image.fromarray(a).convert("RGB") for a in arrays], batch_size=64,
                          progress=True)


def fashion(encoder: Encoder, _work: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    images = _read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz")
    labels = _read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
    train = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:600]
                            for c in FASHION_TRAIN_CLASSES])
    test_images = _read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    test_labels = _read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    test = np.concatenate([rng.permutation(np.flatnonzero(test_labels == c))[:500]
                           for c in FASHION_TEST_CLASSES])
    q = _embed_arrays(encoder, test_images[test])
    return {"train_x": _embed_arrays(encoder, images[train]),
            "train_y": labels[train].astype(np.int64), "q": q,
            "q_y": test_labels[test].astype(np.int64), "db": q,
            "db_y": test_labels[test].astype(np.int64), "q_in_db": np.arange(len(test))}


def emoji_train_files(data: Path) -> tuple[list[Path], np.ndarray]:
    """The Google and Twitter drawings of the set's `train` emoji, labelled by emoji."""
    train_bases = {k.rsplit("/", 1)[1] for k in
                   json.loads((data / "splits.json").read_text())["train"]}
    root = emoji_dir() / "node_modules"
    meta = json.loads((root / "emoji-datasource" / "emoji.json").read_text())
    files: list[Path] = []
    labels: list[int] = []
    for entry in meta:
        if entry["unified"].lower() not in train_bases or not (
                entry.get("has_img_google") and entry.get("has_img_twitter")):
            continue
        for vendor in ("google", "twitter"):
            files.append(root / f"emoji-datasource-{vendor}" / "img" / vendor / "64" /
                         entry["image"])
            labels.append(len(labels) // 2)
    return files, np.asarray(labels)


def emoji_test(encoder: Encoder, data: Path) -> dict[str, np.ndarray]:
    """The set's test: Google drawings of test emoji query the Twitter database."""
    db_files = sorted((data / "database").rglob("*.png"))
    queries = read_queries(data / "queries.jsonl")
    same_emoji = {qid: next(d for d, g in docs.items() if g == 5)
                  for qid, docs in read_qrels(data / "qrels.txt").items()}
    return {"db": encoder.encode(db_files, batch_size=64, progress=True),
            "db_y": np.asarray([f.parent.relative_to(data / "database").as_posix()
                                for f in db_files]),
            "q": encoder.encode([q.image for q in queries], batch_size=64, progress=True),
            "q_y": np.asarray([same_emoji[q.id].rsplit("/", 1)[0] for q in queries])}


def emoji(encoder: Encoder, work: Path) -> dict[str, np.ndarray]:
    data = build_emoji(work / "emoji")
    files, y = emoji_train_files(data)
    x = encoder.encode([Image.open(f).convert("RGBA") for f in files], batch_size=64,
                       progress=True)
    return {"train_x": x, "train_y": y, **emoji_test(encoder, data)}


def copies(encoder: Encoder, work: Path) -> dict[str, np.ndarray]:
    data = work / "copies"
    if not (data / "groups.csv").is_file():
        build_copies(data)
    with (data / "groups.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    groups = sorted({r["group"] for r in rows if r["group"]})
    rng = np.random.default_rng(0)
    train_groups = set(rng.permutation(groups)[: len(groups) // 2].tolist())
    train = [r for r in rows if r["group"] in train_groups]
    distractors = [r for r in rows if not r["group"]]
    test = [r for r in rows if r["group"] and r["group"] not in train_groups] + [
        distractors[i] for i in rng.permutation(len(distractors))[: len(distractors) // 2]]
    x = encoder.encode([data / "database" / r["image"] for r in train + test], batch_size=32,
                       progress=True)
    # a distractor is its own group: it queries nothing and nothing finds it relevant
    labels = np.asarray([r["group"] or f"distractor-{r['image']}" for r in train + test])
    grouped = np.asarray([bool(r["group"]) for r in test])
    db = x[len(train):]
    return {"train_x": x[:len(train)], "train_y": labels[:len(train)], "q": db[grouped],
            "q_y": labels[len(train):][grouped], "db": db, "db_y": labels[len(train):],
            "q_in_db": np.flatnonzero(grouped)}


SETS = {"emoji": emoji, "fashion-mnist": fashion, "copies": copies}


def features(name: str, encoder: Encoder | None, out: Path) -> dict[str, np.ndarray]:
    cached = out / "features" / f"{name}.npz"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        data = SETS[name](encoder or create_encoder("efficientnet_lite0"), out)
        np.savez(cached, **data)
    return dict(np.load(cached))


VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "whitening-only": {"epochs": 0},
    "supcon-whitened-start": {"lr": 1e-3},
    "no-whitening": {"whiten": False},
    "lr-1e-4": {"lr": 1e-4},
    "no-whitening-lr-1e-4": {"whiten": False, "lr": 1e-4},
}


def _project(head: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        z = head(torch.from_numpy(x.astype(np.float32))).numpy()
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def run_variant(data: dict[str, np.ndarray], options: dict[str, object], seed: int
                ) -> tuple[dict[str, np.ndarray], int, float]:
    """Train as `lookalike train` does (whole training groups held out to pick the epoch);
    the test's per-query figures, the best epoch and the training seconds."""
    x, y = data["train_x"], data["train_y"]
    val = held_out_groups(y, 0.1, np.random.default_rng(seed))
    start = time.perf_counter()
    head, fitted = train_head(x[~val], y[~val], x[val], y[val],
                              config=HeadConfig(seed=seed, **options))  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    q_in_db = data.get("q_in_db")
    return (test_metrics(_project(head, data["q"]), data["q_y"], _project(head, data["db"]),
                         data["db_y"], q_in_db),
            -1 if fitted.held_out.fell_back else fitted.best_epoch, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--variants", nargs="+", default=["default"], choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, default=1,
                        help="training seeds (validation split and initialisation) a variant")
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    encoder = None
    rows = []
    for name in args.sets:
        if not (args.out / "features" / f"{name}.npz").is_file() and encoder is None:
            encoder = create_encoder("efficientnet_lite0")
        data = features(name, encoder, args.out)
        frozen = test_metrics(data["q"], data["q_y"], data["db"], data["db_y"],
                              data.get("q_in_db"))
        rows.append(f"| {name} | frozen | {len(data['train_x'])} | - | "
                    + " | ".join(f"{frozen[m].mean():.3f}" for m, _ in METRICS)
                    + " | - | - | - |")
        for variant in args.variants:
            for seed in range(args.seeds):
                trained, epoch, seconds = run_variant(data, VARIANTS[variant], seed)
                epoch = "fell back" if epoch < 0 else epoch
                diff = trained["map"] - frozen["map"]
                rng = np.random.default_rng(0)
                p = randomization_p_value(diff, 10_000, rng)
                low, high = bootstrap_interval(diff, 10_000, rng)
                rows.append(
                    f"| {name} | {variant} (seed {seed}) | {len(data['train_x'])} | {epoch} | "
                    + " | ".join(f"{trained[m].mean():.3f}" for m, _ in METRICS)
                    + f" | {diff.mean() / frozen['map'].mean() * 100:+.1f} % "
                    f"[{low:+.3f}, {high:+.3f}] | {p:.4f} | {seconds:.0f} |")
                print(rows[-1], flush=True)
    print("\n| set | model | train images | best epoch | test mAP | R@1 | nDCG@10 | "
          "mAP change [95 % interval] | p | train s |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__" and __import__("sys").argv[1:2] == ["--cache-only"]:
    for set_name in SETS:
        features(set_name, None, Path(__import__("sys").argv[2]))
elif __name__ == "__main__":
    main()
