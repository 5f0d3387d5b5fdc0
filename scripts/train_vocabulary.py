"""Train the visual vocabulary that lookalike ships (src/lookalike/vocabulary.npz).

    .venv/bin/python scripts/train_vocabulary.py [--words 8192] [--sample 400000]

From the photographs in Debian's wallpaper packages (`lookalike dataset photo-crops` says
which; their licences are in each package's copyright file): each photo is cut into tiles
of 640 px, each tile's SIFT keypoints described (`lookalike.local_features.describe`), a
random sample of the descriptors clustered by k-means. Only the centroids, a projection and
medians are shipped, no pixels.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.datasets.crops import wallpapers
from lookalike.images import decode
from lookalike.local_features import VOCABULARY, Vocabulary, describe

TILE = 640


def tiles(path: Path) -> list[Image.Image]:
    image = decode(path, max_pixels=40_000_000).image
    scale = TILE * 3 / min(image.size)  # three tiles high
    image = image.resize((round(image.width * scale), round(image.height * scale)),
                         Image.Resampling.LANCZOS)
    return [image.crop((x, y, x + TILE, y + TILE))
            for y in range(0, image.height - TILE + 1, TILE)
            for x in range(0, image.width - TILE + 1, TILE)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=8192)
    parser.add_argument("--sample", type=int, default=400_000)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parents[1] / "src/lookalike" / VOCABULARY)
    args = parser.parse_args()
    start = time.perf_counter()
    descriptors = [describe(tile).descriptors
                   for path in wallpapers().values() for tile in tiles(path)]
    pool = np.concatenate(descriptors)
    rng = np.random.default_rng(0)
    sample = pool[rng.choice(len(pool), min(args.sample, len(pool)), replace=False)]
    print(f"{len(descriptors)} tiles, {len(pool)} descriptors, {len(sample)} sampled "
          f"({time.perf_counter() - start:.0f} s)")
    Vocabulary.train(sample, args.words).save(args.out)
    print(f"{args.out}: {args.words} words ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
