"""Vector indexes behind one interface, chosen by a short spec string (see `index.spec`)."""

from __future__ import annotations

from pathlib import Path

from lookalike.index.base import INDEX_METRICS, IndexError_, IndexMetric, VectorIndex
from lookalike.index.flat import FlatIndex
from lookalike.index.registry import FAMILIES, create_index, load_single
from lookalike.index.segmented import SegmentedIndex
from lookalike.index.spec import IndexSpec, parse_spec
from lookalike.index.stored import StoredIndex


def load_index(path: str | Path, *, mmap: bool = True) -> VectorIndex:
    """Read an index folder: a folder of segments opens as a `SegmentedIndex`, one family's
    folder as that family's index (its vectors memory-mapped unless `mmap=False`)."""
    if (Path(path) / "segments.json").exists():
        return SegmentedIndex.load(Path(path))
    return load_single(path, mmap=mmap)


__all__ = ["FAMILIES", "INDEX_METRICS", "FlatIndex", "IndexError_", "IndexMetric", "IndexSpec",
           "SegmentedIndex", "StoredIndex", "VectorIndex", "create_index", "load_index",
           "parse_spec"]
