"""LPIPS (Zhang et al. 2018, "The unreasonable effectiveness of deep features as a
perceptual metric"), the frame distance AID and DiffMorpher use, with AlexNet features.

d(x0, x1) = sum_l mean_{h,w} w_l . (f_l(x0) / ||f_l(x0)|| - f_l(x1) / ||f_l(x1)||)^2

with f_l the backbone's activation after its l-th ReLU (channel-normalised at every
position), w_l >= 0 the learned linear heads, images scaled to [-1, 1] and then by LPIPS's
fixed per-channel shift and scale. Weights are not shipped: `load_lpips` reads one
safetensors file holding the AlexNet convolutions (`features.{0,3,6,8,10}.*`, torchvision's
names) and the heads (`lins.{0..4}.weight`, the `lin{l}.model.1.weight` of the lpips
package's `alex.pth`), from a path the worker is configured with."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

NAME = "lpips-alex"
# LPIPS's ScalingLayer: inputs in [-1, 1] are shifted and scaled per RGB channel.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
ALEX_CHANNELS = (64, 192, 384, 256, 256)
EPS = 1e-10  # lpips' normalize_tensor


class AlexFeatures(nn.Module):
    """torchvision's AlexNet `features`, returning the activation after each ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                taps.append(x)
        return taps


class Lpips(nn.Module):
    """The LPIPS distance over a backbone that returns its feature taps."""

    def __init__(self, backbone: nn.Module, channels: Sequence[int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """Distances [B] of image batches in [-1, 1], [B, 3, H, W]."""
        f0 = self.backbone((x0 - self.shift) / self.scale)
        f1 = self.backbone((x1 - self.shift) / self.scale)
        total = torch.zeros(x0.shape[0], device=x0.device)
        for lin, a, b in zip(self.lins, f0, f1, strict=True):
            diff = (_unit(a) - _unit(b)) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total

    @torch.inference_mode()
    def consecutive(self, frames: Sequence[Image.Image]) -> list[float]:
        """d(frame i, frame i + 1) for each consecutive pair."""
        device = self.shift.device
        pixels = torch.stack([_as_tensor(frame) for frame in frames]).to(device)
        return [float(d) for d in self(pixels[:-1], pixels[1:]).cpu()]


def _unit(features: torch.Tensor) -> torch.Tensor:
    """Each position's channel vector scaled to unit length (lpips' normalize_tensor)."""
    norm = torch.sqrt((features**2).sum(dim=1, keepdim=True))
    return features / (norm + EPS)


def _as_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def load_lpips(path: str | Path, device: str | torch.device = "cpu") -> Lpips:
    """LPIPS with AlexNet from a safetensors file (see the module docstring for its keys);
    a missing or unexpected key is named."""
    from safetensors.torch import load_file

    model = Lpips(AlexFeatures(), ALEX_CHANNELS)
    state = {
        f"backbone.{k}" if k.startswith("features.") else k: v for k, v in load_file(path).items()
    }
    state |= {"shift": model.shift, "scale": model.scale}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"LPIPS weights {path}: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    return model.to(device).eval()
