"""The local-feature index finds the source of a detail too small for the embeddings'
shortlist, follows the collection as it changes, and verifies nothing without shared
content."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

pytest.importorskip("cv2")

from lookalike import Collection
from lookalike.errors import LookalikeError
from lookalike.images import decode
from lookalike.local_features import QUERY_WORDS, Words, describe, shipped_vocabulary


def _folder(root: Path, samples: list[Path]) -> Path:
    """The sample photos, and look-alike distractors that hold no copy of any part: each
    mirrored, and mirrored across its diagonal (no rotation or scaling undoes either)."""
    root.mkdir()
    for path in samples:
        image = decode(path).image
        image.save(root / path.name, quality=92)
        ImageOps.mirror(image).save(root / f"mirror-{path.stem}.jpg", quality=92)
        image.transpose(Image.Transpose.TRANSPOSE).save(root / f"transposed-{path.stem}.jpg",
                                                        quality=92)
    return root


@pytest.fixture()
def collections(tmp_path: Path, samples: list[Path], encoder):  # type: ignore[no-untyped-def]
    """The same folder as a collection without, and one with, local features."""
    folder = _folder(tmp_path / "photos", samples)
    plain = Collection.create(tmp_path / "plain.lk", encoder=encoder)
    plain.index_folder(folder)
    local = Collection.create(tmp_path / "local.lk", encoder=encoder, local_features=True)
    local.index_folder(folder)
    yield folder, plain, local
    plain.close()
    local.close()


def _detail(path: Path, fraction: float = 0.1) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A square crop of `fraction` of the long side, where the photo has the most detail."""
    image = decode(path).image
    side = round(fraction * max(image.size))
    grey = np.asarray(image.convert("L"), np.float32)
    best, box = -1.0, (0, 0, side, side)
    for y in range(0, image.height - side, side // 2):
        for x in range(0, image.width - side, side // 2):
            patch = grey[y:y + side, x:x + side]
            texture = float(np.abs(np.diff(patch, axis=0)).mean())
            if texture > best:
                best, box = texture, (x, y, x + side, y + side)
    return image.crop(box), box


def test_words_survive_storage() -> None:
    rng = np.random.default_rng(0)
    words = Words(rng.integers(0, 8192, (50, 1)), rng.integers(0, 2**63, (50, 1), np.uint64),
                  rng.uniform(0, 1, (50, 2)).astype(np.float32) * [640, 480],
                  rng.integers(0, 256, (50, 2), np.uint8), (640, 480))
    back = Words.from_bytes(words.to_bytes())
    assert np.array_equal(back.words, words.words)
    assert np.array_equal(back.signatures, words.signatures)
    assert np.abs(back.points - words.points).max() < 0.01
    assert np.array_equal(back.poses, words.poses)
    assert back.size == (640, 480) and len(words.to_bytes()) == 12 + 16 * 50


@pytest.mark.parametrize("enlarge", [1, 4])
def test_small_detail_found_through_the_local_index_only(collections, samples: list[Path],  # type: ignore[no-untyped-def]
                                                         tmp_path: Path, enlarge: int) -> None:
    """A 10 % detail (and the same detail enlarged 4 x, as reposts do): the embeddings'
    shortlist of 3 misses its source; the local index puts it first, boxed where it lies."""
    _, plain, local = collections
    source = samples[1]  # brick: a repeated texture that embeddings blur together
    detail, box = _detail(source)
    query = tmp_path / "detail.png"
    detail.resize((detail.width * enlarge, detail.height * enlarge),
                  Image.Resampling.BICUBIC).save(query)
    shortlist = [h.id for h in plain.search(query, k=3)]
    assert source.name not in shortlist
    assert source.name not in [h.id for h in local.search(query, k=3)]  # no verification
    hits = local.search(query, k=3, verify=3)
    assert hits[0].id == source.name and (hits[0].inliers or 0) >= 8
    assert all(abs(a - b) <= 6 for a, b in zip(hits[0].box or (), box, strict=True))
    assert hits[0].score == pytest.approx(
        next(h.score for h in plain.search(query, k=40) if h.id == source.name), abs=1e-5)


def test_lookalike_without_shared_content_is_not_verified(collections, samples: list[Path],  # type: ignore[no-untyped-def]
                                                          tmp_path: Path) -> None:
    """A detail of a photo the collection does not hold verifies in none of its images,
    however alike they look; nor does a plain gradient."""
    folder, _, local = collections
    for name in (samples[3].name, f"mirror-{samples[3].stem}.jpg",
                 f"transposed-{samples[3].stem}.jpg"):
        (folder / name).unlink()
    local.index_folder(folder)
    detail, _ = _detail(samples[3], 0.25)
    detail.save(tmp_path / "absent.png")
    assert all(h.inliers is None for h in local.search(tmp_path / "absent.png", k=10,
                                                         verify=10))
    vocabulary = shipped_vocabulary()
    sky = Image.linear_gradient("L").convert("RGB").resize((200, 200))
    assert local.local is not None
    assert local.local.search(vocabulary.quantise(describe(sky), QUERY_WORDS)) == []


def test_follows_additions_and_removals(collections, samples: list[Path]) -> None:  # type: ignore[no-untyped-def]
    """Images added are found at once, removed ones never again, and the segments merge
    as they grow, holding each image's words once."""
    folder, _, coll = collections
    assert coll.local is not None
    vocabulary = shipped_vocabulary()
    detail, _ = _detail(samples[1], 0.25)
    words = vocabulary.quantise(describe(detail), QUERY_WORDS)

    def found() -> list[str]:
        owners = coll.catalog.vector_owners(np.array([m.vid for m in coll.local.search(words)]))
        return [o.image_id for o in owners.values()]

    assert samples[1].name in found()
    shutil.copy(samples[1], folder / "again.jpg")
    coll.index_paths([folder / "again.jpg"])
    assert {samples[1].name, "again.jpg"} <= set(found())
    (folder / samples[1].name).unlink()
    coll.index_paths([folder / samples[1].name])
    assert samples[1].name not in found() and "again.jpg" in found()
    for n in range(5):  # small commits, one segment each, merged as they come
        shutil.copy(samples[0], folder / f"copy-{n}.jpg")
        coll.index_paths([folder / f"copy-{n}.jpg"])
    info = coll.local.describe()
    segments = list((coll.path / "local").glob("seg-*"))
    assert len(segments) <= 3
    assert info["local_images"] >= len(coll) - 0  # each image once; removed ones until merged
    assert info["local_images"] <= len(coll) + 2
    with coll.catalog.transaction(bump=False) as db:  # words of another vocabulary
        coll.catalog.set_meta(db, "local_vocabulary", "0" * 16)
    with Collection.open(coll.path) as reopened, \
            pytest.raises(LookalikeError, match="another visual vocabulary"):
        _ = reopened.local
