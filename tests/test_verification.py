"""Geometric verification finds a photo's crops and partial copies in it, and only there."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("cv2")

from lookalike.images import decode
from lookalike.verification import MIN_INLIERS, keypoints, verify


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
