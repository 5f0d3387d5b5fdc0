"""Run a collection over a query set and score it against graded judgements.

`evaluate_collection` searches every query (whole images and crops) in one batch, scores the
run with `lookalike.metrics`; `lookalike.report.write_report` leaves `run.txt`,
`metrics.json`, `per_query.csv` and a page in a folder for later comparison.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lookalike.collection import Collection, Hit
from lookalike.errors import LookalikeError
from lookalike.images import Box
from lookalike.metrics import DEFAULT_METRICS, Gain, evaluate, mean
from lookalike.trec import Query


@dataclass(frozen=True)
class Evaluation:
    """A scored run: each query's hits, per-query and mean metrics, and what the report
    needs to show them (the judgements and each query's image and crop box)."""

    hits: dict[str, list[Hit]]
    per_query: dict[str, dict[str, float]]
    mean: dict[str, float]
    qrels: Mapping[str, Mapping[str, int]]
    query_images: dict[str, tuple[Path, Box | None]]


def evaluate_collection(
    collection: Collection,
    queries: Sequence[Query],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    k: int = 100,
    threshold: int = 1,
    gain: Gain = "linear",
) -> Evaluation:
    indexed = set(collection.ids())
    if not any(doc in indexed for judged in qrels.values() for doc in judged):
        raise LookalikeError("the qrels judge no image of the collection: are the ids paths "
                             "relative to the indexed folder?")
    items = [(q.image, q.crop) if q.crop else q.image for q in queries]
    results = collection.search_many(items, k=k)
    hits = {q.id: r for q, r in zip(queries, results, strict=True)}
    run = {qid: {h.id: h.score for h in found} for qid, found in hits.items()}
    per_query = evaluate(run, qrels, list(metrics), threshold=threshold, gain=gain)
    images = {q.id: (q.image, q.crop) for q in queries}
    return Evaluation(hits, per_query, mean(per_query), qrels, images)


def leave_one_out(collection: Collection, *, metrics: Sequence[str] = DEFAULT_METRICS,
                  k: int = 100) -> Evaluation:
    """Each image of a labelled collection (class = first folder of its id) queries all the
    others; the images of its class are relevant (grade 1)."""
    ids = collection.ids()
    classes: dict[str, list[str]] = {}
    for image_id in ids:
        if "/" in image_id:
            classes.setdefault(image_id.split("/", 1)[0], []).append(image_id)
    if len(classes) < 2:
        raise LookalikeError("leave-one-out needs images in at least two class subfolders")
    queries = [i for members in classes.values() for i in members]
    qrels = {q: {d: 1 for d in classes[q.split("/", 1)[0]] if d != q} for q in queries}
    vectors = np.stack([collection.query_vector(like=q) for q in queries])
    results = collection.search_vectors(vectors, k=k, exclude=[{q} for q in queries])
    hits = dict(zip(queries, results, strict=True))
    run = {q: {h.id: h.score for h in found} for q, found in hits.items()}
    per_query = evaluate(run, qrels, list(metrics))
    root = collection.root or collection.path
    images: dict[str, tuple[Path, Box | None]] = {q: (root / q, None) for q in queries}
    return Evaluation(hits, per_query, mean(per_query), qrels, images)
