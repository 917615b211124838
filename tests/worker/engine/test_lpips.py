"""LPIPS: its arithmetic on a tiny random backbone against an independent NumPy formula,
and the weights file it loads (random weights: none are downloaded)."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from latentmix.worker.engine.frame_distance import RGB_RMSE, configured_distance
from latentmix.worker.engine.lpips import (
    ALEX_CHANNELS,
    SCALE,
    SHIFT,
    AlexFeatures,
    Lpips,
    load_lpips,
)


class TwoTaps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 5, 3, stride=2, padding=1)

    def forward(self, x):
        first = torch.relu(self.a(x))
        return [first, torch.relu(self.b(first))]


def numpy_lpips(model: Lpips, x0: np.ndarray, x1: np.ndarray) -> float:
    """sum_l mean_hw w_l . (f/||f|| - g/||g||)^2, written out in float64."""
    shift, scale = np.array(SHIFT)[:, None, None], np.array(SCALE)[:, None, None]
    with torch.no_grad():
        taps = [
            [
                t[0].double().numpy()
                for t in model.backbone(torch.from_numpy((x - shift) / scale)[None].float())
            ]
            for x in (x0, x1)
        ]
    total = 0.0
    for lin, f, g in zip(model.lins, *taps, strict=True):
        w = lin.weight.detach().double().numpy().reshape(-1)
        fu = f / (np.sqrt((f**2).sum(axis=0)) + 1e-10)
        gu = g / (np.sqrt((g**2).sum(axis=0)) + 1e-10)
        total += float(np.einsum("c,chw->hw", w, (fu - gu) ** 2).mean())
    return total


def test_lpips_arithmetic_matches_the_formula_on_a_tiny_backbone():
    torch.manual_seed(0)
    model = Lpips(TwoTaps(), (4, 5))
    for lin in model.lins:
        nn.init.uniform_(lin.weight, 0, 1)  # LPIPS heads are non-negative
    rng = np.random.default_rng(1)
    x0, x1 = (rng.uniform(-1, 1, (3, 12, 12)) for _ in range(2))
    with torch.no_grad():
        actual = float(
            model(torch.from_numpy(x0)[None].float(), torch.from_numpy(x1)[None].float())
        )
    assert actual == pytest.approx(numpy_lpips(model, x0, x1), rel=1e-5)
    with torch.no_grad():
        same = model(torch.from_numpy(x0)[None].float(), torch.from_numpy(x0)[None].float())
    assert float(same) == 0.0


def test_lpips_loads_its_weights_file_and_names_missing_keys(tmp_path):
    torch.manual_seed(2)
    reference = Lpips(AlexFeatures(), ALEX_CHANNELS)
    state = {k.removeprefix("backbone."): v for k, v in reference.state_dict().items()}
    del state["shift"], state["scale"]
    path = tmp_path / "lpips-alex.safetensors"
    save_file(state, str(path))
    loaded = load_lpips(path)
    frames = [Image.new("RGB", (64, 64), (v, 40, 200 - v)) for v in (0, 60, 200)]
    distances = loaded.consecutive(frames)
    with torch.no_grad():
        x = torch.stack(
            [
                torch.from_numpy(np.asarray(f, np.float32) / 127.5 - 1).permute(2, 0, 1)
                for f in frames
            ]
        )
        expected = reference(x[:-1], x[1:])
    assert distances == pytest.approx(expected.tolist(), rel=1e-6)

    del state["lins.2.weight"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['lins.2.weight'\]"):
        load_lpips(tmp_path / "partial.safetensors")
    assert configured_distance(str(path)).name == "lpips-alex"
    assert configured_distance(None) is RGB_RMSE
