"""Mixing an inversion method's state with the latents' weights (engine/state_mixing.py)."""

import pytest
import torch

from latentmix.worker.engine.mixing import mix
from latentmix.worker.engine.results import Inverted
from latentmix.worker.engine.state_mixing import mix_inverted, mix_states


def seeded(seed: int, *shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_latent_state_is_mixed_like_the_latents_and_embeddings_linearly():
    states = [
        {
            "y": seeded(k, 4, 8, 8),
            "uncond_embeddings": seeded(10 + k, 3, 77, 32, dtype=torch.float16),
        }
        for k in range(3)
    ]
    weights = [[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]

    mixed = mix_states(states, weights, "nin/chm", latent_state=("y",))

    ys = torch.stack([s["y"] for s in states])
    torch.testing.assert_close(mixed["y"], mix(ys, weights, "nin/chm"))
    embeddings = torch.stack([s["uncond_embeddings"] for s in states]).double()
    linear = torch.einsum("nk,k...->n...", torch.tensor(weights, dtype=torch.float64), embeddings)
    assert mixed["uncond_embeddings"].dtype == torch.float16
    torch.testing.assert_close(mixed["uncond_embeddings"].double(), linear, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(mixed["uncond_embeddings"][1], states[0]["uncond_embeddings"])


def test_inputs_holding_different_state_are_refused():
    with pytest.raises(ValueError, match="different state tensors"):
        mix_states([{"y": seeded(0, 4, 8, 8)}, {}], [0.5, 0.5], "lerp", latent_state=("y",))


def test_inverted_rows_mix_with_their_state_and_keep_method_and_settings():
    torch.manual_seed(1)
    latents, second, phi = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.randn(3, 2, 5, 7)
    inverted = Inverted(
        latent=latents,
        aux={"second": second, "phi": phi},
        method="edict",
        settings={"steps": 4},
    )
    weights = [[0.2, 0.3, 0.5]]

    mixed = mix_inverted(inverted, weights, "nin/chm", latent_state=("second",))

    assert torch.allclose(mixed.latent, mix(latents, weights, "nin/chm"))
    assert torch.allclose(mixed.aux["second"], mix(second, weights, "nin/chm"))
    expected_phi = 0.2 * phi[0] + 0.3 * phi[1] + 0.5 * phi[2]  # appendix B: linear
    assert torch.allclose(mixed.aux["phi"][0], expected_phi, atol=1e-6)
    assert (mixed.method, mixed.settings) == ("edict", {"steps": 4})
