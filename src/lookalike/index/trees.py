"""Tree families: Annoy's random-projection forest, and scikit-learn's KD-tree for low
dimensions. Neither can grow once built, so new rows are searched exactly until the next
rebuild (see `lookalike.index.stored`). Both are optional (`pip install lookalike[ann]`)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.index.spec import Number
from lookalike.index.stored import StoredIndex


def _need(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LookalikeError(f"this index needs {module.split('.')[0]!r}: "
                             "pip install 'lookalike[ann]'") from None


class AnnoyIndex(StoredIndex):
    """`trees` random-projection trees; a query visits `search_k` nodes (-1: trees x k)."""

    family = "annoy"
    build_options: ClassVar[dict[str, Number]] = {"trees": 50}
    search_options: ClassVar[dict[str, Number]] = {"search_k": -1}
    extendable = False
    _tree: Any = None

    def _min_rows(self) -> int:
        return 1

    def _annoy_metric(self) -> str:
        return {"cosine": "angular", "ip": "dot", "l2": "euclidean"}[self.metric]

    def _build(self, vectors: np.ndarray) -> None:
        annoy = _need("annoy")
        tree = annoy.AnnoyIndex(self.dim, self._annoy_metric())
        tree.set_seed(0)
        for row, vector in enumerate(vectors):
            tree.add_item(row, vector)
        tree.build(int(self.settings["trees"]), n_jobs=1)
        self._tree = tree

    def _candidates(self, queries: np.ndarray, fetch: int, params: dict[str, Number]
                    ) -> np.ndarray:
        out = np.full((queries.shape[0], fetch), -1, np.int64)
        search_k = int(params["search_k"])
        for i, query in enumerate(queries):
            found = self._tree.get_nns_by_vector(query, fetch, search_k)
            out[i, :len(found)] = found
        return out

    def _save_structure(self, folder: Path) -> None:
        self._tree.save(str(folder / "structure.annoy"))

    def _load_structure(self, folder: Path) -> bool:
        tree = _need("annoy").AnnoyIndex(self.dim, self._annoy_metric())
        try:
            tree.load(str(folder / "structure.annoy"))
        except OSError:
            return False
        self._tree = tree
        return int(tree.get_n_items()) == self._built

    def _structure_bytes(self) -> int:
        return self._built * (4 * self.dim + 16) * 2  # items plus about as much in trees


class KDTreeIndex(StoredIndex):
    """Exact KD-tree (Euclidean, so cosine or L2); it prunes well only in low dimensions
    (tens), where it beats brute force; at CNN dimensions use hnsw or ivf."""

    family = "kdtree"
    build_options: ClassVar[dict[str, Number]] = {"leaf": 40}
    extendable = False
    metrics: ClassVar[tuple[str, ...]] = ("cosine", "l2")
    _tree: Any = None

    def _min_rows(self) -> int:
        return 1

    def _build(self, vectors: np.ndarray) -> None:
        self._tree = _need("sklearn.neighbors").KDTree(np.asarray(vectors),
                                                leaf_size=int(self.settings["leaf"]))

    def _candidates(self, queries: np.ndarray, fetch: int, params: dict[str, Number]
                    ) -> np.ndarray:
        return self._tree.query(queries, k=fetch, return_distance=False).astype(np.int64)

    def _structure_bytes(self) -> int:
        return self._built * 8  # the tree's index array; nodes are few
