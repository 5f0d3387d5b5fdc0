"""The edits that evaluation sets apply to copies: crops, colour shifts, captions.

Each takes an RGB image and a random generator and returns the edited image, so a set
built from one seed is built the same every time.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

WORDS = ("SALE", "holiday 2019", "© photo", "REPOST", "lol", "do not copy", "summer")


def crop(image: Image.Image, area: float, rng: np.random.Generator) -> Image.Image:
    """A crop of `area` of the picture, of its aspect ratio, at a random place."""
    w, h = round(image.width * area ** 0.5), round(image.height * area ** 0.5)
    x, y = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
    return image.crop((x, y, x + w, y + h))


def colours(image: Image.Image, rng: np.random.Generator, strength: float = 0.2
            ) -> Image.Image:
    """Each channel's gain, the brightness and the contrast changed by up to `strength`."""
    gains = rng.uniform(1 - strength, 1 + strength, size=3).astype(np.float32)
    shifted = np.asarray(image, np.float32) * gains + float(rng.uniform(-20, 20))
    image = Image.fromarray(np.clip(shifted, 0, 255).astype(np.uint8))
    return ImageEnhance.Contrast(image).enhance(float(rng.uniform(1 - strength,
                                                                  1 + 1.5 * strength)))


def caption(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A word written over the picture, as reposts and memes do."""
    image = image.copy()
    size = max(12, image.height // int(rng.integers(6, 10)))
    font = ImageFont.load_default(size=size)
    x = int(rng.integers(0, max(1, image.width // 3)))
    y = int(rng.integers(0, max(1, image.height - size - 4)))
    colour = tuple(int(v) for v in rng.choice([0, 255], size=3))
    ImageDraw.Draw(image).text((x, y), str(rng.choice(WORDS)), fill=colour, font=font,
                               stroke_width=max(1, size // 15),
                               stroke_fill=tuple(255 - c for c in colour))
    return image
