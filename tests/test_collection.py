from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lookalike import Collection, LookalikeError


def _index(coll_path: Path, root: Path, encoder) -> Collection:  # type: ignore[no-untyped-def]
    coll = (Collection.open(coll_path, encoder=encoder) if coll_path.exists()  # the session's
            else Collection.create(coll_path, encoder=encoder))
    coll.index_folder(root)
    return coll


def test_add_update_rename_delete(tmp_path: Path, photo_dir: Path, encoder, samples) -> None:  # type: ignore[no-untyped-def]
    coll_path = tmp_path / "coll"
    coll = Collection.create(coll_path, encoder=encoder)
    report = coll.index_folder(photo_dir)
    assert len(report.added) == 6 and "sub/" + samples[5].name in coll.ids()
    vector_before = coll.query_vector(like=samples[0].name)

    # Unchanged files are not embedded again.
    assert coll.index_folder(photo_dir).unchanged == 6

    # A rename reuses the vectors; a deletion drops the image; a changed file is re-embedded.
    os.rename(photo_dir / samples[0].name, photo_dir / "renamed.jpg")
    (photo_dir / samples[1].name).unlink()
    shutil.copy(samples[7], photo_dir / samples[2].name)
    report = coll.index_folder(photo_dir)
    assert report.renamed == ["renamed.jpg"]
    assert sorted(report.removed) == sorted([samples[0].name, samples[1].name])
    assert report.updated == [samples[2].name]
    np.testing.assert_array_equal(coll.query_vector(like="renamed.jpg"), vector_before)
    assert samples[1].name not in coll.ids() and len(coll) == 5
    hits = coll.search(samples[7], k=1)
    assert hits[0].id == samples[2].name and hits[0].score > 0.99

    # Deleted images never come back from a search, also after reopening.
    coll.close()
    with Collection.open(coll_path, encoder=encoder) as reopened:
        found = {h.id for h in reopened.search(samples[1], k=10)}
        assert samples[1].name not in found and len(found) == 5


def test_bad_images_are_recorded_and_the_rest_indexed(tmp_path: Path, photo_dir: Path,  # type: ignore[no-untyped-def]
                                                      encoder) -> None:
    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (photo_dir / "notes.txt").write_text("ignored: not an image suffix")
    (photo_dir / "moved.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(photo_dir / "pipe.png")  # reading it would wait forever
    coll = _index(tmp_path / "coll", photo_dir, encoder)
    failures = coll.failures()
    assert failures["moved.jpg"] == "cannot read: No such file or directory"
    assert failures["pipe.png"] == "not a regular file"
    assert "broken.jpg" in failures and len(coll) == 6
    assert "notes.txt" not in coll.catalog.images()
    # A failure is not retried until the file changes.
    assert coll.index_folder(photo_dir).failed == {}


def test_resume_after_a_crash_between_batches(tmp_path: Path, photo_dir: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    coll = Collection.create(tmp_path / "coll", encoder=encoder)

    def crash(batch_number: int) -> None:
        if batch_number == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        coll.index_folder(photo_dir, batch_size=2, after_batch=crash)
    coll.close()
    resumed = Collection.open(tmp_path / "coll", encoder=encoder)
    assert len(resumed) == 4  # two committed batches of two
    report = resumed.index_folder(photo_dir, batch_size=2)
    assert len(report.added) == 2 and report.unchanged == 4 and len(resumed) == 6
    # The stale index file was rebuilt: every image is searchable.
    assert len(resumed.search(like=resumed.ids()[0], k=10)) == 5


def test_exact_search_equals_numpy_brute_force(tmp_path: Path, photo_dir: Path, encoder,  # type: ignore[no-untyped-def]
                                               samples) -> None:
    coll = _index(tmp_path / "coll", photo_dir, encoder)
    ids = coll.ids()
    matrix = np.stack([coll.query_vector(like=i) for i in ids])
    query = encoder.encode(samples[8])
    sims = matrix @ query
    expected = [ids[i] for i in np.argsort(-sims)]
    hits = coll.search(samples[8], k=len(ids))
    assert [h.id for h in hits] == expected
    np.testing.assert_allclose([h.score for h in hits], np.sort(sims)[::-1], rtol=1e-5)
    l2 = coll.search(samples[8], k=3, metric="l2")
    assert [h.id for h in l2] == expected[:3]
    np.testing.assert_allclose([h.score for h in l2],
                               -np.sqrt(2 - 2 * np.sort(sims)[::-1][:3]), rtol=1e-4)


def test_like_excludes_itself_and_crop_finds_its_source(tmp_path: Path, photo_dir: Path,  # type: ignore[no-untyped-def]
                                                        encoder, samples) -> None:
    coll = _index(tmp_path / "coll", photo_dir, encoder)
    like = coll.search(like=samples[0].name, k=10)
    assert samples[0].name not in [h.id for h in like] and len(like) == 5
    chelsea = photo_dir / "chelsea.jpg"
    hits = coll.search(chelsea, crop=(140, 20, 320, 200), k=2)
    assert hits[0].id == "chelsea.jpg" and hits[0].score > hits[1].score + 0.3
    with pytest.raises(LookalikeError, match="outside"):
        coll.search(chelsea, crop=(0, 0, 5000, 10))
    with pytest.raises(LookalikeError, match="no such id"):
        coll.search(like="absent.jpg")


def test_other_encoder_is_refused(tmp_path: Path, photo_dir: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    _index(tmp_path / "coll", photo_dir, encoder).close()
    with pytest.raises(LookalikeError, match="built with encoder 'efficientnet_lite0'"):
        Collection.open(tmp_path / "coll", encoder="mobilenet_v2")
    with pytest.raises(LookalikeError, match="not a lookalike collection"):
        Collection.open(tmp_path / "elsewhere")
    with pytest.raises(LookalikeError, match="not a directory"):
        Collection.open(tmp_path / "coll").index_folder(tmp_path / "missing")


def _collages(tmp_path: Path, samples: list[Path]) -> tuple[Path, Path]:
    """Four collages of four photos in a 2x2 layout, and a query: one of the photos, which
    fills the bottom-left quadrant of collage 1 and the top-right one of collage 3."""
    from PIL import Image

    root = tmp_path / "collages"
    root.mkdir()
    photos = [Image.open(p).convert("RGB").resize((300, 300)) for p in samples[:8]]
    for i in range(4):
        collage = Image.new("RGB", (600, 600))
        for j, (x, y) in enumerate([(0, 0), (300, 0), (0, 300), (300, 300)]):
            collage.paste(photos[(i + j * 2) % 8], (x, y))
        collage.save(root / f"collage{i}.jpg")
    query = tmp_path / "q.jpg"
    photos[5].save(query)
    return root, query


def test_grid_regions_find_the_image_that_contains_a_detail(tmp_path: Path, samples,  # type: ignore[no-untyped-def]
                                                            encoder) -> None:
    """A detail of one photo, pasted small into a collage, is found through region vectors:
    the hit carries the region's box, and all of an image's vectors go when it goes."""
    root, query = _collages(tmp_path, samples)
    coll = Collection.create(tmp_path / "coll", encoder=encoder, regions="grid")
    coll.index_folder(root)
    assert coll.vector_count() == 4 * 14
    hits = coll.search(query, k=4)
    assert {h.id for h in hits[:2]} == {"collage1.jpg", "collage3.jpg"}
    best = hits[0]
    assert best.box in ((0, 300, 300, 600), (300, 0, 600, 300))  # the quadrant it fills

    # A region's match counts the collection's discount less than a whole image's would.
    assert coll.region_discount == 0.06  # grid's default
    coll.manifest = replace(coll.manifest, region_discount=0.0)
    undiscounted = {h.id: h for h in coll.search(query, k=4)}
    assert undiscounted[best.id].score == pytest.approx(best.score + 0.06, abs=1e-6)
    coll.manifest = replace(coll.manifest, region_discount=0.06)

    plain = Collection.create(tmp_path / "plain", encoder=encoder)
    plain.index_folder(root)
    assert best.score > plain.search(query, k=1)[0].score + 0.1

    # The other way round: a collage as the query, split into regions, finds a single photo
    # better than its whole-image vector does.
    singles = Collection.create(tmp_path / "singles", encoder=encoder)
    shutil.copy(query, root / "single.jpg")
    singles.index_folder(root)
    collage = root / "collage1.jpg"
    split = singles.search(collage, k=len(singles), query_regions="grid:2")
    whole = singles.search(collage, k=len(singles))
    assert [h.id for h in split] != [h.id for h in whole]
    score = {h.id: h.score for h in split}
    assert score["single.jpg"] > {h.id: h.score for h in whole}["single.jpg"] + 0.1
    assert split[0].box == (0, 0, 600, 600)  # boxes stay in the indexed image
    (root / "single.jpg").unlink()
    coll.index_folder(root)
    assert coll.vector_count() == 4 * 14

    (root / best.id).unlink()
    coll.index_folder(root)
    assert coll.vector_count() == 3 * 14
    with pytest.raises(LookalikeError, match="unknown regions spec"):
        Collection.create(tmp_path / "bad", encoder=encoder, regions="grid:9")


def test_regions_at_a_lower_resolution_match_a_query_embedded_at_theirs(  # type: ignore[no-untyped-def]
        tmp_path: Path, samples, encoder) -> None:
    """`grid@128`: region vectors are embedded at 128 px and whole images at the model's
    224; each query vector is matched with the indexed vectors of its own size."""
    from PIL import Image

    root, query = _collages(tmp_path, samples)
    coll = Collection.create(tmp_path / "coll", encoder=encoder, regions="grid@128")
    assert coll.manifest.regions == "grid:3@128"
    coll.index_folder(root)
    assert coll.vector_count() == 4 * 14
    whole, region = coll.image_vectors("collage1.jpg")[:2]
    assert whole.box == (0, 0, 600, 600)
    collage = Image.open(root / "collage1.jpg").convert("RGB")
    small = encoder.at_size(128)
    assert float(small.encode(collage.crop(region.box)) @ region.vector) > 0.999
    assert float(encoder.encode(collage) @ whole.vector) > 0.999

    hits = coll.search(query, k=4)
    assert {h.id for h in hits[:2]} == {"collage1.jpg", "collage3.jpg"}
    assert hits[0].box in ((0, 300, 300, 600), (300, 0, 600, 300))
    # A whole indexed image matches itself at its own size: score ~1, not a 128 px vector's.
    same = coll.search(root / "collage2.jpg", k=1)[0]
    assert same.id == "collage2.jpg" and same.score > 0.999
    like = coll.search(like="collage2.jpg", k=3)
    assert "collage2.jpg" not in {h.id for h in like} and len(like) == 3
    # The query's own regions are embedded at both sizes too (proposals: from each size's
    # activations).
    split = coll.search(root / "collage1.jpg", k=4, query_regions="proposals:2")
    assert split[0].id == "collage1.jpg" and len(split) == 4
    with pytest.raises(LookalikeError, match="unknown regions spec"):
        Collection.create(tmp_path / "bad", encoder=encoder, regions="grid@8")


def test_proposals_follow_the_activations_and_find_a_small_detail(tmp_path: Path, samples,  # type: ignore[no-untyped-def]
                                                                   encoder) -> None:
    """A photo pasted at a quarter of the side onto a plain canvas: a proposal box lands on
    it, and the photo as a query finds its canvas through that region, beating the global
    vector."""
    from PIL import Image

    root = tmp_path / "canvases"
    root.mkdir()
    spots = [(40, 300), (330, 60), (200, 200), (20, 20)]
    for i, (x, y) in enumerate(spots):
        canvas = Image.new("RGB", (600, 600), (128 + 20 * i, 128, 128))
        canvas.paste(Image.open(samples[i]).convert("RGB").resize((150, 150)), (x, y))
        canvas.save(root / f"canvas{i}.png")
    coll = Collection.create(tmp_path / "coll", encoder=encoder, regions="proposals:4")
    assert coll.manifest.regions == "proposals:4"
    coll.index_folder(root)
    assert coll.vector_count() == 4 * 5
    for i, (x, y) in enumerate(spots):
        boxes = [r.box for r in coll.image_vectors(f"canvas{i}.png")[1:]]
        assert len(boxes) == 4
        inside = [max(0, min(b[2], x + 150) - max(b[0], x)) * max(0, min(b[3], y + 150)
                                                                 - max(b[1], y)) for b in boxes]
        assert max(inside) >= 0.6 * 150 * 150  # some proposal covers most of the photo

    hits = coll.search(Image.open(samples[1]).convert("RGB"), k=4)
    assert hits[0].id == "canvas1.png" and hits[0].box != (0, 0, 600, 600)
    plain = Collection.create(tmp_path / "plain", encoder=encoder)
    plain.index_folder(root)
    assert hits[0].score > plain.search(Image.open(samples[1]).convert("RGB"), k=1)[0].score


def test_damaged_files_give_clear_errors_or_are_rebuilt(tmp_path: Path, photo_dir: Path,  # type: ignore[no-untyped-def]
                                                        encoder) -> None:
    coll = _index(tmp_path / "coll", photo_dir, encoder)
    expected = [h.id for h in coll.search(like="coffee.jpg", k=5)]
    coll.close()
    (tmp_path / "coll" / "index" / "vectors.npy").write_bytes(b"garbage")  # derived: rebuilt
    with Collection.open(tmp_path / "coll") as reopened:
        assert [h.id for h in reopened.search(like="coffee.jpg", k=5)] == expected
    (tmp_path / "coll" / "manifest.json").write_text("{not json")
    with pytest.raises(LookalikeError, match=r"manifest\.json: malformed"):
        Collection.open(tmp_path / "coll")
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "coll", bad)
    (bad / "manifest.json").write_text(json.dumps({"format_version": 2, "index": "flat",
                                                "encoder": {"name": "x", "dim": 1}}))
    for name in ("catalog.sqlite-wal", "catalog.sqlite-shm"):
        (bad / name).unlink(missing_ok=True)
    (bad / "catalog.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(LookalikeError, match="not a usable catalog"):
        Collection.open(bad)


def test_ann_index_follows_updates_and_can_be_switched(tmp_path: Path, photo_dir: Path,  # type: ignore[no-untyped-def]
                                                       encoder) -> None:
    coll = Collection.create(tmp_path / "coll", encoder=encoder, index="HNSW8:ef=16")
    coll.index_folder(photo_dir)
    assert coll.manifest.index == "hnsw8:ef=16"
    expected = [h.id for h in coll.search(like="coffee.jpg", k=4)]
    rows = coll.index_info()["rows"]
    (photo_dir / "astronaut.jpg").rename(photo_dir / "new.jpg")
    coll.index_folder(photo_dir)  # renamed: the index is brought up to date, not rebuilt
    info = coll.index_info()
    assert (info["rows"], info["vectors"]) == (rows + 1, 6)  # a tombstone
    assert "astronaut.jpg" not in [h.id for h in coll.search(like="new.jpg", k=5)]
    assert [h.id for h in coll.search(like="coffee.jpg", k=4, options={"ef": 64})] == [
        i if i != "astronaut.jpg" else "new.jpg" for i in expected]
    with pytest.raises(LookalikeError, match=r"unknown search option.*nprobe"):
        coll.search(like="coffee.jpg", options={"nprobe": 2})
    coll.reindex("ivf4")  # from the stored vectors: the encoder is not needed
    coll.close()
    with Collection.open(tmp_path / "coll") as reopened:
        assert reopened.manifest.index == "ivf4"
        assert reopened.index_info()["spec"] == "ivf4"
        assert [h.id for h in reopened.search(like="coffee.jpg", k=4)] == [
            i if i != "astronaut.jpg" else "new.jpg" for i in expected]


def test_verify_puts_the_source_of_a_copy_first_with_its_box(tmp_path: Path, photo_dir: Path,  # type: ignore[no-untyped-def]
                                                             encoder) -> None:
    pytest.importorskip("cv2")
    from PIL import Image

    coll = _index(tmp_path / "coll", photo_dir, encoder)
    coffee = Image.open(photo_dir / "coffee.jpg").convert("RGB")
    box = (260, 120, 460, 300)
    copy = tmp_path / "copy.jpg"
    coffee.crop(box).rotate(8).save(copy, quality=50)
    (photo_dir / "chelsea.jpg").unlink()  # an indexed file gone since: left unverified

    hits = coll.search(copy, k=6, verify=6)
    assert hits[0].id == "coffee.jpg" and hits[0].inliers is not None
    assert all(abs(a - b) <= 20 for a, b in zip(hits[0].box, box, strict=True))
    assert [(h.inliers, h.pixel_error) for h in hits[1:]] == [(None, None)] * 5 and len(hits) == 6
    assert hits[0].to_dict()["inliers"] == hits[0].inliers
    # "More like this" verifies against the indexed file itself, which it leaves out.
    like = coll.search(like="coffee.jpg", k=3, verify=5)
    assert "coffee.jpg" not in [h.id for h in like]
    assert [h.inliers for h in like] == [None] * 3
    with pytest.raises(LookalikeError, match="verify"):
        coll.search(copy, verify=-1)


def test_verify_places_a_crop_of_sky_by_its_pixels(tmp_path: Path, encoder, sky) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("cv2")
    root = tmp_path / "skies"
    root.mkdir()
    for seed in range(1, 6):
        sky(seed).save(root / f"sky{seed}.jpg", quality=90)
    coll = _index(tmp_path / "coll", root, encoder)
    box = (200, 100, 320, 220)
    query = tmp_path / "part.jpg"
    sky(3).crop(box).save(query, quality=90)

    hits = coll.search(query, k=5, verify=5)
    assert hits[0].id == "sky3.jpg" and hits[0].inliers is None
    assert hits[0].pixel_error is not None and hits[0].pixel_error < 4
    assert all(abs(a - b) <= 8 for a, b in zip(hits[0].box, box, strict=True))
    assert hits[0].to_dict()["pixel_error"] == round(hits[0].pixel_error, 2)
    assert [h.pixel_error for h in hits[1:]] == [None] * 4


def test_a_search_within_some_images_finds_only_them(tmp_path: Path, photo_dir: Path,  # type: ignore[no-untyped-def]
                                                     encoder, samples) -> None:
    with Collection.create(tmp_path / "coll", encoder=encoder, regions="grid:2") as coll:
        coll.index_folder(photo_dir)
        everything = [h.id for h in coll.search(samples[0], k=6)]
        within = everything[2:5]
        hits = coll.search(samples[0], k=6, within=within)
        assert [h.id for h in hits] == within  # the same order, only those
        assert [h.id for h in coll.search(like=everything[0], k=3, within=within)] == within
        assert coll.search(samples[0], k=3, within=[]) == []
        many = coll.search_many([samples[0], samples[1]], k=2, within=within)
        assert all(h.id in within for hits in many for h in hits)
