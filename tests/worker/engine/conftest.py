"""Fixtures for the engine tests: the tiny seeded model and synthetic images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from latentmix.worker.engine.models import LoadedModel, load_model

UnetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models") / "tiny"


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> LoadedModel:
    return load_model("tiny", device="cpu", cache_dir=tiny_model_dir.parent)


def synthetic_image(seed: int, width: int = 96, height: int = 80) -> Image.Image:
    """A seeded RGB gradient with a coloured ellipse and rectangle."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width)[None, :]
    pixels[..., 1] = np.linspace(255, 0, height)[:, None]
    pixels[..., 2] = rng.integers(0, 256)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(0, min(width, height) // 2, 2))
    draw.ellipse([x, y, x + width // 3, y + height // 3], fill=_colour(rng))
    draw.rectangle([width - x - 20, height - y - 15, width - x, height - y], fill=_colour(rng))
    return image


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    red, green, blue = (int(v) for v in rng.integers(0, 256, 3))
    return red, green, blue


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    """Three distinct images of different aspect ratios."""
    return [synthetic_image(0), synthetic_image(1, 64, 100), synthetic_image(2, 120, 72)]


@pytest.fixture
def replace_unet(tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch):
    """Swap the UNet's output for fn(sample, timestep, encoder_hidden_states); undone after."""

    def install(fn: UnetFn) -> None:
        def forward(sample, timestep, encoder_hidden_states, *args, **kwargs):
            return (fn(sample, timestep, encoder_hidden_states),)

        monkeypatch.setitem(tiny_model.pipe.unet.__dict__, "forward", forward)

    return install


@pytest.fixture
def unet_calls(tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record each real UNet call: its timestep and batch size."""
    calls: list[dict] = []
    unet = tiny_model.pipe.unet
    original = unet.forward

    def forward(sample, timestep, *args, **kwargs):
        calls.append({"timestep": int(timestep), "batch": sample.shape[0]})
        return original(sample, timestep, *args, **kwargs)

    monkeypatch.setitem(unet.__dict__, "forward", forward)
    return calls


@pytest.fixture(scope="session")
def tiny_sd3(tiny_model_dir: Path) -> LoadedModel:
    """The built-in SD 3-shaped model, built next to `tiny` in the session's model folder."""
    return load_model("tiny-sd3", device="cpu", cache_dir=tiny_model_dir.parent)


@pytest.fixture(scope="session")
def tiny_sdxl(tiny_model_dir: Path) -> LoadedModel:
    """The built-in SDXL-shaped model, built next to `tiny` in the session's model folder."""
    return load_model("tiny-sdxl", device="cpu", cache_dir=tiny_model_dir.parent)


@pytest.fixture(scope="session")
def tiny_v(tiny_model_dir: Path) -> LoadedModel:
    """The built-in v-predicting SD 1.x-shaped model (SD 2.x 768's prediction type)."""
    return load_model("tiny-v", device="cpu", cache_dir=tiny_model_dir.parent)
