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


def test_ukbench_and_class_folder_judgements(tmp_path: Path) -> None:
    from PIL import Image

    from lookalike.datasets.loaders import class_folder_judgements, ukbench_judgements

    flat = tmp_path / "ukbench"
    flat.mkdir()
    for i in range(8):
        Image.new("RGB", (4, 4)).save(flat / f"ukbench{i:05d}.jpg")
    out = ukbench_judgements(flat, tmp_path / "u")
    qrels = read_qrels(out / "qrels.txt")
    assert qrels["ukbench00005.jpg"] == {"ukbench00004.jpg": 1, "ukbench00006.jpg": 1,
                                         "ukbench00007.jpg": 1}
    assert read_queries(out / "queries.jsonl")[0].image == (flat / "ukbench00000.jpg").resolve()
    with pytest.raises(LookalikeError, match="groups of 3"):
        ukbench_judgements(flat, tmp_path / "x", group_size=3)

    for label in ("cat", "dog"):
        (tmp_path / "pets" / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (4, 4)).save(tmp_path / "pets" / label / f"{i}.png")
    out = class_folder_judgements(tmp_path / "pets", tmp_path / "p")
    assert read_qrels(out / "qrels.txt")["cat_0.png"] == {"cat/1.png": 1}


def test_emoji_grades_and_missing_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lookalike.datasets.builders import emoji_grade

    face = "smileys_emotion/face_smiling/1f600/1f600"
    assert emoji_grade(face, face) == 5
    wave = "people_body/hand_fingers_open/1f44b/1f44b"
    assert emoji_grade(wave, "people_body/hand_fingers_open/1f44b/1f44b-1f3fb") == 4
    assert emoji_grade(face, "smileys_emotion/face_smiling/1f601/1f601") == 3
    assert emoji_grade(face, "smileys_emotion/face_hand/1f917/1f917") == 1
    assert emoji_grade(face, wave) == 0
    monkeypatch.setenv("LOOKALIKE_EMOJI_DIR", str(tmp_path / "none"))
    with pytest.raises(LookalikeError, match="npm install --prefix"):
        build_dataset("emoji", tmp_path / "e")


def test_emoji_set_when_installed(tmp_path: Path) -> None:
    from lookalike.datasets.builders import emoji_dir

    if not (emoji_dir() / "node_modules" / "emoji-datasource").is_dir():
        pytest.skip("npm install --prefix ~/.cache/lookalike/emoji emoji-datasource ...")
    out = build_dataset("emoji", tmp_path / "e", db_size=60, queries=10)
    splits = json.loads((out / "splits.json").read_text())
    assert not set(splits["test"]) & set(splits["train"])
    qrels = read_qrels(out / "qrels.txt")
    assert sum(1 for docs in qrels.values() for g in docs.values() if g == 5) == 10


def test_revisited_ground_truth(tmp_path: Path) -> None:
    import pickle

    from PIL import Image

    from lookalike.datasets.loaders import revisited_judgements

    jpg = tmp_path / "jpg"
    jpg.mkdir()
    for name in ("all_souls_1", "all_souls_2", "radcliffe_1", "query_1"):
        Image.new("RGB", (40, 30)).save(jpg / f"{name}.jpg")
    gnd = {"imlist": ["all_souls_1", "all_souls_2", "radcliffe_1"], "qimlist": ["query_1"],
           "gnd": [{"bbx": [2.4, 3.6, 50.0, 20.2], "easy": np.array([0]),
                    "hard": np.array([1]), "junk": np.array([2])}]}
    (tmp_path / "gnd.pkl").write_bytes(pickle.dumps(gnd))
    out = revisited_judgements(jpg, tmp_path / "gnd.pkl", tmp_path / "j")
    assert read_qrels(out / "qrels.txt") == {
        "query_1": {"all_souls_1.jpg": 5, "all_souls_2.jpg": 3}}
    (query,) = read_queries(out / "queries.jsonl")
    assert query.crop == (2, 3, 40, 21)  # rounded outwards, clipped to the 40x30 image

    class Sneaky:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("ran",))

    (tmp_path / "bad.pkl").write_bytes(pickle.dumps({"imlist": Sneaky()}))
    with pytest.raises(LookalikeError, match=r"bad.pkl: not a revisited .*builtins.print"):
        revisited_judgements(jpg, tmp_path / "bad.pkl", tmp_path / "b")


def test_copies_set_has_every_copy_kind_and_leaves_out_variants_and_patterns(
        tmp_path: Path) -> None:
    """Two photos of noise (9 tiles each); a recoloured variant of one and a tiled pattern
    must add no tile, since their tiles would be copies the truth does not know."""
    pytest.importorskip("cv2")
    from PIL import Image

    from lookalike.copy_truth import read_truth
    from lookalike.datasets.copies import FAMILIES, build_copies

    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()

    def noise(height: int, width: int) -> Image.Image:
        small = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)

    first = noise(1200, 1600)
    first.save(photos / "first.png")
    noise(1200, 1600).save(photos / "second.png")
    recoloured = np.asarray(first)[:, :, ::-1] * 0.8
    Image.fromarray(recoloured.astype(np.uint8)).save(photos / "first_recoloured.png")
    patch = np.asarray(noise(160, 160))
    Image.fromarray(np.tile(patch, (8, 10, 1))).save(photos / "pattern.png")

    out = build_copies(tmp_path / "set", db_size=0, queries=100, folders=(photos,))
    truth = read_truth(out / "groups.csv")
    groups = {g for g in truth.group.values() if g is not None}
    assert len(groups) == 18  # the two noise photos' tiles, nothing from the others
    assert len(truth.group) == 18 * (1 + len(FAMILIES))
    assert all((out / "database" / image).stat().st_size > 0 for image in truth.group)
    group = next(iter(groups))
    members = {truth.family[i]: i for i, g in truth.group.items() if g == group}
    assert set(members) == {"original", *FAMILIES}
    folder = out / "database"
    original = (folder / members["original"]).read_bytes()
    assert (folder / members["identical"]).read_bytes() == original
    sizes = {family: Image.open(folder / image).size for family, image in members.items()}
    assert sizes["original"] == (640, 480) and sizes["resized"] == (320, 240)
    assert sizes["rotated"] == (480, 640) and sizes["crop25-blur-text"] == (320, 240)
    with_distractors = build_copies(tmp_path / "more", db_size=18 * 11, queries=9,
                                    folders=(photos,))
    again = read_truth(with_distractors / "groups.csv")
    assert sum(g is None for g in again.group.values()) == 9  # the tiles left over
