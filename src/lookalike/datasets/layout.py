"""The on-disk layout every builder writes, ready for `lookalike index` and `evaluate`:

    OUT/database/<class>/<n>.png     the images to index (ids: `<class>/<n>.png`)
    OUT/queries/<n>.png              the query images
    OUT/queries.jsonl                {"id": "q<n>", "image": "queries/<n>.png", "crop": null}
    OUT/qrels.txt                    QID 0 DOCID GRADE, every database image with grade > 0
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

Grade = Callable[[str, str], int]


def write_set(out: Path, database: Sequence[tuple[str, np.ndarray]],
              queries: Sequence[tuple[str, np.ndarray]], grade: Grade) -> Path:
    """Write labelled uint8 images and the judgements `grade(query_label, db_label)`."""
    (out / "queries").mkdir(parents=True, exist_ok=True)
    doc_labels: list[tuple[str, str]] = []
    for n, (label, pixels) in enumerate(database):
        folder = out / "database" / label
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{n:06d}.png")
        doc_labels.append((f"{label}/{n:06d}.png", label))
    with (out / "queries.jsonl").open("w") as qfile, (out / "qrels.txt").open("w") as qrels:
        for n, (label, pixels) in enumerate(queries):
            Image.fromarray(pixels).save(out / "queries" / f"{n:06d}.png")
            qid = f"q{n:06d}"
            qfile.write(json.dumps({"id": qid, "image": f"queries/{n:06d}.png",
                                    "crop": None}) + "\n")
            for doc, doc_label in doc_labels:
                if (g := grade(label, doc_label)) > 0:
                    qrels.write(f"{qid} 0 {doc} {g}\n")
    return out


def stratified_pick(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` indices with the classes in their original proportions (shuffled)."""
    count = min(count, len(labels))
    picked = rng.permutation(len(labels))[:count]
    return picked[np.argsort(labels[picked], kind="stable")]
