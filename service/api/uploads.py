"""Uploaded images: read and checked before anything is stored or queued (413 for too many
pixels, 415 for what is not a whole PNG, JPEG or WebP, 422 for a side under 16 pixels or an
aspect ratio past 4:1)."""

import io

from fastapi import UploadFile
from PIL import Image, UnidentifiedImageError

from latentmix.service.api.problems import problem

IMAGE_FORMATS = {"PNG", "JPEG", "WEBP"}


def read_image(upload: UploadFile, max_pixels: int) -> bytes:
    """The uploaded image's bytes, checked (`_check_image`)."""
    data = upload.file.read()
    _check_image(data, upload.filename, max_pixels)
    return data


def _check_image(data: bytes, filename: str | None, max_pixels: int) -> None:
    """A whole, decodable PNG, JPEG or WebP of at most `max_pixels` pixels.

    The format is sniffed from the bytes, not the file name; only the allowed decoders
    ever see the data. The size is read from the header before anything is decoded, and
    Pillow's decompression-bomb guard (an error, see service.api.app) is a 413 too. The image
    is then fully decoded, so a truncated or corrupt file is refused here, not by a job."""
    unreadable = f"{filename!r} is not a readable PNG, JPEG or WebP image"
    try:
        with Image.open(io.BytesIO(data), formats=sorted(IMAGE_FORMATS)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise _too_many_pixels(filename, width, height, max_pixels)
            _check_shape(filename, width, height)
            image.verify()
        with Image.open(io.BytesIO(data), formats=sorted(IMAGE_FORMATS)) as image:
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise problem(413, f"{filename!r}: {exc}") from None
    except UnidentifiedImageError:
        raise problem(415, f"{unreadable}{_sniffed(data)}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise problem(415, f"{unreadable} ({exc})") from None


# Images are center-cropped to a square and resized to the model's size: below this side,
# or past this aspect ratio, what is left is a few pixels blown up, not the picture sent.
MIN_IMAGE_SIDE = 16
MAX_ASPECT_RATIO = 4.0


def _check_shape(filename: str | None, width: int, height: int) -> None:
    if min(width, height) < MIN_IMAGE_SIDE:
        raise problem(
            422,
            f"{filename!r} is {width}x{height}: images need at least {MIN_IMAGE_SIDE} pixels "
            "on each side",
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise problem(
            422,
            f"{filename!r} is {width}x{height}: its aspect ratio is over "
            f"{MAX_ASPECT_RATIO:g}:1 (images are center-cropped to a square); crop it first",
        )


def _too_many_pixels(filename: str | None, width: int, height: int, limit: int):
    return problem(
        413, f"{filename!r} is {width}x{height} = {width * height} pixels; the limit is {limit}"
    )


def _sniffed(data: bytes) -> str:
    """What the bytes are, when Pillow knows the format but it is not allowed."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return f": it is {image.format}; allowed: PNG, JPEG, WebP"
    except Exception:
        return ""
