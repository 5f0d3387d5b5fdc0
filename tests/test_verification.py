"""Verification finds a photo's crops and partial copies in it, and only there: by keypoints,
or by pixels where there are none."""

from __future__ import annotations

import io
from pathlib import Path

import faiss
import pytest
from PIL import Image

pytest.importorskip("cv2")

from lookalike.images import decode
from lookalike.verification import (
    MAX_PIXEL_ERROR,
    MIN_INLIERS,
    Template,
    keypoints,
    locate,
    one_thread,
    thumbnails,
    verify,
)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def test_crop_verifies_in_its_source_and_is_placed_there(samples: list[Path]) -> None:
    source = decode(samples[1]).image
    box = (100, 60, 100 + source.width // 3, 60 + source.height // 3)
    match = verify(keypoints(source.crop(box)), keypoints(source))
    assert match is not None and match.inliers >= 3 * MIN_INLIERS
    assert all(abs(a - b) <= 6 for a, b in zip(match.box, box, strict=True))


def test_rotated_rescaled_reencoded_copy_verifies(samples: list[Path]) -> None:
    source = decode(samples[4]).image
    part = source.crop((40, 30, 40 + source.width // 2, 30 + source.height // 2))
    copy = _jpeg(part.rotate(12, expand=True).resize((200, 170)), quality=40)
    match = verify(keypoints(copy), keypoints(source))
    assert match is not None and match.inliers >= MIN_INLIERS


def test_crop_does_not_verify_in_other_photos(samples: list[Path]) -> None:
    source = decode(samples[2]).image
    crop = keypoints(source.crop((50, 50, 50 + source.width // 3, 50 + source.height // 3)))
    for other in samples[:2] + samples[3:]:
        assert verify(crop, keypoints(decode(other).image)) is None, other.name


def test_large_image_is_verified_in_working_pixels_and_boxed_in_its_own() -> None:
    from lookalike.demo import samples_dir

    source = decode(samples_dir() / "astronaut.jpg").image.resize((2048, 2048))
    box = (512, 256, 1280, 1024)
    match = verify(keypoints(source.crop(box)), keypoints(source))
    assert match is not None
    assert all(abs(a - b) <= 16 for a, b in zip(match.box, box, strict=True))


def test_small_crops_keep_the_keypoints_near_their_edges(samples: list[Path]) -> None:
    """ORB alone skips a 31 px border, most of a 96 px crop; mirrored edges bring it back, and
    with it the crop verifies wherever it is cut (without: 6 of these 9)."""
    source = decode(samples[3]).image  # chelsea, 451 x 300
    found = keypoints(source)
    for fx in (0.2, 0.45, 0.7):
        for fy in (0.2, 0.45, 0.7):
            x, y = int(fx * source.width), int(fy * source.height)
            crop = keypoints(source.crop((x, y, x + 96, y + 96)))
            near_edge = (crop.points.min(1) < 31) | (crop.points.max(1) >= 96 - 31)
            assert near_edge.sum() > len(crop) / 2
            match = verify(crop, found)
            assert match is not None and abs(match.box[0] - x) <= 4, (x, y)


def test_a_quiet_crop_is_placed_by_its_pixels_where_keypoints_see_nothing(sky) -> None:  # type: ignore[no-untyped-def]
    source, box = sky(1), (200, 100, 320, 220)
    crop = _jpeg(source.crop(box), quality=90)
    assert verify(keypoints(crop), keypoints(source)) is None
    placed = locate(Template(crop), thumbnails(source))
    assert placed is not None and placed.error < MAX_PIXEL_ERROR / 2
    assert all(abs(a - b) <= 8 for a, b in zip(placed.box, box, strict=True))
    for seed in (2, 3, 4):  # other skies of the same kind of colours
        assert locate(Template(crop), thumbnails(sky(seed))) is None, seed


def test_pixels_place_a_rescaled_crop_and_a_whole_copy(samples: list[Path]) -> None:
    source = decode(samples[2]).image  # coffee, 400 x 400
    box = (40, 200, 200, 360)
    placed = locate(Template(_jpeg(source.crop(box).resize((112, 112)), 80)), thumbnails(source))
    assert placed is not None
    assert all(abs(a - b) <= 10 for a, b in zip(placed.box, box, strict=True))
    whole = locate(Template(_jpeg(source.resize((250, 250)), 60)), thumbnails(source))
    assert whole is not None and whole.box == (0, 0, *source.size)
    for other in samples[:2] + samples[3:]:
        assert locate(Template(source.crop(box)), thumbnails(decode(other).image)) is None


def test_faiss_searches_on_one_thread_and_the_count_is_restored(
        samples: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A few thousand descriptors gain nothing from more threads, and on busy cores OpenMP's
    threads spin against each other (issue 16: 12 times slower a candidate)."""
    threads: list[int] = []

    class Recording(faiss.IndexBinaryFlat):  # type: ignore[misc]
        def search(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            threads.append(faiss.omp_get_max_threads())
            return super().search(*args, **kwargs)

    monkeypatch.setattr(faiss, "IndexBinaryFlat", Recording)
    source = decode(samples[1]).image
    query, found = keypoints(source.crop((100, 60, 300, 200))), keypoints(source)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(3)  # more than one, even on a one-core machine
    try:
        assert verify(query, found) is not None
        assert threads == [1]
        assert faiss.omp_get_max_threads() == 3
        with pytest.raises(ValueError), one_thread():  # restored when the search fails too
            assert faiss.omp_get_max_threads() == 1
            raise ValueError
        assert faiss.omp_get_max_threads() == 3
    finally:
        faiss.omp_set_num_threads(before)
