from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lookalike.index import FlatIndex, IndexError_, create_index


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_equals_numpy_brute_force() -> None:
    rng = np.random.default_rng(1)
    data, queries = _unit(rng, 500, 32), _unit(rng, 20, 32)
    ids = rng.permutation(10_000)[:500]
    index = create_index("flat", 32)
    index.add(ids, data)
    scores, found = index.search(queries, 10)
    sims = queries @ data.T
    order = np.argsort(-sims, axis=1)[:, :10]
    np.testing.assert_array_equal(found, ids[order])
    np.testing.assert_allclose(scores, np.take_along_axis(sims, order, axis=1), rtol=1e-6)


def test_remove_save_load_and_padding(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    index = FlatIndex(8)
    index.add(np.arange(5), _unit(rng, 5, 8))
    index.remove(np.array([1, 3]))
    index.save(tmp_path / "i.npz")
    loaded = FlatIndex.load(tmp_path / "i.npz")
    scores, ids = loaded.search(_unit(rng, 1, 8), 5)
    assert sorted(ids[0, :3]) == [0, 2, 4]
    assert (ids[0, 3:] == -1).all() and np.isneginf(scores[0, 3:]).all()


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda i: i.add([0], np.ones((1, 4))), "shape"),
        (lambda i: i.add([0], np.full((1, 8), np.nan)), "NaN"),
        (lambda i: i.add([0, 0], np.ones((2, 8))), "unique"),
        (lambda i: i.search(np.ones((1, 8)), 0), "positive"),
    ],
)
def test_bad_input(action, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IndexError_, match=message):
        action(FlatIndex(8))


def test_unknown_spec() -> None:
    with pytest.raises(IndexError_, match=r"unknown index spec 'hnsw99'.*flat"):
        create_index("hnsw99", 8)
