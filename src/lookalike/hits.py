"""A search result: what every search entry point returns and the run files record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lookalike.images import Box


@dataclass(frozen=True)
class Hit:
    """One result: an indexed image, its score (higher is more similar) and the box of the
    vector that matched (the whole image unless regions are indexed)."""

    rank: int
    id: str
    path: str
    score: float
    box: Box
    grade: float | None = None  # calibrated expected grade 0-5, once calibrated
    p_relevant: tuple[float, ...] | None = None  # P(grade >= g), g = 1..5
    inliers: int | None = None  # keypoint matches that verified it (search `verify`)
    pixel_error: float | None = None  # or the RMS difference where the query's pixels match

    def to_dict(self) -> dict[str, Any]:
        out = {"rank": self.rank, "id": self.id, "path": self.path, "score": self.score,
               "box": list(self.box)}
        if self.inliers is not None:
            out["inliers"] = self.inliers
        if self.pixel_error is not None:
            out["pixel_error"] = round(self.pixel_error, 2)
        if self.grade is not None:
            out["grade"] = round(self.grade, 4)
            out["p_relevant"] = [round(p, 4) for p in self.p_relevant or ()]
        return out
