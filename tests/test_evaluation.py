from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from lookalike import Collection, LookalikeError
from lookalike.evaluation import evaluate_collection, leave_one_out
from lookalike.report import write_report
from lookalike.trec import Query


@pytest.fixture()
def query_set(tmp_path: Path, photo_dir: Path) -> tuple[list[Query], dict[str, dict[str, int]]]:
    """Mirrored copies of two indexed photos (grade 5 for the source) and a crop query."""
    queries, qrels = [], {}
    for name in ("coffee.jpg", "astronaut.jpg"):
        mirrored = tmp_path / f"q_{name}"
        ImageOps.mirror(Image.open(photo_dir / name)).save(mirrored, quality=70)
        queries.append(Query(name.split(".")[0], mirrored))
        qrels[name.split(".")[0]] = {name: 5, "brick.jpg": 0}
    queries.append(Query("cat_face", photo_dir / "chelsea.jpg", (140, 20, 320, 200)))
    qrels["cat_face"] = {"chelsea.jpg": 4}
    return queries, qrels


def test_mirrored_copies_find_their_source(tmp_path: Path, photo_dir: Path, encoder,  # type: ignore[no-untyped-def]
                                           query_set) -> None:
    queries, qrels = query_set
    coll = Collection.create(tmp_path / "coll", encoder=encoder)
    coll.index_folder(photo_dir)
    result = evaluate_collection(coll, queries, qrels, metrics=["mrr", "ndcg@10", "p@1"])
    assert result.mean == {"mrr": 1.0, "ndcg@10": 1.0, "p@1": 1.0}
    write_report(result, tmp_path / "report")
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["queries"] == 3
    rows = list(csv.reader((tmp_path / "report" / "per_query.csv").open()))
    assert rows[0] == ["query", "mrr", "ndcg@10", "p@1"] and len(rows) == 4
    assert (tmp_path / "report" / "run.txt").read_text().startswith("coffee Q0 coffee.jpg 1 ")
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("data:image/png") == 3 and "Worst queries by mrr" in page
    assert page.count("grade 5") >= 2  # each mirrored copy's source, judged 5

    with pytest.raises(LookalikeError, match="judge no image"):
        evaluate_collection(coll, queries, {"coffee": {"elsewhere/x.jpg": 5}})


def test_evaluate_command(tmp_path: Path, photo_dir: Path, query_set) -> None:  # type: ignore[no-untyped-def]
    queries, qrels = query_set
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"id": q.id, "image": str(q.image),
                                         "crop": list(q.crop) if q.crop else None}) + "\n"
                             for q in queries))
    qrels_file = tmp_path / "qrels.txt"
    qrels_file.write_text("".join(f"{q} 0 {d} {g}\n" for q, docs in qrels.items()
                                  for d, g in docs.items()))
    cli = [sys.executable, "-m", "lookalike.cli"]
    subprocess.run([*cli, "index", str(photo_dir), "-c", str(tmp_path / "c"), "--no-progress"],
                   check=True, capture_output=True)
    result = subprocess.run([*cli, "evaluate", "-c", str(tmp_path / "c"), "--queries", str(qfile),
                             "--qrels", str(qrels_file), "--report", str(tmp_path / "r")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "mrr          1.0000" in result.stdout
    assert (tmp_path / "r" / "per_query.csv").is_file()


def test_leave_one_out_on_a_labelled_folder(tmp_path: Path, samples, encoder) -> None:  # type: ignore[no-untyped-def]
    """Three classes, each a photo and two edited copies: each image's class-mates rank first."""
    root = tmp_path / "labelled"
    for stem in ("chelsea", "coffee", "rocket"):
        (root / stem).mkdir(parents=True)
        img = Image.open(next(p for p in samples if p.stem == stem)).convert("RGB")
        w, h = img.size
        img.save(root / stem / "original.jpg")
        ImageOps.mirror(img).save(root / stem / "mirrored.jpg", quality=60)
        img.crop((w // 10, h // 10, w, h)).save(root / stem / "cropped.jpg")
    coll = Collection.create(tmp_path / "coll", encoder=encoder)
    coll.index_folder(root)
    result = leave_one_out(coll, metrics=["mrr", "map", "r@2"])
    assert len(result.hits) == 9
    assert all(q not in [h.id for h in hits] for q, hits in result.hits.items())
    assert result.mean == {"mrr": 1.0, "map": 1.0, "r@2": 1.0}

    flat = Collection.create(tmp_path / "flat", encoder=encoder)
    flat.index_folder(root / "coffee")
    with pytest.raises(LookalikeError, match="two class subfolders"):
        leave_one_out(flat)


def test_report_with_a_calibration_section(tmp_path: Path, photo_dir: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    from lookalike.calibration import calibrate_collection

    coll = Collection.create(tmp_path / "coll", encoder=encoder)
    coll.index_folder(photo_dir)
    queries, qrels = [], {}
    for n, image_id in enumerate(coll.ids() * 2):  # two edited copies of each photo
        edited = tmp_path / f"q{n}.jpg"
        image = Image.open(photo_dir / image_id)
        (ImageOps.mirror(image) if n % 2 else ImageOps.grayscale(image)).save(edited)
        queries.append(Query(f"q{n}", edited))
        qrels[f"q{n}"] = {doc: 5 if doc == image_id else 1 for doc in coll.ids()}
    result = evaluate_collection(coll, queries, qrels, metrics=["mrr"])
    run = calibrate_collection(coll, queries, qrels, model="isotonic", depth=6)
    assert run.report["fit_queries"] == run.report["test_queries"] == len(queries) // 2
    assert coll.calibration is None  # assessing does not change the collection
    write_report(result, tmp_path / "report", calibration=run)
    figures = json.loads((tmp_path / "report" / "calibration.json").read_text())
    assert figures["mae"] >= 0 and -1 <= figures["spearman"] <= 1
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Calibrated grades (isotonic, held-out queries)" in page
    assert page.count("data:image/png") == 4  # the three plots and the reliability plot
