from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.errors import ImageError
from lookalike.images import (
    IMAGE_SUFFIXES,
    UNSUPPORTED_SUFFIXES,
    decode,
    parse_box,
    to_rgb,
    validate_box,
)


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG declaring a huge image, with almost no pixel data: a decompression bomb's
    header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


def _jpeg_bytes(img: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.jpg", b"", "not an image"),
        ("text.jpg", b"hello, I am not a JPEG\n" * 10, "not an image"),
        ("huge.png", _png_header_only(30000, 30000), "over the limit"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path: Path, name: str, content: bytes,
                                         reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError) as info:
        decode(path)
    assert str(path) in str(info.value)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    full = _jpeg_bytes(Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)))
    path = tmp_path / "cut.jpg"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg: cannot decode"):
        decode(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        decode(tmp_path / "absent.jpg")
    with pytest.raises(ImageError, match="not a file"):
        decode(tmp_path)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    image = decode(path).image
    assert image.mode == "RGB" and image.size == (40, 30)
    r, g, b = np.asarray(image).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


def test_16bit_png_is_rescaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    ramp = np.linspace(0, 65535, 256, dtype=np.uint16)[None, :].repeat(4, axis=0)
    Image.fromarray(ramp).save(path)
    arr = np.asarray(decode(path).image)[..., 0].astype(int)
    assert arr[0, 0] == 0 and arr[0, -1] == 255
    assert abs(arr[0, 128] - 128) <= 2  # mid-grey stays mid-grey


def test_palette_with_transparency_goes_over_white(tmp_path: Path) -> None:
    path = tmp_path / "pal.png"
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 5, 10))
    img.info["transparency"] = 0
    img.save(path, transparency=0)
    arr = np.asarray(decode(path).image)
    assert tuple(arr[0, 9]) == (255, 255, 255)  # transparent -> white
    assert tuple(arr[0, 0]) == (255, 0, 0)


def test_rgba_and_la_over_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 255, 0))
    assert tuple(np.asarray(to_rgb(rgba))[0, 0]) == (255, 255, 255)
    la = Image.new("LA", (4, 4), (0, 255))
    assert tuple(np.asarray(to_rgb(la))[0, 0]) == (0, 0, 0)


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    r, _, b = np.asarray(decode(path).image)[10, 10]
    assert r > 200 and b < 50


def test_exif_orientation_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    img = Image.new("RGB", (60, 30), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 30))  # white band on the stored left
    exif = Image.Exif()
    exif[0x0112] = 6  # viewer rotates 90 degrees clockwise
    img.save(path, exif=exif)
    decoded = decode(path)
    assert decoded.image.size == (30, 60) and decoded.full_size == (30, 60)
    arr = np.asarray(decoded.image)
    assert arr[2, 15].mean() > 200 and arr[-3, 15].mean() < 50  # band now on top


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_common_formats(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"x.{fmt.lower()}"
    Image.new("RGB", (33, 17), (10, 200, 30)).save(path, format=fmt)
    decoded = decode(path)
    assert decoded.image.mode == "RGB" and decoded.full_size == (33, 17)


def test_grayscale_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "g.jpg"
    Image.new("L", (8, 8), 100).save(path)
    assert decode(path).image.mode == "RGB"


def test_draft_mode_keeps_boxes_in_full_size_pixels(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    img = Image.new("RGB", (2000, 1000), (0, 0, 0))
    img.paste((255, 255, 255), (1000, 0, 2000, 1000))
    img.save(path)
    decoded = decode(path, draft_size=224)
    assert decoded.image.width < 2000 and decoded.full_size == (2000, 1000)
    right = np.asarray(decoded.crop((1100, 100, 1900, 900)))
    assert right.mean() > 240


@pytest.mark.parametrize("box", [(0, 0, 0, 5), (5, 5, 2, 8), (-1, 0, 5, 5), (0, 0, 11, 5)])
def test_bad_boxes(box: tuple[int, int, int, int]) -> None:
    with pytest.raises(ImageError, match="crop box"):
        validate_box(box, (10, 10), "x.jpg")


def test_parse_box() -> None:
    assert parse_box("1,2,30,40") == (1, 2, 30, 40)
    with pytest.raises(ValueError, match="four integers"):
        parse_box("1,2,3")


def _phone_photo(path: Path, img: Image.Image, orientation: int = 1) -> None:
    """Save `img` as HEIC or AVIF by suffix. HEIC goes through pillow-heif's own API, not its
    Pillow plugin, so that decode() still has to register the plugin itself."""
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    if path.suffix == ".heic":
        import pillow_heif

        # pillow-heif turns the EXIF orientation into the file's irot/imir boxes, like phones.
        pillow_heif.from_pillow(img).save(path, quality=95, exif=exif.tobytes())
    else:
        img.save(path, format="AVIF", quality=95, exif=exif)


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :].repeat(height, axis=0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, axis=1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=2).astype(np.uint8))


@pytest.mark.parametrize("suffix", [".heic", ".avif"])
def test_phone_photo_formats(tmp_path: Path, suffix: str) -> None:
    assert suffix in IMAGE_SUFFIXES  # otherwise indexing skips them
    source = _gradient(64, 48)
    path = tmp_path / f"photo{suffix}"
    _phone_photo(path, source)
    decoded = decode(path)
    assert decoded.image.mode == "RGB" and decoded.full_size == (64, 48)
    diff = np.abs(np.asarray(decoded.image, dtype=float) - np.asarray(source, dtype=float))
    assert diff.mean() < 8


@pytest.mark.parametrize("suffix", [".heic", ".avif"])
def test_phone_photo_orientation_applied_once(tmp_path: Path, suffix: str) -> None:
    img = Image.new("RGB", (64, 32), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 16, 32))  # white band on the stored left
    path = tmp_path / f"rotated{suffix}"
    _phone_photo(path, img, orientation=6)
    decoded = decode(path)
    assert decoded.image.size == (32, 64) and decoded.full_size == (32, 64)
    arr = np.asarray(decoded.image)
    assert arr[3, 16].mean() > 200 and arr[-4, 16].mean() < 50  # band on top, not bottom


def test_truncated_heic(tmp_path: Path) -> None:
    path = tmp_path / "cut.heic"
    _phone_photo(path, _gradient(64, 48))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageError, match=r"cut\.heic: cannot decode.*HEIF"):
        decode(path)


def test_heif_support_is_lazy_and_optional(tmp_path: Path) -> None:
    """pillow-heif is imported only for a HEIF file; without it, HEIF fails with a clear
    reason."""
    heic, png = tmp_path / "a.heic", tmp_path / "a.png"
    _phone_photo(heic, _gradient(16, 16))
    _gradient(16, 16).save(png)
    script = f"""
import sys
from lookalike.errors import ImageError
from lookalike.images import decode
decode({str(png)!r})
assert "pillow_heif" not in sys.modules, "imported without a HEIF file"
sys.modules["pillow_heif"] = None  # as if not installed
try:
    decode({str(heic)!r})
except ImageError as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    assert "a.heic" in out and "pillow-heif" in out


def test_unsupported_suffixes_have_reasons() -> None:
    assert UNSUPPORTED_SUFFIXES[".svg"] and "raw" in UNSUPPORTED_SUFFIXES[".cr2"]
    assert not set(UNSUPPORTED_SUFFIXES) & IMAGE_SUFFIXES
    assert all(s.startswith(".") and s == s.lower() for s in UNSUPPORTED_SUFFIXES)
