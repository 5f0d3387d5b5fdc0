"""Safe image decoding: every odd or bad file becomes RGB pixels or one clear `ImageError`.

Boxes are `(x0, y0, x1, y1)` in pixels of the image as a viewer shows it (EXIF orientation
applied), x1 and y1 exclusive.
"""

from __future__ import annotations

import base64
import functools
import io
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from lookalike.errors import ImageError

Box = tuple[int, int, int, int]
ImageSource = str | Path | bytes | Image.Image

#: Phone photos come as HEIC/HEIF (read through pillow-heif) and AVIF (Pillow itself).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)
_RAW = "camera raw; export it as JPEG or TIFF first"
#: Suffixes of files that look like pictures but that lookalike cannot index, with the reason:
#: for the indexer's summary of skipped files.
UNSUPPORTED_SUFFIXES: Mapping[str, str] = MappingProxyType(
    {
        ".svg": "vector graphics, not pixels",
        ".svgz": "vector graphics, not pixels",
        **dict.fromkeys((".cr2", ".cr3", ".nef", ".arw", ".dng", ".raf", ".orf", ".rw2"), _RAW),
    }
)
#: Decompression-bomb guard: 100 megapixels, e.g. 10,000 x 10,000.
DEFAULT_MAX_PIXELS = 100_000_000

# PIL's own bomb check raises at twice its limit; ours runs first, from the header alone.
Image.MAX_IMAGE_PIXELS = None
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
# ISO-BMFF major brands of HEIC/HEIF stills and sequences (what pillow-heif's opener accepts).
_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)


@dataclass(frozen=True)
class DecodedImage:
    """RGB pixels plus the size of the full image, which may be larger when JPEG draft mode
    decoded a reduced version. Boxes stay in full-size pixels."""

    image: Image.Image
    full_size: tuple[int, int]
    source: str

    @property
    def scale(self) -> float:
        return self.image.width / self.full_size[0]

    def crop(self, box: Box) -> Image.Image:
        """The region `box` (full-size pixels) of the decoded pixels."""
        x0, y0, x1, y1 = validate_box(box, self.full_size, self.source)
        s = self.scale
        left, top = int(x0 * s), int(y0 * s)
        scaled = (left, top, max(round(x1 * s), left + 1), max(round(y1 * s), top + 1))
        return self.image.crop(scaled)


def describe(source: ImageSource) -> str:
    """A short name for error messages."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__} {source.size[0]}x{source.size[1]}>"


def decode(
    source: ImageSource,
    *,
    draft_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Open `source` as RGB with its EXIF orientation applied.

    `draft_size` lets JPEG decoding skip detail beyond what a `draft_size`-pixel model input
    needs (DCT scaling, several times faster on large photos). Raises `ImageError`.
    """
    name = describe(source)
    img: Image.Image | None = None
    rgb: Image.Image | None = None
    try:
        if isinstance(source, Image.Image):
            img = source
        else:
            fp = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
            if isinstance(fp, Path) and not fp.is_file():
                raise ImageError(name, "no such file" if not fp.exists() else "not a file")
            img = _open(fp, name)
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError(
                name, f"{width}x{height} pixels is over the limit of {max_pixels:,} pixels"
            )
        if width == 0 or height == 0:
            raise ImageError(name, "image has no pixels")
        if img.format == "JPEG" and draft_size:
            img.draft("RGB", (draft_size, draft_size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's EXIF and palette warnings are not errors
            img.load()
            orientation = img.getexif().get(0x0112, 1)
            rgb = to_rgb(ImageOps.exif_transpose(img) or img)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(name, "not an image file, or a format Pillow cannot read") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(name, f"cannot decode: {exc}") from None
    finally:
        if img is not None and img is not source and img is not rgb:
            img.close()  # multi-frame files keep their handle open until closed
    full = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    return DecodedImage(rgb, full, name)


def _open(fp: Path | io.BytesIO, name: str) -> Image.Image:
    """`Image.open`, registering pillow-heif only when a file turns out to be HEIF: importing
    it costs ~15 ms, which a collection without phone photos should not pay."""
    try:
        return Image.open(fp)
    except UnidentifiedImageError:
        if not _is_heif(fp):
            raise
    missing = _register_heif()
    if missing:
        raise ImageError(name, missing)
    if isinstance(fp, io.BytesIO):
        fp.seek(0)
    try:
        return Image.open(fp)
    except UnidentifiedImageError:
        raise ImageError(name, "cannot decode: damaged, truncated or unsupported HEIF") from None


def _is_heif(fp: Path | io.BytesIO) -> bool:
    """Whether the file starts with an ISO-BMFF `ftyp` box of a HEIF brand."""
    if isinstance(fp, io.BytesIO):
        head = fp.getvalue()[:12]
    else:
        with fp.open("rb") as f:
            head = f.read(12)
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


@functools.cache
def _register_heif() -> str | None:
    """Register pillow-heif's Pillow opener once; the reason HEIF cannot be read, if any."""
    try:
        import pillow_heif
    except ImportError:
        return "HEIC/HEIF photos need the pillow-heif package (pip install pillow-heif)"
    # libheif applies the file's rotation (irot/imir) and pillow-heif then resets the EXIF
    # orientation to 1, so decode()'s exif_transpose does not rotate a second time.
    pillow_heif.register_heif_opener()
    return None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: transparency over white, 16-bit and float
    grayscale rescaled (PIL's own convert clips them), CMYK and palettes through PIL."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if (img.mode.startswith("I") and arr.max(initial=0) > 255) else 255.0
        if img.mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0
        gray = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def validate_box(box: Box | list[int], size: tuple[int, int], source: str = "image") -> Box:
    """Check that a crop box is four integers, non-empty and inside an image of `size`."""
    if len(box) != 4:
        raise ImageError(source, f"crop box must be X0,Y0,X1,Y1, got {list(box)}")
    try:
        x0, y0, x1, y1 = (int(v) for v in box)
    except (TypeError, ValueError):
        raise ImageError(source, f"crop box must hold integers, got {list(box)}") from None
    width, height = size
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ImageError(
            source,
            f"crop box {x0},{y0},{x1},{y1} is empty or outside the {width}x{height} image",
        )
    return x0, y0, x1, y1


def parse_box(text: str) -> Box:
    """Parse `X0,Y0,X1,Y1` as typed on a command line."""
    parts = text.replace(" ", "").split(",")
    if len(parts) != 4 or not all(re.fullmatch(r"-?[0-9]+", p) for p in parts):
        raise ValueError(f"crop box must be four integers X0,Y0,X1,Y1, got {text!r}")
    x0, y0, x1, y1 = (int(p) for p in parts)
    return x0, y0, x1, y1


def thumbnail_uri(image: Image.Image, box: Box | None = None, size: int = 160) -> str:
    """A JPEG thumbnail as a data URI, with `box` outlined in red: for self-contained pages."""
    image = image.copy()
    if box is not None:
        width = max(2, image.width // 100)
        ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1),
                                        outline=(255, 40, 40), width=width)
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
