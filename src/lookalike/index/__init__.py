"""Vector indexes behind one interface, chosen by a short spec string."""

from __future__ import annotations

from lookalike.index.base import IndexError_, VectorIndex
from lookalike.index.flat import FlatIndex

INDEX_SPECS = ("flat",)


def create_index(spec: str, dim: int) -> VectorIndex:
    """An empty index for `spec` (only `flat`, exact search, so far)."""
    if spec.strip().lower() == "flat":
        return FlatIndex(dim)
    raise IndexError_(f"unknown index spec {spec!r}; expected one of {', '.join(INDEX_SPECS)}")


__all__ = ["INDEX_SPECS", "FlatIndex", "IndexError_", "VectorIndex", "create_index"]
