from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lookalike import LookalikeError
from lookalike.datasets import build_dataset
from lookalike.datasets.builders import FASHION_DIR, fashion_grade
from lookalike.datasets.layout import write_set
from lookalike.trec import read_qrels, read_queries


def test_write_set_layout(tmp_path: Path) -> None:
    img = np.zeros((8, 8), np.uint8)
    out = write_set(tmp_path / "s", [("a", img), ("b", img), ("a", img)], [("a", img)],
                    lambda q, d: 3 if q == d else 0)
    assert sorted(p.relative_to(out / "database").as_posix()
                  for p in (out / "database").rglob("*.png")) == [
        "a/000000.png", "a/000002.png", "b/000001.png"]
    queries = read_queries(out / "queries.jsonl")
    assert queries[0].id == "q000000" and queries[0].image.is_file()
    assert read_qrels(out / "qrels.txt") == {"q000000": {"a/000000.png": 3, "a/000002.png": 3}}


def test_digits(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    out = build_dataset("digits", tmp_path / "d", db_size=100, queries=10)
    assert len(list((out / "database").rglob("*.png"))) == 100
    lines = (out / "queries.jsonl").read_text().splitlines()
    assert len(lines) == 10 and json.loads(lines[0])["crop"] is None
    qrels = read_qrels(out / "qrels.txt")
    assert all(doc.split("/")[0] == next(iter(docs)).split("/")[0]
               for docs in qrels.values() for doc in docs)


def test_fashion_grades() -> None:
    assert fashion_grade("coat", "coat") == 5
    assert fashion_grade("coat", "shirt") == 2
    assert fashion_grade("coat", "sneaker") == 0 and fashion_grade("bag", "dress") == 0


@pytest.mark.skipif(not FASHION_DIR.exists(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist(tmp_path: Path) -> None:
    out = build_dataset("fashion-mnist", tmp_path / "f", db_size=50, queries=5)
    assert len(list((out / "database").rglob("*.png"))) == 50
    grades = {g for docs in read_qrels(out / "qrels.txt").values() for g in docs.values()}
    assert grades <= {2, 5} and 5 in grades


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(LookalikeError, match="unknown dataset 'imagenet'"):
        build_dataset("imagenet", tmp_path)
