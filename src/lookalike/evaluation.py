"""Run a collection over a query set and score it against graded judgements.

`evaluate_collection` searches every query (whole images and crops) in one batch, scores the
run with `lookalike.metrics`, and `write_report` leaves `run.txt`, `metrics.json` and
`per_query.csv` in a folder for later comparison.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lookalike.calibration import CalibrationRun
from lookalike.collection import Collection, Hit
from lookalike.errors import LookalikeError
from lookalike.images import Box
from lookalike.metrics import DEFAULT_METRICS, Gain, evaluate, mean
from lookalike.trec import Query, write_run


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


def write_report(result: Evaluation, folder: Path, *,
                 calibration: CalibrationRun | None = None) -> None:
    """`run.txt` (TREC), `metrics.json` (means), `per_query.csv`, and `report.html` with
    plots when matplotlib is installed (`pip install lookalike[report]`); with a
    `calibration`, its held-out figures go into `calibration.json` and the page."""
    folder.mkdir(parents=True, exist_ok=True)
    write_run(folder / "run.txt", result.hits)
    queries = sorted({q for values in result.per_query.values() for q in values})
    (folder / "metrics.json").write_text(
        json.dumps({"queries": len(queries), "mean": result.mean}, indent=2) + "\n"
    )
    with (folder / "per_query.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["query", *result.per_query])
        for qid in queries:
            writer.writerow([qid, *(f"{v[qid]:.6f}" for v in result.per_query.values())])
    if calibration is not None:
        (folder / "calibration.json").write_text(json.dumps(calibration.report, indent=2))
    try:
        from lookalike.report import write_html_report
    except ImportError:
        return
    write_html_report(result, folder / "report.html", calibration)
