"""Measurements of a model on the shapes world, scored by the shapes classifier (this
world's stand-in for CLIP and Inception features; every figure says "shapes-classifier").
Tensors and PIL images in, numbers out; no I/O (bench/shapes_report.py writes the results).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from latentmix.service.core.mix_methods import MIX_METHODS
from latentmix.worker.engine.diffusion import (
    InversionSettings,
    decode_latents,
    encode_images,
    generate,
    invert,
)
from latentmix.worker.engine.families.base import Conditioning
from latentmix.worker.engine.mixing import mix
from latentmix.worker.engine.models import LoadedModel
from latentmix.worker.engine.morph import frame_conditioning
from latentmix.worker.engine.shapes import world
from latentmix.worker.engine.shapes.classifier import Prediction, ShapesClassifier, classify
from latentmix.worker.engine.shapes.model import JUDGE, NATIVE_SIZE

# Methods that mix any number K of latents (slerp takes exactly two).
CENTROID_METHODS: tuple[str, ...] = tuple(m for m in MIX_METHODS if m != "slerp")


def to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images -> [N, 3, H, W] float in [0, 1]."""
    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2)


def to_pil(sample: world.Sample) -> Image.Image:
    return Image.fromarray((sample.image * 255).round().astype(np.uint8))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image of [N, 3, H, W] tensors in [0, 1]."""
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def noise(count: int, model: LoadedModel, seed: int) -> torch.Tensor:
    side = model.default_size // model.vae_scale_factor
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((count, model.latent_channels, side, side), generator=generator)


# --- generation from noise ---------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationScore:
    prompts: list[str]  # one per image
    shapes: list[str]
    colours: list[str]
    prediction: Prediction

    def rate(self, head: str) -> float:
        """Fraction of images whose `head` ("shape", "colour" or "both") is the prompted one."""
        return float(np.mean(self.correct(head)))

    def correct(self, head: str) -> list[bool]:
        shape = [p == s for p, s in zip(self.prediction.labels["shape"], self.shapes, strict=True)]
        colour = [
            p == c for p, c in zip(self.prediction.labels["colour"], self.colours, strict=True)
        ]
        if head == "shape":
            return shape
        if head == "colour":
            return colour
        return [s and c for s, c in zip(shape, colour, strict=True)]

    def by_shape(self) -> dict[str, float]:
        both = self.correct("both")
        return {
            name: float(np.mean([ok for ok, s in zip(both, self.shapes, strict=True) if s == name]))
            for name in sorted(set(self.shapes))
        }


def score_generation(
    model: LoadedModel,
    classifier: ShapesClassifier,
    pairs: Sequence[tuple[str, str]],  # (shape, colour)
    per_prompt: int,
    *,
    steps: int = 50,
    guidance_scale: float = 7.5,
    seed: int = 0,
) -> tuple[GenerationScore, list[Image.Image]]:
    """Generate `per_prompt` images of "a {colour} {shape}" from seeded noise for each pair and
    classify them."""
    rows = [pair for pair in pairs for _ in range(per_prompt)]
    prompts = [world.caption(shape, colour) for shape, colour in rows]
    images = generate(
        model,
        noise(len(rows), model, seed),
        prompts,
        steps=steps,
        guidance_scale=guidance_scale,
    )
    prediction = classify(classifier, to_tensor(images))
    score = GenerationScore(prompts, [s for s, _ in rows], [c for _, c in rows], prediction)
    return score, images


def all_pairs() -> list[tuple[str, str]]:
    return [(shape, colour) for shape in world.SHAPES for colour in world.COLOUR_NAMES]


# --- inversion round trips ---------------------------------------------------------------------


def round_trip_psnr(
    model: LoadedModel,
    samples: Sequence[world.Sample],
    *,
    steps: int = 50,
    guidance_scale: float = 1.0,
) -> dict[str, float]:
    """DDIM-invert `samples` with their captions, regenerate with the same prompt and guidance:
    PSNR (dB) of the regenerated image against the drawing, and of the VAE alone."""
    pictures = [to_pil(s) for s in samples]
    captions = [s.caption for s in samples]
    settings = InversionSettings(steps=steps, guidance_scale=guidance_scale)
    inverted = invert(model, pictures, captions, settings)
    regenerated = generate(model, inverted, captions, steps=steps, guidance_scale=guidance_scale)
    with torch.inference_mode():
        vae_only = decode_latents(model, encode_images(model, pictures, model.default_size))
    original = to_tensor(pictures)
    round_trip = psnr(to_tensor(regenerated), original)
    vae = psnr(to_tensor(vae_only), original)
    return {
        "images": len(samples),
        "psnr_mean_db": float(round_trip.mean()),
        "psnr_min_db": float(round_trip.min()),
        "vae_psnr_mean_db": float(vae.mean()),
    }


def find_samples(
    shape: str, colour: str, count: int, seed: int, **where: str
) -> list[world.Sample]:
    """The first `count` samples of the world with `seed` showing `shape` in `colour` (and,
    e.g., background="white")."""
    found = []
    for index in itertools.count():
        sample = world.sample(index, seed)
        if (
            sample.shape == shape
            and sample.colour == colour
            and all(getattr(sample, key) == value for key, value in where.items())
        ):
            found.append(sample)
            if len(found) == count:
                return found
    raise AssertionError("unreachable")


# --- the paper's bias experiment (Sec. 4.2) ----------------------------------------------------


def mixed_conditioning(
    model: LoadedModel, prompts: Sequence[str], weights: torch.Tensor
) -> Conditioning:
    """The prompts' text embeddings mixed linearly with each row of `weights` [N, K],
    normalised to sum 1 (method.md section 3), as a mix without a prompt does."""
    rows = (weights / weights.sum(dim=1, keepdim=True)).tolist()
    return frame_conditioning(model, list(prompts), [None] * len(rows), rows)


def channel_mean_bias(latents: torch.Tensor) -> torch.Tensor:
    """Mean over channels of |spatial mean of the channel|, per latent [N, C, H, W] -> [N]."""
    return latents.mean(dim=(2, 3)).abs().mean(dim=1)


def centroid_weights(pool: int, k: int, count: int, seed: int) -> list[list[int]]:
    """`count` random K-subsets of range(pool) (uniform weights over each subset)."""
    generator = torch.Generator().manual_seed(seed * 1000 + k)
    return [torch.randperm(pool, generator=generator)[:k].tolist() for _ in range(count)]


def centroids(latents: torch.Tensor, subsets: Sequence[Sequence[int]], method: str) -> torch.Tensor:
    """The uniform-weight mix of each subset of `latents` with `method`: [S, C, H, W]."""
    return torch.stack(
        [mix(latents[list(subset)], [1.0] * len(subset), method) for subset in subsets]
    )


@dataclass(frozen=True)
class JudgeEncoder:
    """The shapes classifier's pooled features as an image encoder (FID, KID and the feature
    distance of POST /evaluations with features "judge"): CLIP's and Inception's stand-in
    on this world, which they never saw."""

    classifier: ShapesClassifier

    @property
    def features(self) -> str:
        return f"judge:{JUDGE}"

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """[N, FEATURE_DIM] float64, the images resized to the classifier's side."""
        pixels = to_tensor([image.resize((NATIVE_SIZE,) * 2) for image in images])
        with torch.no_grad():
            return self.classifier.features(pixels).double().numpy()


def feature_distance(
    classifier: ShapesClassifier, images: Sequence[Image.Image], reference: torch.Tensor
) -> torch.Tensor:
    """Cosine distance of each image's shapes-classifier features to `reference` [D]."""
    with torch.no_grad():
        features = classifier.features(to_tensor(images))
    return 1 - torch.nn.functional.cosine_similarity(features, reference[None], dim=1)


def class_feature_mean(
    classifier: ShapesClassifier, samples: Sequence[world.Sample]
) -> torch.Tensor:
    with torch.no_grad():
        return classifier.features(to_tensor([to_pil(s) for s in samples])).mean(dim=0)
