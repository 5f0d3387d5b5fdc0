from __future__ import annotations

import itertools

import numpy as np
import pytest

from lookalike.errors import LookalikeError
from lookalike.regions import Regions, grid_boxes, parse_regions, proposal_boxes


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def test_proposals_start_at_the_hot_spot_and_barely_overlap() -> None:
    activations = np.zeros((7, 7))
    activations[5, 1] = 10.0  # bottom-left cell of a 700 x 350 image
    boxes = proposal_boxes(activations, (700, 350), 6)
    assert len(boxes) == 6
    x0, y0, x1, y1 = boxes[0]
    assert x0 <= 150 < x1 and y0 <= 275 < y1  # the first box holds the hot cell
    assert (x1 - x0, y1 - y0) == (175, 88)  # at the smallest scale, 25 % of each side
    assert all(_iou(a, b) <= 0.3 + 1e-9 for a, b in itertools.combinations(boxes, 2))
    assert all(0 <= b[0] < b[2] <= 700 and 0 <= b[1] < b[3] <= 350 for b in boxes)


def test_grid_and_specs() -> None:
    assert len(grid_boxes((300, 200), 3)) == 13
    assert parse_regions("none") is None
    assert parse_regions("grid") == Regions("grid", 3)
    assert str(parse_regions("Proposals")) == "proposals:8"
    assert parse_regions("proposals:12") == Regions("proposals", 12)
    assert parse_regions("grid@160") == Regions("grid", 3, 160)
    assert str(parse_regions("proposals:4@96")) == "proposals:4@96"
    for bad in ("grid:1", "grid:7", "proposals:0", "proposals:x", "boxes", "grid@", "grid@16",
                "grid@x"):
        with pytest.raises(LookalikeError, match="unknown regions spec"):
            parse_regions(bad)
