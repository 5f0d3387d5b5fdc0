"""Model input preparation that travels with the weights (like timm's pretrained config)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocess:
    """Squash the whole image to `size` x `size` (no centre crop: for search every part of
    the image counts, the borders included), scale to [0, 1], then `(x - mean) / std`.

    The resize runs on the CPU workers and yields uint8 pixels; the scaling runs inside the
    model graph (`PixelNormalize`), where it is vectorised and costs nothing extra.
    """

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB image -> uint8 array of shape (size, size, 3)."""
        # reducing_gap=1: shrink by an integer box filter first (antialiased, 2x faster).
        resized = image.resize(
            (self.size, self.size), _RESAMPLE[self.interpolation], reducing_gap=1.0
        )
        return np.asarray(resized, dtype=np.uint8)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
