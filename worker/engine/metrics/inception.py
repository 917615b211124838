"""Inception-v3 pool features for FID and KID, as FID is usually reported: the TorchScript
Inception of StyleGAN2-ADA / clean-fid (`inception-2015-12-05.pt`, a translation of the
TensorFlow graph of the original FID), loaded from the path in the setting
LATENTMIX_INCEPTION_WEIGHTS. It takes uint8 NCHW images and, with `return_features=True`,
returns 2048-d pool features; images are resized to 299 x 299 with PIL's bicubic filter
first (clean-fid's "clean" resize). "tiny-inception" is a seeded random TorchScript stand-in
with the same call (offline tests: it proves the plumbing, not the numbers). Nothing is ever
downloaded; a missing file raises `EncoderUnavailable` naming the setting."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentmix.worker.engine.metrics.clip import BATCH, EncoderUnavailable

INCEPTION_SETTING = "LATENTMIX_INCEPTION_WEIGHTS"
TINY_INCEPTION_NAME = "tiny-inception"
INCEPTION_SIZE = 299


@dataclass(frozen=True)
class InceptionEncoder:
    name: str
    model: torch.nn.Module  # called as model(uint8 NCHW, return_features=True)

    @property
    def features(self) -> str:
        return f"inception:{self.name}"

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Pool features [N, D], float64."""
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(images), BATCH):
            pixels = np.stack([_pixels(image) for image in images[start : start + BATCH]])
            batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(device)
            features = self.model(batch, return_features=True)
            chunks.append(features.reshape(len(pixels), -1).to(torch.float64).cpu().numpy())
        return np.concatenate(chunks)


def load_inception(path: str | None, device: str = "cpu") -> InceptionEncoder:
    """The TorchScript Inception at `path` (or "tiny-inception") on `device`, loaded anew
    (the caller keeps it: the worker on its context)."""
    if path == TINY_INCEPTION_NAME:
        return InceptionEncoder(path, _TinyInception().eval().to(device))
    if not path or not Path(path).is_file():
        raise EncoderUnavailable(
            f"Inception features need the TorchScript Inception (inception-2015-12-05.pt, as "
            f"StyleGAN2-ADA and clean-fid use) as a local file in {INCEPTION_SETTING}; "
            f"it is {'unset' if not path else f'{path!r}, which is not a file'}"
        )
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the file is one
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(path, map_location=device).eval()
    except (RuntimeError, ValueError) as exc:
        raise EncoderUnavailable(
            f"{INCEPTION_SETTING}={path!r} is not a TorchScript model: {exc}"
        ) from None
    return InceptionEncoder(Path(path).name, model)


def _pixels(image: Image.Image) -> np.ndarray:
    resized = image.convert("RGB").resize((INCEPTION_SIZE, INCEPTION_SIZE), Image.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


class _TinyInception(torch.nn.Module):
    """A seeded random stand-in with the TorchScript Inception's call: uint8 NCHW in,
    [N, 32] features out with return_features=True (logits otherwise)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 32, kernel_size=8, stride=8)
        self.head = torch.nn.Linear(32, 10)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = images.to(torch.float32) / 127.5 - 1
        features = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return features if return_features else self.head(features)
