"""Image encoding shared by the API (contact sheets) and the workers (generated images)."""

import io

from PIL import Image


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
