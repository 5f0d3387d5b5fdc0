"""The index families by name: `create_index` from a spec, `load_single` from a folder."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from lookalike.index.base import IndexError_, IndexMetric, VectorIndex
from lookalike.index.spec import IndexSpec, parse_spec

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


def load_single(path: str | Path, *, mmap: bool = True) -> VectorIndex:
    """Read one family's index folder written by its `save`; the stored vectors are
    memory-mapped unless `mmap=False`. A folder left half-swapped by a crash falls back to
    the previous one."""
    path = Path(path)
    if not path.exists() and path.with_name(f".{path.name}.old").exists():
        path = path.with_name(f".{path.name}.old")
    try:
        meta = json.loads((path / "meta.json").read_text())
        index = create_index(meta["spec"], int(meta["dim"]), meta["metric"])
        index._restore(path, meta, mmap)  # type: ignore[attr-defined]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexError_(f"{path}: not a readable index ({exc})") from None
    return index
