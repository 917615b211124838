"""Image encoding shared by the API (contact sheets) and the workers (generated images),
and the seeded picture that tests and benchmarks feed the service."""

import io

import numpy as np
from PIL import Image


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def seeded_image(seed: int, size: int = 64) -> Image.Image:
    """A seeded RGB picture, size x size: a colour gradient with a bright square. The same
    seed always gives the same pixels (so the same latent ids)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)
    colour = rng.uniform(0.2, 1.0, size=3)
    pixels = np.stack([np.outer(ramp, ramp[::-1]) * c for c in colour], axis=-1) * 255
    x, y = rng.integers(0, size // 2, size=2)
    pixels[y : y + size // 4, x : x + size // 4] = rng.uniform(150, 255, size=3)
    return Image.fromarray(pixels.astype("uint8"))
