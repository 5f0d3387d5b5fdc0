"""The CLI contract of DESIGN.md §2, through real subprocess calls."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lookalike.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, samples: list[Path]) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("photos")
    for path in samples:
        (root / path.name).write_bytes(path.read_bytes())
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    coll = root.parent / "coll"
    result = run("index", root, "-c", coll, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "10 added" in result.stdout and "1 failed" in result.stdout
    assert "skipped corrupt.png" in result.stderr
    return root, coll


def test_search_json(indexed: tuple[Path, Path]) -> None:
    root, coll = indexed
    result = run("search", "-c", coll, root / "coffee.jpg", "-k", "3", "--json")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["id"] == "coffee.jpg" and hits[0]["score"] > 0.99
    assert Path(hits[0]["path"]) == (root / "coffee.jpg").resolve()
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_update_named_files(indexed: tuple[Path, Path], tmp_path: Path, samples: list[Path]
                            ) -> None:
    root, coll = indexed
    copy = tmp_path / "coll"
    subprocess.run(["cp", "-r", str(coll), str(copy)], check=True)
    (root / "zz-new.jpg").write_bytes(samples[0].read_bytes())
    try:
        result = run("update", "-c", copy, root / "zz-new.jpg", "--no-progress")
    finally:
        (root / "zz-new.jpg").unlink()
    assert result.returncode == 0, result.stderr
    assert "1 reused" in result.stdout and "0 unchanged" in result.stdout


def test_crop_and_like(indexed: tuple[Path, Path]) -> None:
    root, coll = indexed
    crop = run("search", "-c", coll, root / "chelsea.jpg", "--crop", "140,20,320,200", "--json")
    assert json.loads(crop.stdout)[0]["id"] == "chelsea.jpg"
    like = run("search", "-c", coll, "--like", "rocket.jpg", "-k", "4")
    assert like.returncode == 0 and len(like.stdout.splitlines()) == 4
    assert "rocket.jpg" not in like.stdout


def test_batch_search_writes_a_trec_run(indexed: tuple[Path, Path], tmp_path: Path) -> None:
    root, coll = indexed
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        json.dumps({"id": "q1", "image": str(root / "rocket.jpg"), "crop": None}) + "\n"
        + json.dumps({"id": "q2", "image": str(root / "chelsea.jpg"),
                      "crop": [140, 20, 320, 200]}) + "\n"
    )
    run_file = tmp_path / "out" / "run.txt"
    result = run("search", "-c", coll, "--queries", queries, "--run", run_file, "-k", "5")
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in run_file.read_text().splitlines()]
    assert len(lines) == 10 and all(len(f) == 6 and f[1] == "Q0" for f in lines)
    assert lines[0][:4] == ["q1", "Q0", "rocket.jpg", "1"]
    assert lines[5][:4] == ["q2", "Q0", "chelsea.jpg", "1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "-c", "{coll}", "{root}/absent.jpg"], "absent.jpg: no such file"),
        (["search", "-c", "{coll}", "{root}/corrupt.png"], "corrupt.png"),
        (["search", "-c", "{coll}", "{root}/coins.jpg", "--crop", "0,0,9999,10"], "outside"),
        (["search", "-c", "{coll}", "{root}/coins.jpg", "--crop", "1,2,3"], "four integers"),
        (["search", "-c", "{root}/nothing", "{root}/coins.jpg"], "not a lookalike collection"),
        (["search", "-c", "{coll}", "--like", "nope.jpg"], "no such id"),
        (["search", "-c", "{coll}"], "give an IMAGE"),
        (["search", "-c", "{coll}", "--queries", "{root}/coins.jpg", "--run", "{root}/r"],
         "coins.jpg:1"),
        (["index", "{root}", "-c", "{coll}", "--model", "mobilenet_v2"], "built with encoder"),
        (["index", "{root}/absent", "-c", "{coll}"], "not a directory"),
    ],
)
def test_bad_input_exits_2_with_one_line(indexed: tuple[Path, Path], args: list[str],
                                         message: str) -> None:
    root, coll = indexed
    result = run(*[a.format(root=root, coll=coll) for a in args])
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_writes_a_page(tmp_path: Path) -> None:
    result = run("demo", "--out", tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    page = Path(result.stdout.strip().splitlines()[-1])
    assert page.is_file()
    text = page.read_text()
    assert text.count("<section>") == 6 and "coffee.jpg" in text and "data:image/jpeg" in text
    assert "Crop query: the cat's face: chelsea.jpg" in result.stdout
    assert "verified by keypoints (box: where it lies): coffee.jpg" in result.stdout
    assert "verified: " in text


def test_metrics_command(tmp_path: Path) -> None:
    run_file, qrels = tmp_path / "run.txt", tmp_path / "qrels.txt"
    run_file.write_text("q1 Q0 a 1 0.9 t\nq1 Q0 b 2 0.8 t\nq2 Q0 c 1 0.5 t\n")
    qrels.write_text("q1 0 b 3\nq2 0 c 1\nq2 0 d 2\n")
    result = run("metrics", run_file, qrels, "-m", "mrr", "-m", "p@1", "--json", "--per-query")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["queries"] == 2 and doc["mean"]["mrr"] == 0.75 and doc["mean"]["p@1"] == 0.5
    assert doc["per_query"]["mrr"] == {"q1": 0.5, "q2": 1.0}
    table = run("metrics", run_file, qrels, "-m", "map", "--threshold", "2")
    assert table.returncode == 0 and "map" in table.stdout and "all" in table.stdout


@pytest.mark.parametrize(
    ("run_text", "qrels_text", "extra", "message"),
    [
        ("q1 Q0 a 1 0.9\n", "q1 0 a 1\n", [], "run.txt:1: expected QID Q0 DOCID RANK SCORE TAG"),
        ("q1 Q0 a 1 nan t\n", "q1 0 a 1\n", [], "NaN"),
        ("q1 Q0 a 1 1 t\nq1 Q0 a 2 0 t\n", "q1 0 a 1\n", [], "'a' twice"),
        ("q1 Q0 a 1 1 t\n", "q1 0 a high\n", [], "qrels.txt:1: grade 'high'"),
        ("q1 Q0 a 1 1 t\n", "q1 0 a 1\n", ["-m", "ndcg@x"], "unknown metric"),
    ],
)
def test_metrics_bad_files(tmp_path: Path, run_text: str, qrels_text: str, extra: list[str],
                           message: str) -> None:
    (tmp_path / "run.txt").write_text(run_text)
    (tmp_path / "qrels.txt").write_text(qrels_text)
    result = run("metrics", tmp_path / "run.txt", tmp_path / "qrels.txt", *extra)
    assert result.returncode == 2 and message in result.stderr


def test_reindex_switches_the_index_and_search_takes_its_options(
        indexed: tuple[Path, Path], tmp_path: Path) -> None:
    _root, coll = indexed
    copy = tmp_path / "coll"
    subprocess.run(["cp", "-r", str(coll), str(copy)], check=True)
    before = run("search", "-c", copy, "--like", "rocket.jpg", "-k", "4").stdout
    switched = run("index", "-c", copy, "--reindex", "hnsw16")
    assert switched.returncode == 0, switched.stderr
    assert "10 images, 10 vectors (1.0 an image) in index hnsw16" in switched.stdout
    after = run("search", "-c", copy, "--like", "rocket.jpg", "-k", "4", "--ef", "32")
    assert after.returncode == 0 and after.stdout == before
    wrong = run("search", "-c", copy, "--like", "rocket.jpg", "--nprobe", "4")
    assert wrong.returncode == 2 and "hnsw takes ef" in wrong.stderr
    bad = run("index", "-c", copy, "--reindex", "hnsw")
    assert bad.returncode == 2 and "unknown index spec 'hnsw'" in bad.stderr


def test_calibrate_and_min_grade_errors_are_one_line(indexed: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    root, coll = indexed
    ungraded = run("search", "-c", coll, "--like", "rocket.jpg", "--min-grade", "3")
    assert ungraded.returncode == 2 and "not calibrated" in ungraded.stderr
    queries, qrels = tmp_path / "q.jsonl", tmp_path / "qrels.txt"
    queries.write_text("".join(json.dumps({"id": f"q{i}", "image": str(p)}) + "\n"
                               for i, p in enumerate(sorted(root.glob("*.jpg")))))
    qrels.write_text("q0 0 rocket.jpg 5\nq1 0 coffee.jpg 3\n")
    few = run("calibrate", "-c", coll, "--queries", queries, "--qrels", qrels)
    assert few.returncode == 2 and "too few relevant judged hits" in few.stderr
    assert len(few.stderr.strip().splitlines()) == 1


def test_train_writes_a_model_that_index_uses(samples: list[Path], tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "labelled"
    for photo in samples[:4]:
        (root / photo.stem).mkdir(parents=True)
        image = Image.open(photo).convert("RGB")
        for i in range(4):  # crops of one photo a label
            w, h = image.size
            image.crop((i * w // 40, i * h // 40, w - i * w // 50, h)).save(
                root / photo.stem / f"{i}.jpg")
    model = tmp_path / "model"
    trained = run("train", root, "--out", model, "--epochs", "2", "--batch-size", "8",
                  "--val-fraction", "0.5")
    assert trained.returncode == 0, trained.stderr
    assert "held out: 2 groups, 8 images never trained on" in trained.stdout
    assert (model / "curve.png").is_file()
    # crops of one photo are already each other's nearest: nothing to gain, and it says so
    assert "did not beat the frozen encoder" in trained.stderr
    indexed = run("index", root, "-c", tmp_path / "coll", "--model", model, "--no-progress")
    assert indexed.returncode == 0, indexed.stderr
    assert "16 images, 16 vectors" in indexed.stdout
    gated = run("train", root, "--out", tmp_path / "m3", "--epochs", "1", "--batch-size", "8",
                "--val-fraction", "0.5", "--require-gain")
    assert gated.returncode == 1 and "did not beat the frozen encoder" in gated.stderr
    bad = run("train", root / samples[0].stem, "--out", tmp_path / "m2")
    assert bad.returncode == 2 and "at least two labelled subfolders" in bad.stderr


def test_self_supervised_training_needs_no_labels(samples: list[Path], tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "unlabelled"
    root.mkdir()
    for photo in samples[:6]:
        image = Image.open(photo).convert("RGB")
        for i in range(3):
            w, h = image.size
            image.crop((i * w // 10, 0, w - i * w // 12, h)).save(root / f"{photo.stem}{i}.jpg")
    trained = run("train", root, "--out", tmp_path / "ssl", "--mode", "self-supervised",
                  "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.3")
    assert trained.returncode == 0, trained.stderr
    # held-out images validate by finding an augmented view of themselves
    assert "held out: 8 groups, 16 images never trained on" in trained.stdout
    assert (tmp_path / "ssl" / "lookalike-model.json").is_file()


def test_verify_marks_the_source_of_a_copy(indexed: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    from PIL import Image

    root, coll = indexed
    copy = tmp_path / "copy.jpg"
    Image.open(root / "coffee.jpg").convert("RGB").crop((260, 120, 460, 300)).save(copy)
    hits = json.loads(run("search", "-c", coll, copy, "-k", "3", "--verify", "5",
                          "--json").stdout)
    assert hits[0]["id"] == "coffee.jpg" and hits[0]["inliers"] >= 8
    assert "inliers" not in hits[1]
    text = run("search", "-c", coll, copy, "-k", "1", "--verify", "5").stdout
    assert "coffee.jpg" in text and "verified" in text


def test_run_file_keeps_a_reranked_order(tmp_path: Path) -> None:
    from lookalike.hits import Hit
    from lookalike.trec import read_run, write_run

    hits = [Hit(1, "copy", "p", 0.41, (0, 0, 1, 1), inliers=30),
            Hit(2, "b", "p", 0.9, (0, 0, 1, 1)), Hit(3, "c", "p", 0.8, (0, 0, 1, 1))]
    write_run(tmp_path / "run.txt", {"q": hits})
    scores = read_run(tmp_path / "run.txt")["q"]
    assert sorted(scores, key=lambda d: -scores[d]) == ["copy", "b", "c"]
    assert scores["copy"] == pytest.approx(0.41)


def _modules_after(*args: str | Path) -> tuple[set[str], str]:
    """The heavy libraries a CLI call imported, and its stdout."""
    code = ("import sys; from lookalike.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = ('torch', 'timm', 'torchvision', 'onnxruntime')\n"
            "print('IMPORTED', *sorted(m for m in heavy if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)],
                            capture_output=True, text=True, timeout=300)
    *out, last = result.stdout.strip().splitlines()
    assert last.startswith("IMPORTED"), result.stderr
    return set(last.split()[1:]), "\n".join(out)


def test_search_on_a_cached_model_imports_neither_torch_nor_timm(
        indexed: tuple[Path, Path]) -> None:
    root, coll = indexed
    imported, out = _modules_after("search", "-c", coll, root / "coffee.jpg", "-k", "1")
    assert "coffee.jpg" in out
    assert imported == {"onnxruntime"}
    imported, out = _modules_after("search", "-c", coll, "--like", "rocket.jpg", "-k", "1")
    assert out.strip() and imported == set()  # --like loads no model at all
    imported, _ = _modules_after("search", "-c", coll)  # a usage error: nothing heavy
    assert imported == set()


def test_local_features_find_a_small_detail(samples: list[Path], tmp_path: Path) -> None:
    """`index --local-features` says what they take; `search --verify` finds the source of
    a 50 px detail through them, boxed where it lies."""
    pytest.importorskip("cv2")
    from PIL import Image

    root = tmp_path / "photos"
    root.mkdir()
    for path in samples:
        (root / path.name).write_bytes(path.read_bytes())
    result = run("index", root, "-c", tmp_path / "coll", "--local-features", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "local features" in result.stdout and "points an image" in result.stdout
    detail = tmp_path / "detail.png"
    Image.open(root / "brick.jpg").convert("RGB").crop((200, 200, 251, 251)).save(detail)
    hits = json.loads(run("search", "-c", tmp_path / "coll", detail, "-k", "3", "--verify",
                          "2", "--json").stdout)
    assert hits[0]["id"] == "brick.jpg" and hits[0]["inliers"] >= 4
    assert all(abs(a - b) <= 6 for a, b in zip(hits[0]["box"], (200, 200, 251, 251),
                                                strict=True))
