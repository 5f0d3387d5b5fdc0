"""The `lookalike` command: each sub-command parses its arguments and calls the library.

Exit status: 0 on success, 2 on bad usage or bad input (one line on stderr).
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lookalike.errors import LookalikeError
from lookalike.images import Box, parse_box

if TYPE_CHECKING:  # imported where used: `lookalike --help` starts fast
    from lookalike.collection import Collection
    from lookalike.folder_sync import IndexReport


def _crop(ctx: click.Context, param: click.Parameter, value: str | None) -> Box | None:
    if value is None:
        return None
    try:
        return parse_box(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def shown(text: str) -> str:
    """`text` safe for one terminal line: control characters (a newline in a file name)
    and undecodable bytes are written as escapes, so one result stays one line."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", lambda m: repr(m[0])[1:-1], text)


collection_option = click.option(
    "-c", "--collection", "collection", required=True, type=click.Path(path_type=Path),
    help="Collection folder.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lookalike")
def cli() -> None:
    """Visual similarity search: find the images that look like this one, or like this part
    of it."""


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("lookalike-demo"),
              show_default=True, help="Folder for the collection and the HTML page.")
def demo(out: Path) -> None:
    """Index the bundled sample photos, run whole-image and crop queries, write an HTML page."""
    from lookalike.demo import run_demo

    page = run_demo(out)
    click.echo(page)


@cli.command()
@click.argument("folder", required=False, type=click.Path(path_type=Path))
@collection_option
@click.option("--model", default=None, help="Encoder name (see `lookalike models`); "
              "defaults to the collection's, or efficientnet_lite0 for a new one.")
@click.option("--index", "index_spec", default="flat", show_default=True,
              help="Index spec for a new collection: flat, hnsw32, ivf1024, ivf1024,pq32, "
              "annoy, lsh, kdtree, scann or auto (see README, Indexes).")
@click.option("--reindex", "reindex_spec", default=None,
              help="Switch the collection to this index spec, from its stored vectors "
              "(no re-embedding); FOLDER may then be left out.")
@click.option("--regions", default="none", show_default=True,
              help="For a new collection: also index regions of each image (none, grid, "
              "grid:N, proposals, proposals:N; @PIXELS embeds them at that input size, "
              "e.g. grid@160) so crop queries find the images that contain them.")
@click.option("--region-discount", type=click.FloatRange(0, 1),
              help="For a new collection: how much less a region's match counts than a "
              "whole image's.  [default: grid 0.06, proposals 0.1]")
@click.option("--local-features", is_flag=True,
              help="For a new collection: also index each image's SIFT keypoints as visual "
              "words, so that `search --verify` finds the source of small details (10 %% of "
              "the side) that no vector finds; ~55 KB an image (needs the `verify` extra).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Embed on a Ray cluster (the ray extra): auto (the running cluster), "
              "ray://HOST:PORT, or local (a Ray started for this run).")
@click.option("--ray-actors", type=click.IntRange(min=1), default=None,
              help="Encoder copies on the cluster.  [default: one per 2 CPUs]")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
@click.option("--wait", is_flag=True,
              help="If another process is writing to COLLECTION, wait for it instead of "
              "stopping.")
def index(folder: Path | None, collection: Path, model: str | None, index_spec: str,
          reindex_spec: str | None, regions: str, region_discount: float | None,
          local_features: bool, batch_size: int, ray_address: str | None, ray_actors: int | None,
          progress: bool, wait: bool) -> None:
    """Create or update COLLECTION from the images under FOLDER (recursively)."""
    from lookalike.collection import Collection

    if folder is None and reindex_spec is None:
        raise click.UsageError("give a FOLDER to index (or --reindex SPEC)")
    if folder is not None and not folder.is_dir():
        raise LookalikeError(f"{folder}: not a directory")
    coll = Collection.open(collection, encoder=model, upgrade=True, wait=wait) \
        if folder is None else Collection.open_or_create(
            collection, encoder=model, index=index_spec, regions=regions,
            region_discount=region_discount, local_features=local_features, upgrade=True,
            wait=wait)
    if coll.upgraded:  # an older format, brought up to date in place
        click.echo(coll.upgraded, err=True)
    with coll, coll.writing(wait=wait):
        if folder is not None:
            embed_with = None
            if ray_address is not None:
                from lookalike.distributed import RayEncoder

                embed_with = RayEncoder(coll.encoder, actors=ray_actors,
                                        address=None if ray_address == "local" else ray_address)
            before = coll.catalog.sync_point().last_vid
            report = coll.index_folder(folder, batch_size=batch_size, progress=progress,
                                       embed_with=embed_with)
            for image_id, reason in report.failed.items():
                click.echo(f"skipped {shown(image_id)}: {reason}", err=True)
            _echo_skipped(report.skipped)
            click.echo(f"{collection}: {report.summary()}")
            _echo_copies(coll, report, before)
        if reindex_spec is not None:
            coll.reindex(reindex_spec)
        info = coll.index_info()
        click.echo(f"{collection}: {info['images']} images, {info['vectors']} vectors "
                   f"({info['vectors_per_image']} an image) in index {info['spec']}"
                   + (f" (chose {info['chosen']})" if "chosen" in info else "")
                   + f"; vectors {info['vector_bytes'] / 2**20:.1f} MiB, "
                   f"index structure {info['structure_bytes'] / 2**20:.1f} MiB"
                   + (f", local features {info['local_bytes'] / 2**20:.1f} MiB "
                      f"({info['local_points'] / max(1, info['local_images']):.0f} points an "
                      "image)" if "local_bytes" in info else ""))


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@collection_option
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
@click.option("--wait", is_flag=True,
              help="If another process is writing to COLLECTION, wait for it instead of "
              "stopping.")
def update(paths: tuple[Path, ...], collection: Path, progress: bool, wait: bool) -> None:
    """Bring just PATHS (files or folders under COLLECTION's folder) up to date: new and
    changed images are embedded, those no longer there removed. For a file watcher or a
    script that knows what changed: the rest of the folder is not scanned."""
    from lookalike.collection import Collection

    with Collection.open(collection, upgrade=True, wait=wait) as coll, \
            coll.writing(wait=wait):
        if coll.upgraded:
            click.echo(coll.upgraded, err=True)
        before = coll.catalog.sync_point().last_vid
        report = coll.index_paths(paths, progress=progress)
        for image_id, reason in report.failed.items():
            click.echo(f"skipped {shown(image_id)}: {reason}", err=True)
        _echo_skipped(report.skipped)
        click.echo(f"{collection}: {report.summary()}")
        _echo_copies(coll, report, before)


def _echo_copies(coll: Collection, report: IndexReport, before: int) -> None:
    """How many of the images just indexed are plain copies of others (cheap to tell: the
    same file or picture at another size, compression or orientation)."""
    from lookalike.duplicates import plain_copies

    new = {*report.added, *report.updated, *report.renamed}
    if not new:
        return
    copies = {i for pair in plain_copies(coll, after=before) for i in (pair.a, pair.b)
              if i in new}
    if copies:
        click.echo(f"{len(copies)} of the images indexed now have a copy in the collection "
                   "(the same file, or the same picture resized, re-encoded, mirrored or "
                   "turned); "
                   f"`lookalike duplicates -c {coll.path} --new` lists them, with crops and "
                   "edits")


def _echo_skipped(skipped: dict[str, str]) -> None:
    """What the folder held besides images, one line a reason (a folder of 10,000 SVGs is
    one line, with an example)."""
    by_reason = Counter(skipped.values())
    for reason, count in by_reason.items():
        example = next(i for i, r in skipped.items() if r == reason)
        more = f" and {count - 1} more" if count > 1 else ""
        click.echo(f"skipped {shown(example)}{more}: {reason}", err=True)


@cli.command()
@click.argument("image", required=False, type=click.Path(path_type=Path))
@collection_option
@click.option("-k", default=10, show_default=True, type=click.IntRange(min=1),
              help="Number of results.")
@click.option("--crop", callback=_crop, help="Search with this box of IMAGE: X0,Y0,X1,Y1.")
@click.option("--like", help="Search with an indexed image id (excluded from its results).")
@click.option("--metric", type=click.Choice(["cosine", "dot", "l2"]), default="cosine",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--queries", type=click.Path(path_type=Path), help="Batch mode: a queries.jsonl.")
@click.option("--run", "run_path", type=click.Path(path_type=Path),
              help="Batch mode: the TREC run file to write.")
@click.option("--nprobe", type=click.IntRange(min=1), help="IVF cells scanned (ivf, pq).")
@click.option("--ef", type=click.IntRange(min=1), help="HNSW search beam.")
@click.option("--search-k", type=int, help="Annoy nodes visited (-1: trees x k).")
@click.option("--rerank", type=click.IntRange(min=1),
              help="Shortlist re-scored exactly (pq, lsh, scann).")
@click.option("--min-grade", type=click.FloatRange(0, 5),
              help="Keep hits whose calibrated grade is at least this (needs `calibrate`).")
@click.option("--query-regions", default="none", show_default=True,
              help="Also search with regions of the query (grid:2, proposals:4...): for "
                   "partial copies and queries showing the target among other things.")
@click.option("--verify", default=0, show_default=True, type=click.IntRange(min=0),
              help="Re-rank this many top hits by matching keypoints, then pixels (needs the "
                   "`verify` extra): images that contain the query or a copy of it come first; "
                   "with local features, images they verify in join from anywhere.")
def search(image: Path | None, collection: Path, k: int, crop: Box | None, like: str | None,
           metric: str, as_json: bool, queries: Path | None, run_path: Path | None,
           nprobe: int | None, ef: int | None, search_k: int | None, rerank: int | None,
           min_grade: float | None, query_regions: str, verify: int) -> None:
    """Search COLLECTION with IMAGE (or a crop of it), an indexed id, or a queries file."""
    if (queries is None) != (run_path is None):
        raise click.UsageError("batch mode needs both --queries and --run")
    if queries is None and (image is None) == (like is None):
        raise click.UsageError("give an IMAGE or --like ID (or --queries and --run)")
    if crop is not None and image is None:
        raise click.UsageError("--crop needs an IMAGE")
    from lookalike.collection import Collection  # after the usage checks: it takes a while
    from lookalike.trec import read_queries, write_run

    given = {"nprobe": nprobe, "ef": ef, "search_k": search_k, "rerank": rerank}
    options = {name: value for name, value in given.items() if value is not None}
    with Collection.open(collection) as coll:
        if queries is not None and run_path is not None:
            parsed = read_queries(queries)
            items = [(q.image, q.crop) if q.crop else q.image for q in parsed]
            results = coll.search_many(items, k=k, metric=metric,  # type: ignore[arg-type]
                                       options=options, min_grade=min_grade,
                                       query_regions=query_regions, verify=verify)
            write_run(run_path, {q.id: hits for q, hits in zip(parsed, results, strict=True)})
            click.echo(f"{run_path}: {len(parsed)} queries, top {k} each")
            return
        hits = coll.search(image, crop=crop, like=like, k=k, metric=metric,  # type: ignore[arg-type]
                           options=options, min_grade=min_grade, query_regions=query_regions,
                           verify=verify)
        calibration = coll.calibration
        if calibration is not None and (why := calibration.mismatch(query_regions, verify)):
            click.echo(f"note: {why}", err=True)
    if as_json:
        click.echo(json.dumps([h.to_dict() for h in hits], indent=2))
        return
    for hit in hits:
        grade = f"  grade {hit.grade:.2f}" if hit.grade is not None else ""
        verified = (f"  verified ({hit.inliers} matches)" if hit.inliers is not None else
                    f"  verified (pixels within {hit.pixel_error:.1f})"
                    if hit.pixel_error is not None else "")
        click.echo(f"{hit.rank:>4}  {hit.score:8.4f}  {shown(hit.id)}{grade}{verified}")


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="The model folder to write; use it as `--model OUT`.")
@click.option("--model", "base", default="efficientnet_lite0", show_default=True,
              help="The backbone to start from.")
@click.option("--mode", type=click.Choice(["head", "self-supervised", "finetune"]),
              default="head", show_default=True,
              help="head: a small head on frozen features learns from labelled groups "
              "(fast, the default). self-supervised: the same head learns from augmented "
              "views alone, no labels needed. finetune: the backbone's last layers learn "
              "(slow without a GPU).")
@click.option("--trainable", default="last:2", show_default=True,
              help="finetune: 'all' or 'last:N' layer groups of the backbone.")
@click.option("--epochs", type=click.IntRange(min=1), help="[default: head 30, finetune 5]")
@click.option("--patience", type=click.IntRange(min=1),
              help="Stop after this many epochs without a better held-out mAP "
              "[default: head 5, finetune 3].")
@click.option("--batch-size", type=click.IntRange(min=4),
              help="[default: head 256, finetune 32]")
@click.option("--lr", type=click.FloatRange(0, min_open=True),
              help="[default: head 1e-3, finetune 1e-4]")
@click.option("--temperature", default=0.1, show_default=True,
              type=click.FloatRange(0, min_open=True))
@click.option("--val-fraction", default=0.1, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="About this share of the images, as whole groups, is held out to "
              "validate on.")
@click.option("--queries", "queries_path", type=click.Path(path_type=Path),
              help="With --qrels: similar = judged at least --threshold, not same folder.")
@click.option("--qrels", "qrels_path", type=click.Path(path_type=Path))
@click.option("--threshold", default=1, show_default=True, type=click.IntRange(1, 5))
@click.option("--require-gain", is_flag=True,
              help="Exit with status 1 unless the trained model beats the frozen encoder "
              "on the held-out groups (mAP, p < 0.05).")
@click.option("--resume", is_flag=True, help="Continue from OUT's last epoch checkpoint.")
def train(folder: Path, out: Path, base: str, mode: str, trainable: str, epochs: int | None,
          patience: int | None, batch_size: int | None, lr: float | None, temperature: float,
          val_fraction: float, queries_path: Path | None, qrels_path: Path | None,
          threshold: int, require_gain: bool, resume: bool) -> None:
    """Contrastive training on FOLDER's images (similar = same subfolder, or judged similar
    by --qrels; self-supervised needs neither); writes a model folder that `--model`
    accepts. Whole groups are held out, and the trained model is compared with the frozen
    encoder on them: what groups it never saw get."""
    from lookalike.train.finetune import FinetuneConfig
    from lookalike.train.head import HeadConfig
    from lookalike.train.run import folder_labels, judged_labels, train_model
    from lookalike.trec import read_qrels, read_queries

    if (queries_path is None) != (qrels_path is None):
        raise click.UsageError("--queries and --qrels go together")
    labels: Any = None
    if queries_path is not None and qrels_path is not None:
        paths, labels = judged_labels(folder, read_queries(queries_path),
                                      read_qrels(qrels_path), threshold)
    elif mode != "self-supervised" or _has_subfolders(folder):
        paths, labels = folder_labels(folder)
    else:
        from lookalike.folder import scan_images

        paths = list(scan_images(folder).values())
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "patience": patience}
    options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    config = (FinetuneConfig(temperature=temperature, trainable=trainable, **options)
              if mode == "finetune" else HeadConfig(temperature=temperature, **options))
    fitted = train_model(paths, labels, out, base=base, mode=mode,  # type: ignore[arg-type]
                         config=config, val_fraction=val_fraction, resume=resume)
    click.echo(fitted.held_out.table())
    if fitted.held_out.fell_back:
        click.echo(f"warning: training did not beat the frozen encoder on the held-out "
                   f"groups; {out} holds {base} unchanged, so `--model {base}` does as well",
                   err=True)
    elif not fitted.held_out.gained:
        click.echo("note: the trained model is ahead of the frozen encoder on the held-out "
                   "groups, but not significantly (mAP p >= 0.05)", err=True)
    click.echo(f"{out}: best epoch {fitted.best_epoch} (0: before the first); curve in "
               f"{out / 'curve.png'}")
    if require_gain and not fitted.held_out.gained:
        raise SystemExit(1)


def _has_subfolders(folder: Path) -> bool:
    return any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


@cli.command()
@collection_option
@click.option("--queries", "queries_path", required=True, type=click.Path(path_type=Path),
              help='JSON lines, one query each: {"id": "q1", "image": "path.jpg"} and '
              'optionally "crop": [x0, y0, x1, y1]; paths relative to the file.')
@click.option("--qrels", "qrels_path", required=True, type=click.Path(path_type=Path),
              help="Graded TREC qrels, grades 0-5.")
@click.option("--model", type=click.Choice(["ordinal", "isotonic"]), default="ordinal",
              show_default=True)
@click.option("--depth", default=50, show_default=True, type=click.IntRange(min=2),
              help="Hits a query used for fitting and for each query's score statistics.")
@click.option("--unjudged", default=0, show_default=True, type=click.IntRange(0, 5),
              help="Grade given to hits the qrels do not judge.")
@click.option("--fit-fraction", default=0.5, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Share of the queries fitted on; the rest are held out for the report.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path),
              help="Write calibration.json (held-out figures) and reliability.png here.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the random fit/held-out split of the queries.")
@click.option("--query-regions", default="none", show_default=True,
              help="Calibrate the rankings of searches with these query regions.")
@click.option("--verify", default=0, show_default=True, type=click.IntRange(min=0),
              help="Calibrate the rankings of searches that verify this many top hits.")
@click.option("--fit-all", is_flag=True,
              help="After the held-out assessment, refit on every query and save that.")
def calibrate(collection: Path, queries_path: Path, qrels_path: Path, model: str, depth: int,
              unjudged: int, fit_fraction: float, report_dir: Path | None, seed: int,
              query_regions: str, verify: int, fit_all: bool) -> None:
    """Fit COLLECTION's 0-5 relevance calibration on graded queries; from then on its hits
    carry a grade. It is fitted on the rankings of searches with --query-regions and
    --verify as given: searches with other options get a note that their grades are
    approximate."""
    from lookalike.calibration import calibrate_collection, reliability_plot
    from lookalike.collection import Collection
    from lookalike.trec import read_qrels, read_queries

    with Collection.open(collection) as coll:
        run = calibrate_collection(coll, read_queries(queries_path), read_qrels(qrels_path),
                                   model=model, depth=depth,  # type: ignore[arg-type]
                                   unjudged=unjudged, fit_fraction=fit_fraction, seed=seed,
                                   query_regions=query_regions, verify=verify,
                                   fit_all=fit_all)
        coll.set_calibration(run.calibrator)
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "calibration.json").write_text(json.dumps(run.report, indent=2))
        reliability_plot(run.calibrator, *run.test, report_dir / "reliability.png")
    click.echo(json.dumps(run.report, indent=2))
    click.echo(run.report["verdict"], err=True)


@cli.command()
@click.argument("run_file", metavar="RUN", type=click.Path(path_type=Path))
@click.argument("qrels_file", metavar="QRELS", type=click.Path(path_type=Path))
@click.option("-m", "--metric", "metric_names", multiple=True,
              help="e.g. ndcg@10, map, mrr, p@5, r@100, rprec, success@1 (repeatable). "
              "Default: mrr, p@10, r@10, map, ndcg@10.")
@click.option("--threshold", default=1, show_default=True, type=int,
              help="Lowest grade that counts as relevant for binary metrics.")
@click.option("--gain", type=click.Choice(["linear", "exp"]), default="linear",
              show_default=True, help="nDCG gain: rel or 2^rel - 1.")
@click.option("--complete", is_flag=True,
              help="Average over every qrels query; a query missing from the run scores 0.")
@click.option("--per-query", is_flag=True, help="Also print each query's values.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def metrics(run_file: Path, qrels_file: Path, metric_names: tuple[str, ...], threshold: int,
            gain: str, complete: bool, per_query: bool, as_json: bool) -> None:
    """Score a TREC RUN file against QRELS (trec_eval's conventions)."""
    from lookalike.metrics import DEFAULT_METRICS, evaluate, mean
    from lookalike.trec import read_qrels, read_run

    names = list(metric_names) or list(DEFAULT_METRICS)
    values = evaluate(read_run(run_file), read_qrels(qrels_file), names, threshold=threshold,
                      gain=gain, complete=complete)  # type: ignore[arg-type]
    means = mean(values)
    queries = len(next(iter(values.values()), {}))
    if as_json:
        doc: dict[str, Any] = {"queries": queries, "mean": means}
        if per_query:
            doc["per_query"] = values
        click.echo(json.dumps(doc, indent=2))
        return
    if per_query:
        for name, by_query in values.items():
            for qid, value in by_query.items():
                click.echo(f"{name:<12} {qid:<16} {value:.4f}")
    for name, value in means.items():
        click.echo(f"{name:<12} {'all':<16} {value:.4f}")
    click.echo(f"{'queries':<12} {'all':<16} {queries}")


@cli.command()
@click.argument("run_a", metavar="RUN_A", type=click.Path(path_type=Path))
@click.argument("run_b", metavar="RUN_B", type=click.Path(path_type=Path))
@click.argument("qrels_file", metavar="QRELS", type=click.Path(path_type=Path))
@click.option("-m", "--metric", "metric_names", multiple=True,
              help="Metrics to compare (repeatable); default mrr, p@10, r@10, map, ndcg@10.")
@click.option("--permutations", default=10_000, show_default=True, type=click.IntRange(min=1))
@click.option("--bootstrap", default=10_000, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def compare(run_a: Path, run_b: Path, qrels_file: Path, metric_names: tuple[str, ...],
            permutations: int, bootstrap: int, seed: int, as_json: bool) -> None:
    """Compare two TREC runs: differences, randomization-test p-values, bootstrap CIs."""
    from lookalike.comparison import compare_runs
    from lookalike.metrics import DEFAULT_METRICS
    from lookalike.trec import read_qrels, read_run

    result = compare_runs(read_run(run_a), read_run(run_b), read_qrels(qrels_file),
                          list(metric_names) or DEFAULT_METRICS, permutations=permutations,
                          bootstrap=bootstrap, seed=seed)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.table())


@cli.command("evaluate")
@collection_option
@click.option("--queries", type=click.Path(path_type=Path),
              help="queries.jsonl (whole images and crops).")
@click.option("--qrels", type=click.Path(path_type=Path), help="TREC qrels with grades 0-5.")
@click.option("--labelled", type=click.Path(path_type=Path),
              help="Instead of queries and qrels: index this folder of class subfolders and "
              "let each image query the rest (same class = relevant).")
@click.option("-m", "--metric", "metric_names", multiple=True,
              help="Metrics to report (repeatable); default mrr, p@10, r@10, map, ndcg@10.")
@click.option("-k", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--threshold", default=1, show_default=True, type=int)
@click.option("--report", type=click.Path(path_type=Path),
              help="Folder for run.txt, metrics.json and per_query.csv.")
@click.option("--calibration", type=click.Choice(["ordinal", "isotonic"]),
              help="Also fit a grade calibration on half of the queries and add its "
              "held-out figures to the report (the collection is not changed).")
def evaluate_command(collection: Path, queries: Path | None, qrels: Path | None,
                     labelled: Path | None, metric_names: tuple[str, ...], k: int,
                     threshold: int, report: Path | None, calibration: str | None) -> None:
    """Search COLLECTION with every query and score the results against QRELS, or run a
    leave-one-out evaluation of a labelled folder."""
    from lookalike.collection import Collection
    from lookalike.evaluation import evaluate_collection, leave_one_out
    from lookalike.metrics import DEFAULT_METRICS
    from lookalike.report import write_report
    from lookalike.trec import read_qrels, read_queries

    names = list(metric_names) or DEFAULT_METRICS
    if labelled is not None:
        if queries is not None or qrels is not None:
            raise click.UsageError("--labelled replaces --queries and --qrels")
        with Collection.open_or_create(collection) as coll:
            coll.index_folder(labelled, progress=True)
            result = leave_one_out(coll, metrics=names, k=k)
    elif queries is None or qrels is None:
        raise click.UsageError("give --queries and --qrels, or --labelled DIR")
    else:
        parsed, judged = read_queries(queries), read_qrels(qrels)
        with Collection.open(collection) as coll:
            result = evaluate_collection(coll, parsed, judged, k=k, threshold=threshold,
                                         metrics=names)
            if calibration is not None:
                from lookalike.calibration import calibrate_collection

                fitted = calibrate_collection(coll, parsed, judged,
                                              model=calibration)  # type: ignore[arg-type]
    if calibration is not None and (labelled is not None or report is None):
        raise click.UsageError("--calibration needs --queries, --qrels and --report")
    if report is not None:
        write_report(result, report, calibration=fitted if calibration else None)
    for name, value in result.mean.items():
        click.echo(f"{name:<12} {value:.4f}")


@cli.command()
@click.argument("name")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--db-size", default=2000, show_default=True, type=click.IntRange(min=1))
@click.option("--queries", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
def dataset(name: str, out: Path, db_size: int, queries: int, seed: int) -> None:
    """Build the evaluation set NAME (digits, emoji, fashion-mnist, photo-crops) under OUT:
    database/, queries.jsonl, qrels.txt."""
    from lookalike.datasets import build_dataset

    path = build_dataset(name, out, db_size=db_size, queries=queries, seed=seed)
    click.echo(f"{path}: index {path / 'database'}, then evaluate with "
               f"{path / 'queries.jsonl'} and {path / 'qrels.txt'}")


@cli.command()
@click.argument("root", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--layout", type=click.Choice(["classes", "ukbench", "revisited"]),
              default="classes", show_default=True,
              help="Class subfolders, groups of consecutive images, or revisited Oxford/Paris.")
@click.option("--group-size", default=4, show_default=True, type=click.IntRange(min=2))
@click.option("--ground-truth", type=click.Path(path_type=Path),
              help="The gnd_roxford5k.pkl / gnd_rparis6k.pkl file (--layout revisited).")
def judgements(root: Path, out: Path, layout: str, group_size: int,
               ground_truth: Path | None) -> None:
    """Write queries.jsonl and qrels.txt under OUT for the images under ROOT."""
    from lookalike.datasets import loaders

    if not root.is_dir():
        raise LookalikeError(f"{root}: not a directory")
    if layout == "revisited":
        if ground_truth is None:
            raise click.UsageError("--layout revisited needs --ground-truth FILE")
        written = loaders.revisited_judgements(root, ground_truth, out)
    elif layout == "ukbench":
        written = loaders.ukbench_judgements(root, out, group_size)
    else:
        written = loaders.class_folder_judgements(root, out)
    click.echo(f"{written / 'queries.jsonl'}, {written / 'qrels.txt'}")


@cli.command()
@collection_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on (0.0.0.0: every network, no authentication).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
def serve(collection: Path, host: str, port: int) -> None:
    """Serve COLLECTION over HTTP: a web page (drop an image, drag a box on it) and a JSON
    API (/docs). Images indexed meanwhile by `lookalike index` show up without a restart."""
    try:
        import uvicorn  # noqa: F401  (run_server's, checked here for the one clear message)

        from lookalike.server import address, bind, create_app, run_server
    except ImportError as exc:
        raise LookalikeError(f"serve needs the serve extra: pip install 'lookalike[serve]' "
                             f"({exc.name} is missing)") from None
    # Bound first: a taken port fails at once, before the model loads, as one clear error.
    with bind(host, port) as sock:
        app = create_app(collection)
        bound = address(host, sock.getsockname()[1])  # --port 0: the port the system chose
        click.echo(f"lookalike: serving {collection} on http://{bound}/", err=True)
        run_server(app, sock)


@cli.command()
@collection_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout: "
              '{"groups": [{"images", "keep", "pairs": [...]}]} (see README, Duplicates).')
@click.option("--csv", "csv_path", type=click.Path(path_type=Path),
              help="Also write every pair to this CSV file.")
@click.option("--similar", is_flag=True, help="Also group images of the same scene that are "
              "not copies (burst shots, the same place from elsewhere).")
@click.option("--keep", type=click.Choice(["largest", "oldest", "newest", "shortest-path"]),
              default="largest", show_default=True, help="Which image of a group to keep.")
@click.option("--min-probability", type=click.FloatRange(0, 1), default=0.95,
              show_default=True, help="Report a pair as a copy when the calibrated "
              "probability that it is one is at least this (lower: more crops and edits "
              "found, more wrong links).")
@click.option("--min-score", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Cosine below which two images are not compared at all.")
@click.option("--neighbours", type=click.IntRange(1, 100), default=8, show_default=True,
              help="Nearest images each image is compared with.")
@click.option("--fit-probability", "truth_path", type=click.Path(path_type=Path),
              help="Fit the copy probability on judged groups (a CSV with columns "
              "image,group, as `lookalike dataset copies` writes) and keep it in the "
              "collection; prints how well it held up on held-out groups.")
@click.option("--move-to", type=click.Path(path_type=Path), help="Move every image of a "
              "group but the one to keep into this folder (outside the indexed one), at the "
              "same relative path, with an undo log there. Nothing is deleted.")
@click.option("--undo", "undo_log", type=click.Path(path_type=Path),
              help="Put back what a --move-to moved, from its undo log.")
@click.option("--html", "html_dir", type=click.Path(path_type=Path),
              help="Write a review page, DIR/index.html: each group side by side.")
@click.option("--new", "only_new", is_flag=True,
              help="Only the copies of images indexed since the last `duplicates` run.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
def duplicates(collection: Path, as_json: bool, csv_path: Path | None, similar: bool,
               keep: str, min_probability: float, min_score: float, neighbours: int,
               truth_path: Path | None, move_to: Path | None, undo_log: Path | None,
               html_dir: Path | None, only_new: bool, progress: bool) -> None:
    """Find the images of COLLECTION that are copies of one another (the same file, resized,
    re-encoded, cropped, flipped, rotated, edited) and group them; with --move-to, move all
    but one of each group aside (undone by --undo)."""
    from tqdm import tqdm

    from lookalike.collection import Collection
    from lookalike.duplicates import (
        find_duplicates,
        last_checked,
        move_copies,
        record_run,
        undo_moves,
        write_review_page,
    )

    if undo_log is not None:
        with Collection.open(collection, upgrade=True) as coll:
            restored = undo_moves(undo_log)
            coll.index_paths(restored)
        click.echo(f"{collection}: put back {len(restored)} file(s)")
        return
    if move_to is not None and similar:
        raise click.UsageError("--move-to moves copies only; leave out --similar")
    if truth_path is not None:
        _fit_copy_probability(collection, truth_path, min_probability, neighbours, min_score,
                              progress)
        return
    with Collection.open(collection, upgrade=move_to is not None) as coll, tqdm(
            unit="pair", disable=not progress, desc="comparing") as bar:
        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        upto = coll.catalog.sync_point().last_vid
        groups = find_duplicates(coll, similar=similar, keep=keep,  # type: ignore[arg-type]
                                 min_probability=min_probability, neighbours=neighbours,
                                 min_score=min_score, progress=advance,
                                 after=last_checked(coll) if only_new else 0)
        if html_dir is not None:  # before any move: it shows the files where they are
            page = write_review_page(groups, coll.root or coll.path, html_dir)
            click.echo(f"review page: {page}", err=True)
        moved: list[Path] = []
        if move_to is not None:
            import time

            move_to.mkdir(parents=True, exist_ok=True)
            log = move_to / f"lookalike-undo-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
            root = coll.root or coll.path
            with coll.writing():  # taken before anything moves: another writer stops it
                moved = move_copies(groups, root, move_to, log)
                coll.index_paths(root / p.relative_to(move_to.resolve()) for p in moved)
            click.echo(f"{collection}: moved {len(moved)} file(s) to {move_to}; to put them "
                       f"back: lookalike duplicates -c {collection} --undo {log}", err=True)
        try:
            record_run(coll, [] if moved else groups, upto=upto, new_only=only_new,
                       moved=len(moved))
        except OSError as exc:  # a collection this user may only read: --new cannot follow
            click.echo(f"note: {exc.filename}: {exc.strerror}; --new will see these again",
                       err=True)
    if csv_path is not None:
        _write_pairs_csv(csv_path, groups)
    if as_json:
        click.echo(json.dumps({"groups": [g.to_dict() for g in groups]}, indent=1))
        return
    for number, group in enumerate(groups, start=1):  # each image by its link to the keeper
        click.echo(f"group {number}: {len(group.images)} images, keep {shown(group.keep)}")
        for image_id in group.images:
            links = [p for p in group.pairs if image_id in (p.a, p.b)]
            pair = next((p for p in links if group.keep in (p.a, p.b)), links[0])
            if image_id == group.keep:
                continue
            how = {"identical": "identical to", "same-pixels": "the same pixels as",
                   "similar": "looks like"}.get(pair.relation, f"{pair.relation} from")
            if pair.a == image_id:  # the other is derived from it
                how = {"cropped": "contains", "resized": "a larger size of"}.get(
                    pair.relation, how)
            where = f", at {','.join(map(str, pair.box))}" if pair.box else ""
            other = pair.a if pair.b == image_id else pair.b
            click.echo(f"  {shown(image_id)}: {how} {shown(other)}{where}")
    click.echo(f"{collection}: {len(groups)} groups, "
               f"{sum(len(g.images) - 1 for g in groups)} images that could go", err=True)


def _fit_copy_probability(collection: Path, truth_path: Path, min_probability: float,
                          neighbours: int, min_score: float, progress: bool) -> None:
    from tqdm import tqdm

    from lookalike.collection import Collection
    from lookalike.copy_probability import FILE
    from lookalike.copy_truth import linked, quality, read_truth
    from lookalike.duplicates import examine, fit_probability

    truth = read_truth(truth_path)
    with Collection.open(collection) as coll, tqdm(unit="pair", disable=not progress,
                                                   desc="comparing") as bar:
        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        examined = examine(coll, neighbours=neighbours, min_score=min_score, progress=advance)
        fitted = fit_probability(examined, truth, fitted_on=str(truth_path.resolve()))
        fitted.model.save(coll.path / FILE)
    reported = [(p.a, p.b) for p, chance in zip(fitted.judged, fitted.held_out, strict=True)
                if chance >= min_probability and p.relation != "similar"]
    held = quality(linked(reported), truth)
    click.echo(f"{collection}: copy probability fitted on {len(fitted.judged)} judged pairs "
               f"({int(fitted.is_copy.sum())} copies); on held-out groups:")
    click.echo(f"  expected calibration error {fitted.reliability.expected_error:.3f}")
    for low, mean, seen, count in fitted.reliability.bins:
        click.echo(f"  predicted {low:.1f}-{low + 0.1:.1f}: mean {mean:.3f}, "
                   f"copies {seen:.3f} of {count} pairs")
    click.echo(f"  at probability >= {min_probability}: precision {held.precision:.3f}, "
               f"recall {held.recall:.3f} over all pairs in the groups")
    for family, recall in held.recall_by_family.items():
        click.echo(f"    recall {family}: {recall:.3f} of {held.pairs_by_family[family]}")


def _write_pairs_csv(path: Path, groups: list[Any]) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["group", "a", "b", "relation", "probability", "x0", "y0", "x1", "y1",
                         "score", "inliers", "pixel_error", "agreement"])
        for number, group in enumerate(groups, start=1):
            for pair in group.pairs:
                writer.writerow([number, pair.a, pair.b, pair.relation,
                                 "" if pair.probability is None else pair.probability,
                                 *(pair.box or ("", "", "", "")), round(pair.score, 4),
                                 "" if pair.inliers is None else pair.inliers,
                                 "" if pair.pixel_error is None else round(pair.pixel_error, 2),
                                 "" if pair.agreement is None else round(pair.agreement, 3)])


@cli.command()
@collection_option
@click.option("--repair", is_flag=True, help="Mend what is found: restore the manifest, "
              "re-embed damaged or lost vectors, rebuild the index.")
@click.option("--wait", is_flag=True, help="With --repair: wait for another writer.")
def check(collection: Path, repair: bool, wait: bool) -> None:
    """Check COLLECTION's files (manifest, catalog, vector checksums, index, indexed images)
    and say what is wrong; exit status 1 when something is."""
    from lookalike.check import check_collection, repair_collection

    findings = check_collection(collection)
    for finding in findings:
        click.echo(shown(str(finding)))
    if findings and repair:
        for action in repair_collection(collection, wait=wait, progress=False):
            click.echo(f"repair: {shown(action)}")
        findings = check_collection(collection)
        for finding in findings:
            click.echo(f"still: {shown(str(finding))}")
    if findings:
        if not repair:
            click.echo(f"run `lookalike check -c {collection} --repair` to mend it", err=True)
        sys.exit(1)
    click.echo(f"{collection}: no problems found")


@cli.command()
@collection_option
@click.option("--wait", is_flag=True, help="Wait for another writer instead of stopping.")
def upgrade(collection: Path, wait: bool) -> None:
    """Bring COLLECTION, made by an older lookalike, to this version's format (in place;
    `lookalike index` does it too). Older formats stay readable until then."""
    from lookalike.collection import Collection

    with Collection.open(collection, upgrade=True, wait=wait) as coll:
        click.echo(coll.upgraded or f"{collection}: already in the current format "
                                    f"({coll.format_version})")


@cli.command()
def models() -> None:
    """List the encoders and their precisions (any timm model also works as timm:NAME;
    NAME:int8 runs the INT8 graph, on the CPU)."""
    from lookalike.encoders import get_spec, list_encoders

    for name in list_encoders():
        spec = get_spec(name)
        click.echo(f"{name:<20} {spec.dim:>5}-d  float32, int8 (as {name}:int8)  "
                   f"{spec.description}  [{spec.weights_source}]")


def main(argv: list[str] | None = None) -> Any:
    """Entry point: library errors become one line on stderr and exit status 2."""
    try:
        return cli.main(args=argv, prog_name="lookalike", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("lookalike: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # one line too, with where to find the usage
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} -h')" if ctx is not None else ""
        click.echo(f"lookalike: error: {shown(exc.format_message())}{hint}", err=True)
        sys.exit(2)
    except LookalikeError as exc:
        click.echo(f"lookalike: error: {shown(str(exc))}", err=True)
        sys.exit(2)
    except OSError as exc:  # a path that cannot be read or written: name it, no traceback
        where = exc.filename if exc.filename is not None else "lookalike"
        click.echo(f"lookalike: error: {shown(str(where))}: {exc.strerror or exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
