"""Content-addressed ids: the same inputs and settings always give the same id, so nothing
is inverted, mixed or rendered twice. Pure hashing, no I/O."""

import hashlib
import json
import re
from typing import Any

import numpy as np

ID_RE = re.compile(r"^[0-9a-f]{32}$")


def _content_id(kind: str, payload: bytes = b"", **fields: Any) -> str:
    digest = hashlib.sha256(kind.encode())
    digest.update(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode())
    digest.update(payload)
    return digest.hexdigest()[:32]


def image_latent_id(image: bytes, model: str, settings: dict[str, Any]) -> str:
    """Same image bytes, model and inversion settings -> same id."""
    return _content_id("image", image, model=model, settings=settings)


def uploaded_latent_id(array: np.ndarray, model: str) -> str:
    return _content_id("upload", array.tobytes(), model=model, shape=list(array.shape))


def mixed_latent_id(inputs: list[str], weights: list[float], method: str) -> str:
    return _content_id("mix", inputs=inputs, weights=weights, method=method)


def image_id(
    latent_id: str, prompt: str | None, steps: int, guidance_scale: float, **extra: Any
) -> str:
    """`extra` (attention mode and steps, when a mix interpolates attention; the inputs'
    prompts, when it mixes them) joins the id only when given, so plain renders keep their
    ids."""
    return _content_id(
        "render",
        latent=latent_id,
        prompt=prompt,
        steps=steps,
        guidance_scale=guidance_scale,
        **extra,
    )


def morph_frame_image_id(latent_id: str, **settings: Any) -> str:
    """A morph frame that interpolates prompts or attention: its latent and everything its
    rendering reads (the keyframes' prompts, its weights, guide prompt, attention mode)."""
    return _content_id("morph-frame", latent=latent_id, **settings)
