"""The CLIP image encoder the metrics use: features for FID/KID and embeddings for the CLIP
distance. Its weights come from the setting LATENTMIX_CLIP_MODEL: a hub id, a local
directory, or "tiny-clip", a seeded random tiny CLIP vision model built from a config (tests
and offline demos; its numbers prove the pipeline, not image quality). Nothing is downloaded
when HF_HUB_OFFLINE is set; weights that cannot be loaded raise `EncoderUnavailable` naming
the setting."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

try:  # transformers 5: the Pillow processor, without its torchvision-fallback warning
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # transformers 4
    from transformers import CLIPImageProcessor

TINY_CLIP_NAME = "tiny-clip"
CLIP_SETTING = "LATENTMIX_CLIP_MODEL"
BATCH = 32  # images per encoder call


class EncoderUnavailable(RuntimeError):
    """The encoder's weights cannot be loaded; the message names the setting."""


@dataclass(frozen=True)
class ImageEncoder:
    """A CLIP vision model with projection and its preprocessing."""

    name: str
    model: CLIPVisionModelWithProjection
    processor: CLIPImageProcessor

    @property
    def features(self) -> str:
        """What the features are, as results name them."""
        return f"clip:{self.name}"

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """CLIP image embeddings (the projection output) [N, D], float64."""
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(images), BATCH):
            batch = [image.convert("RGB") for image in images[start : start + BATCH]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            output = self.model(pixel_values=pixels.to(device, self.model.dtype))
            chunks.append(output.image_embeds.to(torch.float64).cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.model.config.projection_dim))


def load_clip(name: str, device: str = "cpu") -> ImageEncoder:
    """The encoder `name` (hub id, local directory or "tiny-clip") on `device`, loaded anew
    (the caller keeps it: the worker on its context)."""
    if name == TINY_CLIP_NAME:
        model, processor = _tiny_clip()
    else:
        try:
            model = CLIPVisionModelWithProjection.from_pretrained(name)
            processor = CLIPImageProcessor.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise EncoderUnavailable(
                f"cannot load the CLIP image encoder {name!r} (setting {CLIP_SETTING}: a hub "
                f"id, a local directory or '{TINY_CLIP_NAME}'; offline, the weights must be "
                f"in the Hugging Face cache): {exc}"
            ) from None
    return ImageEncoder(name, model.to(device).eval(), processor)


def _tiny_clip() -> tuple[CLIPVisionModelWithProjection, CLIPImageProcessor]:
    """A seeded random CLIP vision model: 32-pixel inputs, 2 layers, 16-d embeddings."""
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = CLIPVisionModelWithProjection(config)
    finally:
        torch.random.set_rng_state(generator_state)
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return model, processor
