"""Fine-tuning mode on a CPU: test mAP of the frozen backbone vs its fine-tuned last groups.

    python benchmarks/finetune.py [--emoji 300] [--epochs 3] [--trainable last:2] [--lr 1e-4]

Trains on the Google and Twitter drawings of `--emoji` randomly chosen train emoji of the
emoji set (label = the emoji, never a test emoji; a tenth held out for validation), then
runs the set's test like benchmarks/train_head.py: Google drawings of test emoji query the
2,000 Twitter drawings, relevant = the same emoji. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from train_head import emoji_test, emoji_train_files, test_map

from lookalike import create_encoder
from lookalike.datasets.builders import build_emoji
from lookalike.train.finetune import FinetuneConfig
from lookalike.train.run import train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emoji", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--trainable", default="last:2")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = build_emoji(args.out / "emoji")
    files, labels = emoji_train_files(data)
    chosen = np.random.default_rng(0).permutation(np.unique(labels))[:args.emoji]
    keep = np.isin(labels, chosen)
    start = time.perf_counter()
    config = FinetuneConfig(epochs=args.epochs, trainable=args.trainable, per_label=2,
                            lr=args.lr)
    history = train_model([f for f, k in zip(files, keep, strict=True) if k], labels[keep],
                          args.out / "emoji-finetuned", mode="finetune", config=config)
    seconds = time.perf_counter() - start
    maps = []
    for model in ("efficientnet_lite0", str(args.out / "emoji-finetuned")):
        test = emoji_test(create_encoder(model), data)
        maps.append(test_map(test["test_q"], test["test_q_y"], test["db"], test["db_y"], False))
    best = max(history, key=lambda h: h["map"])
    print(f"\n{int(keep.sum())} training drawings, {args.trainable}, lr {args.lr}, best epoch "
          f"{best['epoch']} of {len(history) - 1}\n")
    print("| test mAP frozen | test mAP fine-tuned | relative | train s (incl. decoding) |")
    print("|---:|---:|---:|---:|")
    print(f"| {maps[0]:.3f} | {maps[1]:.3f} | {(maps[1] / maps[0] - 1) * 100:+.0f} % | "
          f"{seconds:.0f} |")


if __name__ == "__main__":
    main()
