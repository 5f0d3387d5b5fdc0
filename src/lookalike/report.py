"""An evaluation's report: `run.txt`, `metrics.json`, `per_query.csv`, and `report.html`,
one self-contained page that shows how a run did, for people.

Means; Precision@k and Recall@k for k = 1..100; the distribution of per-query AP; the grades
found at each of the first ten ranks; the best and worst queries with their results. The
page needs matplotlib (`pip install lookalike[report]`); the files do not.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.atomic import atomic_write
from lookalike.calibration import CalibrationRun, reliability_figure
from lookalike.evaluation import Evaluation
from lookalike.images import decode, thumbnail_uri
from lookalike.metrics import Metric, per_query, rank
from lookalike.trec import write_run

CURVE_DEPTH = 100
SHOWN_QUERIES = 3
SHOWN_HITS = 6


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure_uri(fig: Any) -> str:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(result: Evaluation) -> list[tuple[str, str]]:
    plt = _pyplot()
    run = {q: {h.id: h.score for h in hits} for q, hits in result.hits.items()}
    ranked = rank(run, result.qrels)
    ks = np.arange(1, CURVE_DEPTH + 1)
    curves = {name: [per_query(ranked, Metric(name, int(k))).mean() for k in ks]
              for name in ("p", "r")}
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(ks, curves["p"], label="Precision@k")
    ax.plot(ks, curves["r"], label="Recall@k")
    ax.set_xlabel("k")
    ax.set_ylim(0, 1)
    ax.legend()
    plots = [("Precision and recall at k", _figure_uri(fig))]

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(per_query(ranked, Metric("map", None)), bins=20, range=(0, 1))
    ax.set_xlabel("average precision")
    ax.set_ylabel("queries")
    plots.append(("Per-query AP", _figure_uri(fig)))

    top = ranked.grades[:, :10]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bottom = np.zeros(top.shape[1])
    for grade in range(6):
        share = (top == grade).mean(axis=0)
        ax.bar(np.arange(1, top.shape[1] + 1), share, bottom=bottom, label=f"grade {grade}")
        bottom += share
    ax.set_xlabel("rank")
    ax.set_ylabel("share of queries")
    ax.legend(fontsize=7, ncol=3)
    plots.append(("Grades in the top 10 (unjudged = 0)", _figure_uri(fig)))
    return plots


def _query_rows(result: Evaluation, qids: list[str], metric: str) -> str:
    parts = []
    for qid in qids:
        image, crop = result.query_images[qid]
        judged = result.qrels.get(qid, {})
        cells = [f"<figure class='q'><img src='{thumbnail_uri(decode(image).image, crop, 120)}'>"
                 f"{html.escape(qid)}<br>{metric} {result.per_query[metric][qid]:.3f}</figure>"]
        for hit in result.hits[qid][:SHOWN_HITS]:
            try:
                uri = thumbnail_uri(decode(Path(hit.path)).image, None, 120)
            except ValueError:
                continue
            cells.append(f"<figure><img src='{uri}'>#{hit.rank} grade "
                         f"{judged.get(hit.id, 0)}<br>{hit.score:.3f}</figure>")
        parts.append("<div>" + "".join(cells) + "</div>")
    return "\n".join(parts)


def _calibration_section(run: CalibrationRun | None) -> str:
    if run is None:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(json.dumps(v))}</td></tr>"
        for k, v in run.report.items())
    figure = _figure_uri(reliability_figure(run.calibrator, *run.test))
    return (f"<h2>Calibrated grades ({html.escape(run.report['model'])}, held-out queries)"
            f"</h2><table>{rows}</table><figure class='plot'><img src='{figure}'>"
            "<figcaption>Reliability: predicted vs judged</figcaption></figure>")


def write_html_report(result: Evaluation, path: Path,
                      calibration: CalibrationRun | None = None) -> None:
    metric = "map" if "map" in result.per_query else next(iter(result.per_query))
    order = sorted(result.per_query[metric], key=result.per_query[metric].__getitem__)
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
                   for k, v in result.mean.items())
    plots = "".join(f"<figure class='plot'><img src='{uri}'><figcaption>{html.escape(t)}"
                    "</figcaption></figure>" for t, uri in _plots(result))
    page = f"""<!doctype html><meta charset="utf-8"><title>lookalike evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td{{padding:2px 12px;border-bottom:1px solid #ddd}}figure{{display:inline-block;
margin:0 6px 6px 0;text-align:center;font-size:11px}}figure img{{display:block;
margin:auto;min-width:64px;image-rendering:pixelated}}.q{{background:#eef;padding:4px}}
.plot img{{max-width:460px}}</style>
<h1>lookalike evaluation</h1><p>{len(order)} queries</p><table>{rows}</table>
<h2>Plots</h2>{plots}{_calibration_section(calibration)}
<h2>Best queries by {metric}</h2>{_query_rows(result, order[::-1][:SHOWN_QUERIES], metric)}
<h2>Worst queries by {metric}</h2>{_query_rows(result, order[:SHOWN_QUERIES], metric)}
"""
    with atomic_write(path) as fh:
        fh.write(page)


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
        import matplotlib  # noqa: F401  (the page's plots)
    except ImportError:
        return
    write_html_report(result, folder / "report.html", calibration)
