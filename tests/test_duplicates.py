"""`lookalike duplicates`: copies of a photo found, named by what was done to them, grouped;
photos that only look alike are not."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from lookalike import Collection
from lookalike.duplicates import find_duplicates

# What each copy of chelsea.jpg (451 x 300) is, and the relation it must be found as.
COPIES = {
    "same.jpg": "identical",
    "half.png": "resized",
    "q30.jpg": "re-encoded",
    "mirror.png": "flipped",
    "turned.png": "rotated",
    "grey.png": "edited",
    "eye.png": "cropped",
    "corner-blurred.png": "cropped",
}


def _copies(original: Path, folder: Path) -> None:
    image = Image.open(original).convert("RGB")
    shutil.copy(original, folder / "same.jpg")
    image.resize((image.width // 2, image.height // 2)).save(folder / "half.png")
    image.save(folder / "q30.jpg", quality=30)
    ImageOps.mirror(image).save(folder / "mirror.png")
    image.transpose(Image.Transpose.ROTATE_90).save(folder / "turned.png")
    ImageOps.grayscale(image).convert("RGB").save(folder / "grey.png")
    image.crop((100, 30, 330, 250)).save(folder / "eye.png")  # 37 % of the area
    corner = image.crop((0, 0, 260, 180)).filter(ImageFilter.GaussianBlur(1.5))
    ImageDraw.Draw(corner).text((10, 10), "COPY", fill=(255, 255, 255))
    corner.save(folder / "corner-blurred.png")


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, samples: list[Path], encoder  # type: ignore[no-untyped-def]
               ) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    chelsea = next(p for p in samples if p.name == "chelsea.jpg")
    shutil.copy(chelsea, folder / "chelsea.jpg")
    _copies(chelsea, folder)
    for other in samples:  # distractors: other photos, one with a copy of its own
        if other.name != "chelsea.jpg":
            shutil.copy(other, folder / other.name)
    Image.open(folder / "coffee.jpg").resize((256, 171)).save(folder / "coffee-small.png")
    path = tmp_path_factory.mktemp("duplicates") / "coll"
    with Collection.create(path, encoder=encoder, regions="grid") as coll:
        coll.index_folder(folder)
    return path


def test_each_copy_is_found_named_and_grouped(collection: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    with Collection.open(collection, encoder=encoder) as coll:
        groups = find_duplicates(coll)
    by_size = sorted(groups, key=lambda g: -len(g.images))
    cat, coffee = by_size[0], by_size[1]
    assert set(cat.images) == {"chelsea.jpg", *COPIES}
    assert cat.keep in {"chelsea.jpg", "same.jpg"}  # the original, or its identical twin
    assert set(coffee.images) == {"coffee.jpg", "coffee-small.png"} and len(groups) == 2
    relations = {p.b if p.a == "chelsea.jpg" else p.a: p.relation for p in cat.pairs
                 if "chelsea.jpg" in (p.a, p.b)}
    found = {name: relations.get(name) for name in COPIES}
    assert found == COPIES
    eye = next(p for p in cat.pairs if "eye.png" in (p.a, p.b) and p.relation == "cropped")
    assert eye.a == "chelsea.jpg" and eye.box is not None
    assert all(abs(a - b) <= 12 for a, b in zip(eye.box, (100, 30, 330, 250), strict=True))


def test_look_alikes_are_grouped_only_when_asked(collection: Path, encoder  # type: ignore[no-untyped-def]
                                                 ) -> None:
    with Collection.open(collection, encoder=encoder) as coll:
        copies = {i for g in find_duplicates(coll) for i in g.images}
        alike = find_duplicates(coll, similar=True, min_score=0.3)
    assert "astronaut.jpg" not in copies  # a look-alike at most, never a copy
    assert any(p.relation == "similar" for g in alike for p in g.pairs)


def test_the_cli_writes_the_json_contract_csv_and_a_review_page(collection: Path,
                                                               tmp_path: Path) -> None:
    csv = tmp_path / "pairs.csv"
    result = subprocess.run([sys.executable, "-m", "lookalike.cli", "duplicates", "-c",
                             str(collection), "--json", "--csv", str(csv), "--html",
                             str(tmp_path / "review")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    groups = json.loads(result.stdout)["groups"]
    assert {"images", "keep", "pairs"} <= set(groups[0])
    pair = groups[0]["pairs"][0]
    assert set(pair) == {"a", "b", "relation", "probability", "box", "evidence"}
    assert all(0.5 <= p["probability"] <= 1 for g in groups for p in g["pairs"])
    lines = csv.read_text().splitlines()
    assert lines[0] == ("group,a,b,relation,probability,x0,y0,x1,y1,score,inliers,"
                        "pixel_error,agreement")
    assert len(lines) == 1 + sum(len(g["pairs"]) for g in groups)
    _review_page_shows_every_image(tmp_path / "review" / "index.html",
                                   sum(len(g["images"]) for g in groups))


def _review_page_shows_every_image(page: Path, images: int) -> None:
    """In Chromium when there is one: a figure an image, every thumbnail decoded."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    text = page.read_text()
    assert text.count("<figure>") == images and "cropped (of " in text
    if chromium is None:
        return
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium,
                                             args=["--headless", "--no-sandbox"])
        view = browser.new_page()
        view.goto(page.as_uri())
        widths = view.eval_on_selector_all("figure img", "imgs => imgs.map(i => i.naturalWidth)")
        assert len(widths) == images and min(widths) > 0
        browser.close()


def test_move_to_and_undo_put_every_byte_back(tmp_path: Path, samples: list[Path], encoder  # type: ignore[no-untyped-def]
                                              ) -> None:
    import hashlib

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    chelsea = next(p for p in samples if p.name == "chelsea.jpg")
    shutil.copy(chelsea, folder / "chelsea.jpg")
    image = Image.open(chelsea).convert("RGB")
    image.resize((225, 150)).save(folder / "sub" / "small.png")
    image.save(folder / "sub" / "q30.jpg", quality=30)
    shutil.copy(samples[0], folder / samples[0].name)  # no copy of it
    with Collection.create(tmp_path / "coll", encoder=encoder) as coll:
        coll.index_folder(folder)

    def digests() -> dict[str, str]:
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in folder.rglob("*") if p.is_file()}

    before = digests()

    def lookalike(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lookalike.cli", "duplicates", "-c",
                               str(tmp_path / "coll"), "--no-progress", *map(str, args)],
                              capture_output=True, text=True, timeout=300)

    inside = lookalike("--move-to", folder / "aside")
    assert inside.returncode == 2 and "inside the indexed folder" in inside.stderr
    moved = lookalike("--move-to", tmp_path / "aside")
    assert moved.returncode == 0, moved.stderr
    assert set(digests()) == {"chelsea.jpg", samples[0].name}
    aside = {p.relative_to(tmp_path / "aside").as_posix() for p in
             (tmp_path / "aside").rglob("*.*") if p.suffix != ".jsonl"}
    assert aside == {"sub/small.png", "sub/q30.jpg"}
    with Collection.open(tmp_path / "coll", encoder=encoder) as coll:
        assert sorted(coll.ids()) == sorted(["chelsea.jpg", samples[0].name])

    log = next((tmp_path / "aside").glob("lookalike-undo-*.jsonl"))
    undone = lookalike("--undo", log)
    assert undone.returncode == 0, undone.stderr
    assert digests() == before  # every file back, byte for byte
    with Collection.open(tmp_path / "coll", encoder=encoder) as coll:
        assert sorted(coll.ids()) == sorted(before)


def test_the_api_says_whether_an_image_is_already_there_and_as_what(
        collection: Path, samples: list[Path]) -> None:
    import io

    from fastapi.testclient import TestClient

    from lookalike.server import create_app

    chelsea = Image.open(next(p for p in samples if p.name == "chelsea.jpg")).convert("RGB")
    upload = io.BytesIO()
    ImageOps.mirror(chelsea).save(upload, "PNG")
    with TestClient(create_app(collection)) as client:
        copies = client.post("/api/duplicates", files={
            "image": ("new.png", upload.getvalue(), "image/png")}).json()["copies"]
        assert {"a": "new.png", "b": "chelsea.jpg", "relation": "flipped"}.items() <= next(
            c for c in copies if "chelsea.jpg" in (c["a"], c["b"])).items()
        eye = client.post("/api/duplicates", data={"like": "eye.png"}).json()["copies"]
        source = next(c for c in eye if c["a"] == "chelsea.jpg")
        assert source["b"] == "eye.png" and source["relation"] == "cropped" and source["box"]
        unrelated = io.BytesIO()
        Image.new("RGB", (300, 200), (20, 120, 200)).save(unrelated, "PNG")
        answer = client.post("/api/duplicates", files={
            "image": ("sky.png", unrelated.getvalue(), "image/png")})
        assert answer.status_code == 200 and answer.json()["copies"] == []
        assert client.post("/api/duplicates", data={"like": "gone.jpg"}).status_code == 404


def test_new_lists_only_the_copies_of_images_indexed_since_the_last_run(
        tmp_path: Path, samples: list[Path], encoder) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg", "rocket.jpg"):
        shutil.copy(next(p for p in samples if p.name == name), folder / name)
    Image.open(folder / "chelsea.jpg").save(folder / "chelsea-q30.jpg", quality=30)
    with Collection.create(tmp_path / "coll", encoder=encoder) as coll:
        coll.index_folder(folder)

    def groups(*args: str) -> list[dict]:  # type: ignore[type-arg]
        result = subprocess.run([sys.executable, "-m", "lookalike.cli", "duplicates", "-c",
                                 str(tmp_path / "coll"), "--json", "--no-progress", *args],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout)["groups"])

    assert [set(g["images"]) for g in groups()] == [{"chelsea.jpg", "chelsea-q30.jpg"}]
    Image.open(folder / "coffee.jpg").resize((200, 133)).save(folder / "coffee-small.png")
    with Collection.open(tmp_path / "coll", encoder=encoder) as coll:
        coll.index_paths([folder / "coffee-small.png"])
    assert [set(g["images"]) for g in groups("--new")] == [{"coffee.jpg", "coffee-small.png"}]
    assert groups("--new") == []  # nothing indexed since
    assert len(groups()) == 2  # a full run still sees them all


def test_index_says_how_many_new_images_have_a_plain_copy(tmp_path: Path, samples: list[Path]
                                                          ) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg", "rocket.jpg"):
        shutil.copy(next(p for p in samples if p.name == name), folder / name)

    def index() -> str:
        result = subprocess.run([sys.executable, "-m", "lookalike.cli", "index", str(folder),
                                 "-c", str(tmp_path / "coll"), "--no-progress"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "have a copy" not in index()
    chelsea = Image.open(folder / "chelsea.jpg")
    chelsea.resize((225, 150)).save(folder / "half.png")
    ImageOps.mirror(chelsea).save(folder / "mirror.jpg", quality=80)
    chelsea.crop((100, 30, 330, 250)).save(folder / "eye.png")  # a crop: not a plain copy
    shutil.copy(folder / "coffee.jpg", folder / "coffee-again.jpg")
    assert "3 of the images indexed now have a copy in the collection" in index()


def test_fit_probability_on_too_few_groups_is_one_clear_line(collection: Path,
                                                             tmp_path: Path) -> None:
    groups = tmp_path / "groups.csv"
    groups.write_text("image,group\nchelsea.jpg,cat\n" + "".join(
        f"{name},cat\n" for name in COPIES) + "coffee.jpg,\n")
    result = subprocess.run([sys.executable, "-m", "lookalike.cli", "duplicates", "-c",
                             str(collection), "--no-progress", "--fit-probability",
                             str(groups)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "too few to hold half" in result.stderr
    assert not (collection / "copy-probability.json").exists()  # nothing half-fitted kept
