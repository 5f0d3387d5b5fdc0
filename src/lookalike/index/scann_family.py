"""ScaNN (Google): a k-means tree partition, anisotropic quantisation scoring, exact
re-ordering. Optional: `pip install 'lookalike[scann]'`. It cannot grow in place here, so new
rows are searched exactly until the next rebuild (see `lookalike.index.stored`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.index.spec import Number
from lookalike.index.stored import StoredIndex


def _scann() -> Any:
    try:
        from scann import scann_ops_pybind
    except ImportError:
        raise LookalikeError("the scann index needs the 'scann' package: "
                             "pip install 'lookalike[scann]'") from None
    return scann_ops_pybind


_HERE = "@STRUCTURE_DIR@/"


class ScannIndex(StoredIndex):
    """`leaves` partitions (default ~sqrt(n)); `leaves_to_search` of them scanned with
    quantised scores, the best `rerank` re-ordered exactly."""

    family = "scann"
    build_options: ClassVar[dict[str, Number]] = {"leaves": 0}
    search_options: ClassVar[dict[str, Number]] = {"leaves_to_search": 0, "rerank": 100}
    extendable = False
    metrics: ClassVar[tuple[str, ...]] = ("cosine", "ip", "l2")
    _searcher: Any = None

    def _min_rows(self) -> int:
        return 1000

    def _leaves(self, rows: int) -> int:
        return int(self.settings["leaves"]) or max(2, int(math.sqrt(rows)))

    def _build(self, vectors: np.ndarray) -> None:
        distance = "squared_l2" if self.metric == "l2" else "dot_product"
        leaves = self._leaves(vectors.shape[0])
        self._searcher = (
            _scann().builder(np.ascontiguousarray(vectors, np.float32), 10, distance)
            .tree(num_leaves=leaves, num_leaves_to_search=max(1, leaves // 10),
                  training_sample_size=min(vectors.shape[0], 100_000))
            .score_ah(2, anisotropic_quantization_threshold=0.2)
            .reorder(100).build())

    def _candidates(self, queries: np.ndarray, fetch: int, params: dict[str, Number]
                    ) -> np.ndarray:
        leaves = self._leaves(self._built)
        to_search = int(params["leaves_to_search"]) or max(1, leaves // 10)
        rows, _ = self._searcher.search_batched(
            queries, final_num_neighbors=fetch, leaves_to_search=min(to_search, leaves),
            pre_reorder_num_neighbors=max(fetch, int(params["rerank"])))
        return np.asarray(rows, np.int64)

    def _shortlist(self, k: int, params: dict[str, Number]) -> int:
        return k  # ScaNN re-orders its own shortlist

    def _save_structure(self, folder: Path) -> None:
        """ScaNN writes absolute paths into its assets file; they are made relative to the
        folder, which is renamed after writing."""
        where = folder / "structure.scann"
        where.mkdir()
        self._searcher.serialize(str(where))
        assets = where / "scann_assets.pbtxt"
        assets.write_text(assets.read_text().replace(f"{where}/", _HERE))

    def _load_structure(self, folder: Path) -> bool:
        where = folder / "structure.scann"
        try:
            assets = (where / "scann_assets.pbtxt").read_text().replace(_HERE, f"{where}/")
            from scann.scann_ops.py import scann_ops_pybind as ops

            self._searcher = ops.ScannSearcher(ops.scann_pybind.ScannNumpy(str(where), assets),
                                               None)
        except (OSError, RuntimeError, ValueError):
            return False
        return True

    def _structure_bytes(self) -> int:
        return self._built * (self.dim // 2 + 4 * self.dim)  # AH codes plus re-order data
