"""Contract tests run over every index family, plus specs, updates, files and `auto`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lookalike.index import (
    FlatIndex,
    IndexError_,
    StoredIndex,
    create_index,
    load_index,
    parse_spec,
)

DIM = 32
# spec -> recall@10 floor against exact search on the clustered set below
FAMILIES = {
    "flat": 1.0,
    "kdtree": 1.0,
    "annoy:trees=20": 0.85,
    "lsh:bits=256": 0.85,
    "ivf16:nprobe=4": 0.9,
    "ivf16,pq8:nprobe=4,rerank=200": 0.85,
    "opq,ivf16,pq8:nprobe=4,rerank=200": 0.85,
    "hnsw16": 0.95,
    "scann": 0.9,
}


def _clustered(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, DIM))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(60, DIM))
    ids = rng.permutation(100_000)[:4000].astype(np.int64)
    return ids, _clustered(rng, 4000, centres), _clustered(rng, 100, centres)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([np.isin(f, t).mean() for f, t in zip(found, truth, strict=True)]))


@pytest.mark.parametrize("spec", list(FAMILIES))
def test_family_reaches_recall_floor_with_exact_scores(spec: str, data) -> None:  # type: ignore[no-untyped-def]
    ids, vectors, queries = data
    exact = create_index("flat", DIM)
    exact.add(ids, vectors)
    truth_scores, truth = exact.search(queries, 10)
    index = create_index(spec, DIM)
    index.add(ids, vectors)
    scores, found = index.search(queries, 10)
    assert _recall(found, truth) >= FAMILIES[spec]
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    by_id = dict(zip(ids.tolist(), unit, strict=True))
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    for row, (s, f) in enumerate(zip(scores, found, strict=True)):
        np.testing.assert_allclose(s, [q[row] @ by_id[i] for i in f], atol=1e-5)
    if FAMILIES[spec] == 1.0:  # exact families: exact scores too
        np.testing.assert_allclose(scores, truth_scores, atol=1e-5)


@pytest.mark.parametrize("spec", list(FAMILIES))
def test_updates_and_files_keep_results(spec: str, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ids, vectors, queries = data
    index = create_index(spec, DIM)
    index.add(ids[:3000], vectors[:3000])
    index.add(ids[3000:], vectors[3000:])  # incremental: extends, or pending until rebuilt
    gone = ids[::7]
    index.remove(gone)
    assert len(index) == len(ids) - len(gone)
    _, found = index.search(queries, 20)
    assert not np.isin(found, gone).any()
    index.save(tmp_path / "index")
    loaded = load_index(tmp_path / "index")
    _, again = loaded.search(queries, 20)
    assert loaded.spec == index.spec and len(loaded) == len(index)
    np.testing.assert_array_equal(again, found)
    loaded.add(gone[:5], vectors[::7][:5])  # a removed id can come back when re-added
    _, back = loaded.search(vectors[::7][:5], 1)
    assert back[:, 0].tolist() == gone[:5].tolist()


def test_tombstones_compact_and_rebuild(data) -> None:  # type: ignore[no-untyped-def]
    ids, vectors, queries = data
    index = create_index("hnsw16", DIM)
    assert isinstance(index, StoredIndex)
    index.add(ids, vectors)
    index.remove(ids[:900])
    assert index.describe()["rows"] == 4000  # under 25 % dead: tombstones only
    index.remove(ids[900:1100])
    info = index.describe()
    assert info["rows"] == info["vectors"] == info["in_structure"] == 2900  # compacted
    _, found = index.search(queries, 10)
    assert not np.isin(found, ids[:1100]).any()


def test_ivf_waits_for_enough_points_then_retrains_as_it_grows(data) -> None:  # type: ignore[no-untyped-def]
    ids, vectors, _ = data
    index = create_index("ivf16", DIM)
    assert isinstance(index, StoredIndex)
    index.add(ids[:300], vectors[:300])
    assert index.describe()["in_structure"] == 0  # under 39 points a cell: exact
    index.add(ids[300:700], vectors[300:700])
    assert index._trained == 700  # type: ignore[attr-defined]
    index.add(ids[700:], vectors[700:])
    # grown more than 4x: retrained, on a sample of 64 points a centroid
    assert index._trained == 64 * 16  # type: ignore[attr-defined]


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("spec", ["flat", "hnsw16", "ivf16:nprobe=16"])
def test_metrics_agree_with_brute_force(spec: str, metric: str, data) -> None:  # type: ignore[no-untyped-def]
    ids, vectors, queries = data
    index = create_index(spec, DIM, metric)  # type: ignore[arg-type]
    index.add(ids, vectors)
    scores, found = index.search(queries, 5)
    if metric == "ip":
        sims = queries @ vectors.T
    else:
        sims = -np.linalg.norm(queries[:, None, :] - vectors[None, :, :], axis=2)
    order = np.argsort(-sims, axis=1)[:, :5]
    assert _recall(found, ids[order]) >= 0.95
    np.testing.assert_allclose(scores[:, 0], np.take_along_axis(sims, order, 1)[:, 0],
                               rtol=1e-4, atol=1e-4)


def test_auto_measures_and_keeps_its_choice(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ids, vectors, queries = data
    index = create_index("auto:recall=0.9", DIM)
    index.add(ids, vectors)
    tuning = index.describe()["tuning"]
    assert tuning["measured_on"] == 4000 and tuning["met_target"]
    chosen = [p for p in tuning["points"] if p["recall"] >= 0.9]
    assert chosen and parse_spec(tuning["chosen"]).family in {"flat", "hnsw", "ivf", "ivfpq"}
    index.save(tmp_path / "auto")
    loaded = load_index(tmp_path / "auto")
    assert loaded.spec == "auto:recall=0.9"
    assert loaded.describe()["chosen"] == tuning["chosen"]
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])


@pytest.mark.parametrize("spec", ["flat", "ivf1024,pq32", "opq,ivf64,pq8:nprobe=4",
                                  "hnsw32:ef=128,efc=80", "annoy:trees=50", "lsh:bits=512",
                                  "scann", "auto:recall=0.95,k=10", "kdtree:leaf=20"])
def test_spec_round_trip(spec: str) -> None:
    assert str(parse_spec(spec)) == spec
    assert parse_spec(str(parse_spec(spec))) == parse_spec(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hnsw", "unknown index spec 'hnsw'; expected flat"),
        ("ivf10,hnsw8", "unknown index spec"),
        ("ivf64:nprobe", "not name=value"),
        ("ivf64:nprobe=x", "not a number"),
        ("ivf64:ef=8", "unknown option.*ef.*ivf takes nprobe"),
        ("ivf16,pq7", "pq7 must divide the dimension 32"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(IndexError_, match=message):
        create_index(spec, DIM)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda i: i.add([0], np.ones((1, 4))), "shape"),
        (lambda i: i.add([0], np.full((1, 8), np.nan)), "NaN"),
        (lambda i: i.add([0], np.full((1, 8), np.inf)), "infinite"),
        (lambda i: i.add([0, 0], np.ones((2, 8))), "unique"),
        (lambda i: i.search(np.ones((1, 8)), 1), "empty"),
    ],
)
def test_bad_input(action, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IndexError_, match=message):
        action(FlatIndex(8))


def test_bad_search_arguments() -> None:
    index = create_index("hnsw8", 8)
    index.add(np.arange(3), np.eye(3, 8, dtype=np.float32))
    with pytest.raises(IndexError_, match="positive"):
        index.search(np.ones((1, 8)), 0)
    with pytest.raises(IndexError_, match="k=4 is more than the 3 vectors"):
        index.search(np.ones((1, 8)), 4)
    with pytest.raises(IndexError_, match=r"unknown search option.*nprobe.*hnsw takes ef"):
        index.search(np.ones((1, 8)), 1, nprobe=3)
    with pytest.raises(IndexError_, match="already in the index"):
        index.add(np.array([1]), np.ones((1, 8)))
    with pytest.raises(IndexError_, match="metric 'ip' is not supported"):
        create_index("kdtree", 8, "ip")


def test_crash_while_saving_keeps_last_good_index(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    index = create_index("hnsw8", 8)
    index.add(np.arange(3), np.eye(3, 8, dtype=np.float32))
    index.save(tmp_path / "ix")
    index.add(np.array([9]), np.ones((1, 8)))

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("lookalike.index.stored.np.save", crash)
    with pytest.raises(OSError):
        index.save(tmp_path / "ix")
    monkeypatch.undo()
    assert len(load_index(tmp_path / "ix")) == 3
    with pytest.raises(IndexError_, match="not a readable index"):
        load_index(tmp_path / "missing")
