"""`copies`: a Copydays-style near-duplicate set: which images derive from one original?

Originals are 640 x 480 tiles of Debian's wallpaper photos (the same source as
`photo-crops`: a 3-row grid of 4:3 tiles, flat ones dropped), so the tiles of one wallpaper
are look-alikes that are not copies of each other. Wallpapers that are variants of one
picture (light and dark, recoloured) and patterns whose tiles repeat each other are left
out: their images would be copies that the truth does not know. Each original gets one copy of every
family below; distractors (other tiles) fill the set up to its size, half of them
transformed the same way, so that a transformation's marks alone say nothing.

| family             | what was done                                   | found as     |
|--------------------|-------------------------------------------------|--------------|
| `identical`        | the file copied                                 | `identical`  |
| `re-encoded`       | JPEG quality 30-75                              | `re-encoded` |
| `resized`          | half the size, JPEG quality 30-75               | `resized`    |
| `flipped`          | mirrored                                        | `flipped`    |
| `rotated`          | turned a quarter                                | `rotated`    |
| `edited`           | colours shifted, a caption written over it      | `edited`     |
| `crop80`           | 80 % of the area, colours shifted               | `cropped`    |
| `crop50-rot10`     | 50 % of the area, turned up to 10 degrees       | `cropped`    |
| `crop30-grey`      | 30 % of the area, greyscale                     | `cropped`    |
| `crop25-blur-text` | 25 % of the area, strongly blurred, a caption   | `cropped`    |

The truth is `groups.csv` (`image,group,family`, read by `lookalike.copy_truth`): images
of one group derive from one original (every pair of them is a copy pair); distractors have
an empty group.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from lookalike import verification
from lookalike.datasets.crops import WALLPAPER_DIRS, detail, wallpapers
from lookalike.datasets.edits import caption, colours, crop
from lookalike.images import decode

WIDTH, HEIGHT = 640, 480
ROWS = 3
MIN_DETAIL = 2.5  # as photo-crops: flat tiles (sky, gradients) nothing could tell apart
Transform = Callable[[Image.Image, np.random.Generator], Image.Image]


def _tiles(image: Image.Image) -> list[Image.Image]:
    """The photo's non-overlapping 4:3 tiles, 3 rows high, at 640 x 480, less flat ones."""
    height = image.height // ROWS
    width = height * 4 // 3
    tiles = [image.crop((c * width, r * height, (c + 1) * width, (r + 1) * height))
             .resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)
             for r in range(ROWS) for c in range(image.width // width)]
    return [tile for tile in tiles if detail(tile) >= MIN_DETAIL]


SAME_PICTURE_INLIERS = 20  # keypoints agreeing on one placement: one picture's variants


def _distinct_photos(photos: dict[str, Path]) -> list[list[Image.Image]]:
    """The tiles of each photo that is neither a variant of an earlier one nor a pattern."""
    kept: list[list[Image.Image]] = []
    seen: list[verification.Keypoints] = []
    for path in photos.values():
        image = decode(path, max_pixels=40_000_000).image.convert("RGB")
        small = image.copy()
        small.thumbnail((768, 768))
        points = verification.keypoints(small, 1500)
        if any(_same_picture(points, other) for other in seen):
            continue
        seen.append(points)
        tiles = _tiles(image)
        first = verification.keypoints(tiles[0]) if tiles else None
        if first is not None and any(_same_picture(first, verification.keypoints(tile))
                                     for tile in tiles[1:]):
            continue  # a pattern: its tiles repeat each other
        kept.append(tiles)
    return kept


def _same_picture(a: verification.Keypoints, b: verification.Keypoints) -> bool:
    match = verification.verify(a, b)
    return match is not None and match.inliers >= SAME_PICTURE_INLIERS


def _turned_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Half the area, turned up to 10 degrees; cut from a larger crop so no blank corner
    shows (the turn is a camera's, not a scanner's)."""
    angle = float(rng.uniform(-10, 10))
    wide = crop(image, 0.5 * 1.45, rng)
    turned = wide.rotate(angle, resample=Image.Resampling.BICUBIC)
    w, h = round(turned.width / 1.45 ** 0.5), round(turned.height / 1.45 ** 0.5)
    x, y = (turned.width - w) // 2, (turned.height - h) // 2
    return turned.crop((x, y, x + w, y + h))


FAMILIES: dict[str, Transform] = {
    "identical": lambda image, rng: image,  # written as the original's very bytes
    "re-encoded": lambda image, rng: image,  # the JPEG quality does it
    "resized": lambda image, rng: image.resize((image.width // 2, image.height // 2),
                                               Image.Resampling.LANCZOS),
    "flipped": lambda image, rng: ImageOps.mirror(image),
    "rotated": lambda image, rng: image.transpose(
        Image.Transpose.ROTATE_90 if rng.random() < 0.5 else Image.Transpose.ROTATE_270),
    "edited": lambda image, rng: caption(colours(image, rng), rng),
    "crop80": lambda image, rng: colours(crop(image, 0.8, rng), rng),
    "crop50-rot10": _turned_crop,
    "crop30-grey": lambda image, rng: ImageOps.grayscale(crop(image, 0.3, rng)).convert("RGB"),
    "crop25-blur-text": lambda image, rng: caption(crop(image, 0.25, rng).filter(
        ImageFilter.GaussianBlur(float(rng.uniform(2.5, 4)))), rng),
}
RELATION = {family: "cropped" if family.startswith("crop") else family for family in FAMILIES}
LOW_QUALITY = ("re-encoded", "resized")  # saved at JPEG quality 30-75; the rest at 90


def build_copies(out: Path, *, db_size: int = 2000, queries: int = 150, seed: int = 0,
                 folders: tuple[Path, ...] = WALLPAPER_DIRS) -> Path:
    """Write `queries` originals, each with one copy of every family, and distractors up to
    `db_size` images in all, under `out/database/`, with the truth in `out/groups.csv`."""
    photos = wallpapers(folders)
    rng = np.random.default_rng(seed)
    tiles = [tile for tiles in _distinct_photos(photos) for tile in tiles]
    originals = min(queries, len(tiles))
    distractors = min(len(tiles) - originals,
                      max(0, db_size - originals * (1 + len(FAMILIES))))
    picked = rng.permutation(len(tiles))[:originals + distractors].tolist()
    names = iter(f"{n:05d}.jpg" for n in rng.permutation(originals * (1 + len(FAMILIES))
                                                          + distractors).tolist())
    folder = out / "database"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rows: list[tuple[str, str, str]] = []

    def save(image: Image.Image, family: str) -> str:
        name = next(names)
        quality = int(rng.integers(30, 76)) if family in LOW_QUALITY else 90
        image.save(folder / name, quality=quality)
        return name

    families = list(FAMILIES)
    for n, index in enumerate(picked):
        tile = tiles[index]
        if n >= originals:  # a distractor: alone, half of them transformed
            family = str(rng.choice(families)) if rng.random() < 0.5 else "original"
            image = FAMILIES[family](tile, rng) if family != "original" else tile
            rows.append((save(image, family), "", f"distractor-{family}"))
            continue
        group = f"g{n:05d}"
        original = save(tile, "original")
        rows.append((original, group, "original"))
        for family, transform in FAMILIES.items():
            if family == "identical":
                name = next(names)
                shutil.copyfile(folder / original, folder / name)
            else:
                name = save(transform(tile, rng), family)
            rows.append((name, group, family))
    with (out / "groups.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("image", "group", "family"))
        writer.writerows(sorted(rows))
    return out
