"""Vector indexes behind one interface, chosen by a short spec string (see `index.spec`)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from lookalike.index.base import INDEX_METRICS, IndexError_, IndexMetric, VectorIndex
from lookalike.index.flat import FlatIndex
from lookalike.index.segmented import SegmentedIndex
from lookalike.index.spec import IndexSpec, parse_spec
from lookalike.index.stored import StoredIndex

# family -> "module:Class", imported on first use so optional libraries stay optional
FAMILIES: dict[str, str] = {
    "flat": "lookalike.index.flat:FlatIndex",
    "kdtree": "lookalike.index.trees:KDTreeIndex",
    "annoy": "lookalike.index.trees:AnnoyIndex",
    "lsh": "lookalike.index.faiss_families:LSHIndex",
    "ivf": "lookalike.index.faiss_families:IVFIndex",
    "ivfpq": "lookalike.index.faiss_families:IVFPQIndex",
    "opq-ivfpq": "lookalike.index.faiss_families:OPQIVFPQIndex",
    "hnsw": "lookalike.index.faiss_families:HNSWIndex",
    "scann": "lookalike.index.scann_family:ScannIndex",
    "auto": "lookalike.index.auto:AutoIndex",
}


def _family(name: str) -> type:
    module, _, cls = FAMILIES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def create_index(spec: str | IndexSpec, dim: int, metric: IndexMetric = "cosine"
                 ) -> VectorIndex:
    """An empty index: `create_index("hnsw32", 256)`, `create_index("ivf1024,pq32:nprobe=8",
    256, "l2")`. Errors name what was expected."""
    parsed = parse_spec(spec)
    return _family(parsed.family)(dim, metric, parsed)


def load_index(path: str | Path, *, mmap: bool = True, segments: bool = True
               ) -> VectorIndex:
    """Read an index folder written by `save`; the stored vectors are memory-mapped unless
    `mmap=False`. A folder left half-swapped by a crash falls back to the previous one. A
    folder of segments opens as a `SegmentedIndex` (unless `segments=False`: one segment)."""
    path = Path(path)
    if segments and (path / "segments.json").exists():
        return SegmentedIndex.load(path)
    if not path.exists() and path.with_name(f".{path.name}.old").exists():
        path = path.with_name(f".{path.name}.old")
    try:
        meta = json.loads((path / "meta.json").read_text())
        index = create_index(meta["spec"], int(meta["dim"]), meta["metric"])
        index._restore(path, meta, mmap)  # type: ignore[attr-defined]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexError_(f"{path}: not a readable index ({exc})") from None
    return index


__all__ = ["FAMILIES", "INDEX_METRICS", "FlatIndex", "IndexError_", "IndexMetric", "IndexSpec",
           "SegmentedIndex", "StoredIndex", "VectorIndex", "create_index", "load_index",
           "parse_spec"]
