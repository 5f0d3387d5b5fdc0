"""Builders for the offline evaluation sets; each says how to get its source when missing.

- `digits`: scikit-learn's 1,797 handwritten digits (8x8, upscaled to 32x32). Grade 1 for the
  same digit. Database and queries are disjoint images.
- `fashion-mnist`: Zalando's product photos (28x28, MIT) from Debian's
  `dataset-fashion-mnist`. Database from the train split, queries from the test split.
  Grades: 5 same class; 2 same garment group; 0 otherwise. The groups: tops (T-shirt/top,
  Pullover, Coat, Shirt), footwear (Sandal, Sneaker, Ankle boot), and Trouser, Dress, Bag
  alone.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.datasets.layout import stratified_pick, write_set
from lookalike.errors import LookalikeError

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


BUILDERS: dict[str, Callable[..., Path]] = {
    "digits": build_digits,
    "fashion-mnist": build_fashion_mnist,
}
