"""Builders for the offline evaluation sets; each says how to get its source when missing.

- `emoji`: the same emoji drawn by Google (queries, Apache-2.0) and Twitter (database,
  CC-BY-4.0), from the npm packages emoji-datasource-google / -twitter (metadata:
  emoji-datasource, MIT). Grades: 5 same emoji, 4 skin-tone variant, 3 same subcategory,
  1 same category.
- `digits`: scikit-learn's 1,797 handwritten digits (8x8, upscaled to 32x32). Grade 1 for the
  same digit. Database and queries are disjoint images.
- `fashion-mnist`: Zalando's product photos (28x28, MIT) from Debian's
  `dataset-fashion-mnist`. Database from the train split, queries from the test split.
  Grades: 5 same class; 2 same garment group; 0 otherwise. The groups: tops (T-shirt/top,
  Pullover, Coat, Shirt), footwear (Sandal, Sneaker, Ankle boot), and Trouser, Dress, Bag
  alone.
- `photo-crops`: crops and partial copies of tiles of Debian's wallpaper photos, to find
  their source tile (see `lookalike.datasets.crops`).
- `copies`: originals, their copies of ten kinds and distractors, for `duplicates` (see
  `lookalike.datasets.copies`).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.datasets.copies import build_copies
from lookalike.datasets.crops import build_photo_crops
from lookalike.datasets.layout import stratified_pick, write_set
from lookalike.errors import LookalikeError
from lookalike.images import to_rgb

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle_boot"]
FASHION_GROUPS = {"tshirt": "tops", "pullover": "tops", "coat": "tops", "shirt": "tops",
                  "sandal": "footwear", "sneaker": "footwear", "ankle_boot": "footwear",
                  "trouser": "trouser", "dress": "dress", "bag": "bag"}


def fashion_grade(query: str, doc: str) -> int:
    if query == doc:
        return 5
    return 2 if FASHION_GROUPS[query] == FASHION_GROUPS[doc] else 0


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian header, then uint8 data."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def build_fashion_mnist(out: Path, *, db_size: int = 2000, queries: int = 200,
                        seed: int = 0) -> Path:
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        raise LookalikeError(f"{FASHION_DIR}: Fashion-MNIST not found; install it with: "
                             "apt-get install dataset-fashion-mnist")
    rng = np.random.default_rng(seed)
    sets = []
    for split, count in (("train", db_size), ("t10k", queries)):
        images = _read_idx(FASHION_DIR / f"{split}-images-idx3-ubyte.gz")
        labels = _read_idx(FASHION_DIR / f"{split}-labels-idx1-ubyte.gz")
        sets.append([(FASHION_CLASSES[labels[i]], images[i])
                     for i in stratified_pick(labels, count, rng)])
    return write_set(out, sets[0], sets[1], fashion_grade)


def build_digits(out: Path, *, db_size: int = 1500, queries: int = 200, seed: int = 0
                 ) -> Path:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise LookalikeError("the digits set comes from scikit-learn; install it with: "
                             "pip install scikit-learn") from None
    digits = load_digits()
    pixels = (digits.images * (255 / 16)).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(p).resize((32, 32), Image.Resampling.BILINEAR))
                    for p in pixels])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(big))
    query_idx = order[:queries]
    db_idx = order[queries:queries + db_size]
    def label(i: int) -> str:
        return str(digits.target[i])
    return write_set(out, [(label(i), big[i]) for i in db_idx],
                     [(label(i), big[i]) for i in query_idx],
                     lambda q, d: int(q == d))


EMOJI_PACKAGES = "emoji-datasource@16 emoji-datasource-google@16 emoji-datasource-twitter@16"


def emoji_dir() -> Path:
    """Where the emoji npm packages are looked for: `$LOOKALIKE_EMOJI_DIR`, else
    `~/.cache/lookalike/emoji` (an npm prefix holding node_modules/)."""
    env = os.environ.get("LOOKALIKE_EMOJI_DIR")
    return Path(env) if env else Path.home() / ".cache" / "lookalike" / "emoji"


def emoji_grade(query: str, doc: str) -> int:
    """Labels are `category/subcategory/base/unified`: 5 the same emoji, 4 another skin tone
    of it, 3 the same subcategory, 1 the same category."""
    q, d = query.split("/"), doc.split("/")
    for depth, grade in ((4, 5), (3, 4), (2, 3), (1, 1)):
        if q[:depth] == d[:depth]:
            return grade
    return 0


def build_emoji(out: Path, *, db_size: int = 2000, queries: int = 200, seed: int = 0) -> Path:
    """Google's drawing of an emoji queries Twitter's drawings (instance-level matches across
    vendors). Queries come from the `test` emoji of a seeded 80/20 split by base emoji
    (`splits.json`), so training on `train` never sees them."""
    root = emoji_dir() / "node_modules"
    if not (root / "emoji-datasource" / "emoji.json").is_file():
        raise LookalikeError(f"{root}: emoji images not found; install them with: npm install "
                             f"--prefix {emoji_dir()} {EMOJI_PACKAGES}")
    entries: list[tuple[str, str]] = []  # (label, image file name)
    for emoji in json.loads((root / "emoji-datasource" / "emoji.json").read_text()):
        if not (emoji.get("has_img_google") and emoji.get("has_img_twitter")):
            continue
        base = emoji["unified"].lower()
        prefix = "/".join(_slug(emoji[k]) for k in ("category", "subcategory"))
        entries.append((f"{prefix}/{base}/{base}", emoji["image"]))
        for variant in (emoji.get("skin_variations") or {}).values():
            if variant.get("has_img_google") and variant.get("has_img_twitter"):
                entries.append((f"{prefix}/{base}/{variant['unified'].lower()}",
                                variant["image"]))
    rng = np.random.default_rng(seed)
    bases = sorted({label.rsplit("/", 1)[0] for label, _ in entries})
    test = set(rng.permutation(bases)[: len(bases) // 5].tolist())
    (out).mkdir(parents=True, exist_ok=True)
    (out / "splits.json").write_text(json.dumps(
        {"test": sorted(test), "train": sorted(set(bases) - test)}, indent=1))
    candidates = [e for e in entries if e[0].rsplit("/", 1)[0] in test]
    picked = [candidates[i] for i in rng.permutation(len(candidates))[:queries]]
    rest = [e for e in entries if e not in picked]
    database = picked + [rest[i] for i in rng.permutation(len(rest))[: max(0, db_size -
                                                                          len(picked))]]

    def pixels(vendor: str, name: str) -> np.ndarray:
        folder = root / f"emoji-datasource-{vendor}" / "img" / vendor / "64"
        return np.asarray(to_rgb(Image.open(folder / name)))

    return write_set(out, [(label, pixels("twitter", name)) for label, name in database],
                     [(label, pixels("google", name)) for label, name in picked], emoji_grade)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


BUILDERS: dict[str, Callable[..., Path]] = {
    "copies": build_copies,
    "digits": build_digits,
    "emoji": build_emoji,
    "fashion-mnist": build_fashion_mnist,
    "photo-crops": build_photo_crops,
}
