"""Which sub-regions of an image get their own vector, so that a crop query can find the
image that contains it (one global vector averages the detail away).

Specs (`lookalike index --regions SPEC`):

- `none`: the whole image only.
- `grid` (= `grid:3`), `grid:N`: for every n = 2..N, an n x n grid of windows of 2/(n+1) of
  each side at 50 % overlap. `grid:3` adds 4 + 9 = 13 regions an image.
- `proposals` (= `proposals:8`), `proposals:N`: the N windows (25-70 % of the side) where
  the backbone's own last feature map is most active relative to the image's mean, picked
  greedily with at most 30 % overlap (IoU) between any two: details the network finds
  salient, at the scales crops are taken at, for N extra vectors an image.

A spec may end in `@PIXELS` (`grid@160`): the regions are then embedded at that input size
instead of the model's own, for (PIXELS / model size)^2 of the compute (a 3x3 grid at 160 px
for a 224 px model: 7.8 x the time of whole images only, against 13.2 x, measured). The query is
then embedded at both sizes, each vector matched with the vectors of its own size.

Every region is embedded from its own crop of the decoded image (a region pooled from the
global feature map was measured and found far weaker: see benchmarks/RESULTS.md). Memory:
(1 + regions) x dim x 4 bytes an image as float32 (72 KB at 1280-d for `grid:3`); a million
images need 72 GB, which is where PQ codes (`--index ivf4096,pq64`, 40 bytes a vector)
come in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.images import Box

PROPOSAL_SCALES = (0.25, 0.35, 0.5, 0.7)
PROPOSAL_MAX_IOU = 0.3


@dataclass(frozen=True)
class Regions:
    """A parsed regions spec: `kind` is grid or proposals, `count` the grid's levels or the
    number of proposals, `size` the input size regions are embedded at (None: the model's)."""

    kind: str
    count: int
    size: int | None = None

    @property
    def discount(self) -> float:
        """How much lower a region's match counts than a whole image's (see
        `Collection.region_discount`): the smallest that kept whole-image queries' mAP
        within 1 % of indexing no regions, measured on the emoji set (benchmarks/RESULTS.md).
        Proposals are smaller windows, which match more unrelated whole queries."""
        return 0.06 if self.kind == "grid" else 0.1

    @property
    def needs_activations(self) -> bool:
        """Proposals are chosen from the backbone's activation map of the whole image."""
        return self.kind == "proposals"

    def boxes(self, size: tuple[int, int], activations: np.ndarray | None = None
              ) -> list[Box]:
        if self.kind == "grid":
            return grid_boxes(size, self.count)
        if activations is None:
            raise ValueError("proposals need the image's activation map")
        return proposal_boxes(activations, size, self.count)

    def __str__(self) -> str:
        return f"{self.kind}:{self.count}" + (f"@{self.size}" if self.size else "")


def grid_boxes(size: tuple[int, int], levels: int = 3) -> list[Box]:
    """For n = 2..levels, n x n windows of 2/(n+1) of each side at half-window strides."""
    width, height = size
    boxes: list[Box] = []
    for n in range(2, levels + 1):
        for row in range(n):
            for col in range(n):
                x0, x1 = (col * width) // (n + 1), ((col + 2) * width) // (n + 1)
                y0, y1 = (row * height) // (n + 1), ((row + 2) * height) // (n + 1)
                if x1 > x0 and y1 > y0:
                    boxes.append((x0, y0, x1, y1))
    return boxes


def _candidates() -> np.ndarray:
    """Windows as fractions of the image (x0, y0, x1, y1), at every scale on a half-window
    stride."""
    out = []
    for scale in PROPOSAL_SCALES:
        starts = np.arange(0.0, 1.0 - scale + 1e-9, scale / 2)
        if starts[-1] < 1.0 - scale - 1e-9:
            starts = np.append(starts, 1.0 - scale)
        out += [(x, y, x + scale, y + scale) for y in starts for x in starts]
    return np.asarray(out)


def _coverage(lo: np.ndarray, hi: np.ndarray, cells: int) -> np.ndarray:
    """(windows, cells): the fraction of each map cell inside each window's [lo, hi)."""
    edges = np.arange(cells + 1) / cells
    inside = np.minimum(hi[:, None], edges[None, 1:]) - np.maximum(lo[:, None], edges[None, :-1])
    return np.clip(inside, 0.0, None) * cells


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    width = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0,
                     None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (area + areas - inter)


def proposal_boxes(activations: np.ndarray, size: tuple[int, int], count: int) -> list[Box]:
    """The `count` candidate windows with the highest mean activation, greedily, skipping
    any that overlaps an already chosen one by more than `PROPOSAL_MAX_IOU`."""
    saliency = np.clip(np.asarray(activations, np.float64), 0.0, None)
    rows, cols = saliency.shape
    windows = _candidates()
    wx = _coverage(windows[:, 0], windows[:, 2], cols)
    wy = _coverage(windows[:, 1], windows[:, 3], rows)
    scores = np.einsum("wi,ij,wj->w", wy, saliency, wx) / (wy.sum(1) * wx.sum(1))
    chosen: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if not chosen or _iou(windows[i], windows[chosen]).max() <= PROPOSAL_MAX_IOU:
            chosen.append(int(i))
            if len(chosen) == count:
                break
    width, height = size
    boxes = []
    for x0, y0, x1, y1 in windows[chosen]:
        box = (int(x0 * width), int(y0 * height), max(int(x0 * width) + 1, round(x1 * width)),
               max(int(y0 * height) + 1, round(y1 * height)))
        boxes.append(box)
    return boxes


def parse_regions(spec: str) -> Regions | None:
    """`none` -> None; `grid[:N]` (N from 2 to 6) or `proposals[:N]` (N from 1 to 32), each
    optionally `@PIXELS` (32 to 1024)."""
    text = spec.strip().lower()
    if text == "none":
        return None
    text, at, pixels = text.partition("@")
    name, _, arg = text.partition(":")
    default = {"grid": 3, "proposals": 8}
    if name in default and re.fullmatch(r"[0-9]*", arg) and (  # ASCII: "²".isdigit() is True
            not at or re.fullmatch(r"[0-9]+", pixels)):
        count = int(arg) if arg else default[name]
        size = int(pixels) if pixels else None
        if ((name == "grid" and 2 <= count <= 6) or (name == "proposals" and 1 <= count <= 32)
                ) and (size is None or 32 <= size <= 1024):
            return Regions(name, count, size)
    raise LookalikeError(f"unknown regions spec {spec!r}; expected none, grid:N with N from 2 "
                         "to 6, or proposals:N with N from 1 to 32, optionally followed by "
                         "@PIXELS (32 to 1024)")
