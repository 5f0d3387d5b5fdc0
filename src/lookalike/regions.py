"""Which sub-regions of each database image get their own vector, so that a crop query can
find the image that contains it (one global vector averages the detail away).

Specs: `none` (whole image only), `grid` (= `grid:3`), `grid:N` — square-ish windows on
an n x n grid with 50 % overlap for every n = 2..N. `grid:3` adds 4 + 9 = 13 regions an
image, so a collection holds 14 vectors an image: 14 x dim x 4 bytes (72 KB at 1280-d);
a million images need 72 GB as float32, which is where PQ compression (the ANN issue)
comes in.
"""

from __future__ import annotations

from collections.abc import Callable

from lookalike.errors import LookalikeError
from lookalike.images import Box

RegionFn = Callable[[tuple[int, int]], list[Box]]


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


def parse_regions(spec: str) -> RegionFn | None:
    """`none` -> None; `grid` / `grid:N` -> a function from image size to boxes."""
    text = spec.strip().lower()
    if text == "none":
        return None
    if text == "grid":
        text = "grid:3"
    name, _, arg = text.partition(":")
    if name == "grid" and arg.isdigit() and 2 <= int(arg) <= 6:
        levels = int(arg)
        return lambda size: grid_boxes(size, levels)
    raise LookalikeError(f"unknown regions spec {spec!r}; expected none, grid or grid:N "
                         "with N from 2 to 6")
