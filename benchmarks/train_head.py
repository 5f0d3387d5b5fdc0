"""Head mode on the default backbone: test mAP of the frozen embedding vs a trained head.

    python benchmarks/train_head.py [--sets fashion-mnist emoji] [--out runs/]

fashion-mnist: the head trains on train-split photos (a stratified sample; 1,000 more for
validation); test queries and database both come from the test split (same class =
relevant). emoji: the head trains on the Google and Twitter drawings of the `train` emoji
(label = the emoji; never a test emoji), validation on a tenth of them; the test is the
emoji set of `lookalike dataset emoji`: Google drawings of test emoji query 2,000 Twitter
drawings, relevant = the same emoji (grade 5). Prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lookalike import create_encoder
from lookalike.datasets.builders import (
    FASHION_DIR,
    _read_idx,
    build_emoji,
    emoji_dir,
)
from lookalike.datasets.layout import stratified_pick
from lookalike.encoders import Encoder
from lookalike.encoders.model_folder import save_model
from lookalike.metrics import Ranked, per_query
from lookalike.train.head import (
    HeadConfig,
    augmented_view,
    plot_history,
    train_head,
)
from lookalike.trec import read_qrels, read_queries


def test_map(queries: np.ndarray, q_labels: np.ndarray, db: np.ndarray, db_labels: np.ndarray,
             same_set: bool) -> float:
    """mAP over the whole database (leave-one-out when queries are the database)."""
    sims = queries @ db.T
    if same_set:
        np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1)[:, : db.shape[0] - int(same_set)]
    grades = (db_labels[order] == q_labels[:, None]).astype(np.int64)
    counts = (db_labels[None, :] == q_labels[:, None]).sum(axis=1) - int(same_set)
    ideal = (np.arange(max(1, counts.max()))[None, :] < counts[:, None]).astype(np.int64)
    ranked = Ranked([str(i) for i in range(len(queries))], grades,
                    np.full(len(queries), order.shape[1]), ideal)
    return float(per_query(ranked, "map").mean())


def fashion(encoder: Encoder, train: int, self_supervised: bool = False
            ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    images = _read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz")
    labels = _read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
    picked = rng.permutation(stratified_pick(labels, train + 1000, rng))  # it sorts by class
    test_images = _read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    test_labels = _read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    test = stratified_pick(test_labels, 2000, rng)

    def embed(arrays: np.ndarray) -> np.ndarray:
        return encoder.encode([Image.fromarray(a).convert("RGB") for a in arrays],
                              batch_size=64, progress=True)

    x = embed(images[picked])
    extra = {}
    if self_supervised:  # two augmented views of each training photo, no labels used
        views = [Image.fromarray(a).convert("RGB") for a in images[picked[:train]]]
        extra = {name: encoder.encode([augmented_view(v, rng) for v in views], batch_size=64,
                                      progress=True) for name in ("view_a", "view_b")}
    return {**extra, "train_x": x[:train], "train_y": labels[picked][:train].astype(np.int64),
            "val_x": x[train:], "val_y": labels[picked][train:].astype(np.int64),
            "test_q": embed(test_images[test]), "test_q_y": test_labels[test].astype(np.int64)}


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
            "test_q": encoder.encode([q.image for q in queries], batch_size=64,
                                     progress=True),
            "test_q_y": np.asarray([same_emoji[q.id].rsplit("/", 1)[0] for q in queries])}


def emoji(encoder: Encoder, work: Path) -> dict[str, np.ndarray]:
    data = build_emoji(work / "emoji")
    files, y = emoji_train_files(data)
    x = encoder.encode([Image.open(f).convert("RGBA") for f in files], batch_size=64,
                       progress=True)
    val = np.isin(y, np.unique(y)[::10])
    return {"train_x": x[~val], "train_y": y[~val], "val_x": x[val], "val_y": y[val],
            **emoji_test(encoder, data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["fashion-mnist", "emoji"],
                        help="fashion-mnist, emoji, or fashion-mnist-ssl (self-supervised: "
                        "two augmented views of each training photo, no labels)")
    parser.add_argument("--train", type=int, default=6000, help="fashion-mnist train images")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args()
    encoder = create_encoder("efficientnet_lite0")
    torch.set_num_threads(2)
    rows = []
    for name in args.sets:
        start = time.perf_counter()
        self_supervised = name == "fashion-mnist-ssl"
        data = fashion(encoder, args.train, self_supervised) if name.startswith("fashion") \
            else emoji(encoder, args.out)
        embedded = time.perf_counter() - start
        config = HeadConfig(epochs=args.epochs, per_label=2 if name == "emoji" else 8)
        start = time.perf_counter()
        if self_supervised:
            head, history = train_head(data["view_a"], None, data["val_x"], data["val_y"],
                                       config=config, views=data["view_b"],
                                       on_epoch=lambda r: print(r, flush=True))
        else:
            head, history = train_head(data["train_x"], data["train_y"], data["val_x"],
                                       data["val_y"], config=config,
                                       on_epoch=lambda r: print(r, flush=True))
        trained = time.perf_counter() - start
        save_model(args.out / f"{name}-head", "efficientnet_lite0", head, history, config)
        plot_history(history, args.out / f"{name}-curve.png")

        def project(x: np.ndarray, head: torch.nn.Module = head) -> np.ndarray:
            with torch.no_grad():
                z = head(torch.from_numpy(x.astype(np.float32))).numpy()
            return z / np.linalg.norm(z, axis=1, keepdims=True)

        same = "db" not in data
        db, db_y = (data["test_q"], data["test_q_y"]) if same else (data["db"], data["db_y"])
        before = test_map(data["test_q"], data["test_q_y"], db, db_y, same)
        after = test_map(project(data["test_q"]), data["test_q_y"], project(db), db_y, same)
        rows.append(f"| {name} | {len(data['train_x'])} | {before:.3f} | {after:.3f} | "
                    f"{(after / before - 1) * 100:+.0f} % | {embedded:.0f} | {trained:.0f} |")
    print("\n| set | train vectors | test mAP frozen | test mAP head | relative | embed s "
          "| train s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
