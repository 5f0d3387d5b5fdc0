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
    the image counts, the borders included), scale to [0, 1], then `(x - mean) / std`."""

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB image -> float32 array of shape (3, size, size)."""
        resized = image.resize(
            (self.size, self.size), _RESAMPLE[self.interpolation], reducing_gap=3.0
        )
        arr = np.asarray(resized, dtype=np.float32)
        arr = (arr - np.float32(255) * np.asarray(self.mean, np.float32)) / (
            np.float32(255) * np.asarray(self.std, np.float32)
        )
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
