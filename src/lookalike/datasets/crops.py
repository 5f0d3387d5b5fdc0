"""`photo-crops`: does a detail, or a doctored part of a photo, find the photo it came from?

The database is real photographs cut into square tiles: the wallpapers that Debian's desktop
packages ship (photos and artwork at 2-6k pixels; licences in each package's copyright file),
each cut into a 4-row grid of non-overlapping tiles saved at 512 px (flat tiles dropped), so
one wallpaper gives up to 28 database images that share its colours and style (hard
negatives for each other).
For each of `queries` sampled tiles, seven queries:

- `crop15_`, `crop25_`, `crop40_`, `crop60_`: a square crop of 15/25/40/60 % of the side,
  saved as its own JPEG;
- `box25_`: the database tile itself with a crop box of 25 % of the side;
- `copy_`: a partial copy: a 30-60 % crop, rotated up to 20 degrees, brightness x0.8-1.2,
  scaled x0.6-1, JPEG quality 30-60;
- `whole_`: the whole tile, scaled to 384 px, JPEG quality 50;
- `crop10_`: a square crop of 10 % of the side (51 px), a detail;
- `edited-blur_`, `edited-text_`, `edited-grey_`, `edited-colour_` (one of them a tile): an
  edited partial copy, a square crop of 25-30 % of the side, strongly blurred, captioned,
  turned grey or strongly recoloured.

The last two kinds come from a generator of their own, so that the others are the same as
in sets built before they were added.

Grades: 5 for the source tile, 1 for the other tiles of the same wallpaper.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from lookalike.datasets.edits import caption, colours
from lookalike.errors import LookalikeError
from lookalike.images import IMAGE_SUFFIXES, decode

WALLPAPER_DIRS = (Path("/usr/share/backgrounds"), Path("/usr/share/wallpapers"))
WALLPAPER_PACKAGES = ("plasma-workspace-wallpapers gnome-backgrounds mate-backgrounds "
                      "ukui-wallpapers lomiri-wallpapers-16.04 lomiri-wallpapers-20.04")
TILE = 512
ROWS = 4
MIN_DETAIL = 2.5  # mean grey-level step between neighbouring pixels, at 128 px
CROP_SCALES = (0.15, 0.25, 0.40, 0.60)
_VARIANT = re.compile(r"(_\d+x\d+|-[dl]|_dark|_light)$")


def find_photos(folders: tuple[Path, ...] = WALLPAPER_DIRS, min_side: int = 1000
                ) -> dict[str, Path]:
    """One file per picture (the largest of its sizes and light/dark variants), keyed by
    a short name, for every image at least `min_side` pixels on its short side."""
    best: dict[str, tuple[int, Path]] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("screenshot"):
                continue
            # KDE keeps each wallpaper's sizes in NAME/contents/images*/WxH.ext
            owner = path.parents[2].name if path.parent.name.startswith("images") else path.stem
            key = _VARIANT.sub("", re.sub(r"\W+", "_", owner)).lower()
            try:
                with Image.open(path) as img:
                    pixels = min(img.size) if min(img.size) >= min_side else 0
                    area = img.size[0] * img.size[1] if pixels else 0
            except OSError:
                continue
            if area and area > best.get(key, (0, path))[0]:
                best[key] = (area, path)
    return {key: path for key, (_, path) in sorted(best.items())}


def detail(tile: Image.Image) -> float:
    """Mean grey-level step between neighbouring pixels at 128 px: low for sky, gradients
    and blur, which nothing tells apart."""
    grey = np.asarray(tile.convert("L").resize((128, 128)), np.float32)
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


def _tiles(path: Path) -> list[Image.Image]:
    """The photo's non-overlapping square tiles, 4 rows high, each resized to 512 px, less
    the flat ones (sky, gradients, transparency), which no method could tell apart."""
    image = decode(path, max_pixels=40_000_000).image
    side = min(image.size) // ROWS
    cols, rows = image.width // side, image.height // side
    tiles = [image.crop((c * side, r * side, (c + 1) * side, (r + 1) * side))
             .resize((TILE, TILE), Image.Resampling.LANCZOS)
             for r in range(rows) for c in range(cols)]
    return [tile for tile in tiles if detail(tile) >= MIN_DETAIL]


def _square(rng: np.random.Generator, scale: float) -> tuple[int, int, int, int]:
    side = round(scale * TILE)
    x, y = (int(v) for v in rng.integers(0, TILE - side + 1, size=2))
    return x, y, x + side, y + side


def _partial_copy(tile: Image.Image, rng: np.random.Generator) -> Image.Image:
    copy = tile.crop(_square(rng, float(rng.uniform(0.3, 0.6))))
    copy = copy.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR)
    pixels = np.asarray(copy, np.float32) * float(rng.uniform(0.8, 1.2))
    copy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    scale = float(rng.uniform(0.6, 1.0))
    return copy.resize((max(16, round(copy.width * scale)),) * 2, Image.Resampling.BILINEAR)


EDITS = ("blur", "text", "grey", "colour")


def _edited_copy(tile: Image.Image, rng: np.random.Generator) -> tuple[str, Image.Image]:
    """A partial copy (25-30 % of the side) with one heavy edit, and the edit's name."""
    part = tile.crop(_square(rng, float(rng.uniform(0.25, 0.30))))
    edit = EDITS[int(rng.integers(len(EDITS)))]
    if edit == "blur":
        return edit, part.filter(ImageFilter.GaussianBlur(float(rng.uniform(2.0, 3.0))))
    if edit == "text":
        return edit, caption(part, rng)
    if edit == "grey":
        return edit, ImageOps.grayscale(part).convert("RGB")
    return edit, colours(part, rng, strength=0.4)


def wallpapers(folders: tuple[Path, ...] = WALLPAPER_DIRS) -> dict[str, Path]:
    """`find_photos`, or an error saying how to install them when there are too few."""
    photos = find_photos(folders)
    if len(photos) < 2:
        raise LookalikeError(
            f"{', '.join(map(str, folders))}: fewer than 2 large photos found; install "
            f"Debian's wallpapers with: apt-get install {WALLPAPER_PACKAGES}")
    return photos


def build_photo_crops(out: Path, *, db_size: int = 2000, queries: int = 150, seed: int = 0,
                      folders: tuple[Path, ...] = WALLPAPER_DIRS) -> Path:
    photos = wallpapers(folders)
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng([seed, 1])  # for the kinds added later (crop10, edited)
    tiles: list[tuple[str, str, Image.Image]] = []  # (doc id, photo, pixels)
    for key, path in photos.items():
        tiles += [(f"{key}/{n:02d}.jpg", key, tile) for n, tile in enumerate(_tiles(path))]
    keep = sorted(rng.permutation(len(tiles))[:db_size].tolist())
    tiles = [tiles[i] for i in keep]
    for doc, _, tile in tiles:
        (out / "database" / doc).parent.mkdir(parents=True, exist_ok=True)
        tile.save(out / "database" / doc, quality=90)
    by_photo: dict[str, list[str]] = {}
    for doc, photo, _ in tiles:
        by_photo.setdefault(photo, []).append(doc)

    (out / "queries").mkdir(parents=True, exist_ok=True)
    with (out / "queries.jsonl").open("w") as qfile, (out / "qrels.txt").open("w") as qrels:
        for n in sorted(rng.permutation(len(tiles))[:queries].tolist()):
            doc, photo, tile = tiles[n]
            made: list[tuple[str, Image.Image | None, list[int] | None]] = [
                (f"crop{round(s * 100)}", tile.crop(_square(rng, s)), None) for s in CROP_SCALES]
            made.append(("box25", None, list(_square(rng, 0.25))))
            made.append(("copy", _partial_copy(tile, rng), None))
            made.append(("whole", tile.resize((384, 384), Image.Resampling.BILINEAR), None))
            made.append(("crop10", tile.crop(_square(extra, 0.10)), None))
            edit, edited = _edited_copy(tile, extra)
            made.append((f"edited-{edit}", edited, None))
            for kind, pixels, box in made:
                qid = f"{kind}_{n:05d}"
                if pixels is None:
                    image = f"database/{doc}"
                else:
                    image = f"queries/{qid}.jpg"
                    quality = {"copy": int(rng.integers(30, 61)), "whole": 50}.get(kind, 90)
                    pixels.save(out / image, quality=quality)
                qfile.write(json.dumps({"id": qid, "image": image, "crop": box}) + "\n")
                qrels.writelines(f"{qid} 0 {other} {5 if other == doc else 1}\n"
                                 for other in by_photo[photo])
    return out
