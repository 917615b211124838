"""Rows of several mix jobs in one denoiser call (worker/batching.py) with the tiny model:
each job's images are those it renders alone, whether its rows share one prompt or each
row mixes its inputs' prompts (a mix without a prompt)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentmix.worker.batching import _group_text, _MixRows, _render_group
from latentmix.worker.engine.diffusion import encode_prompts, generate
from latentmix.worker.engine.families.base import Conditioning
from latentmix.worker.engine.morph import frame_conditioning

STEPS, GUIDANCE = 3, 2.0


def latents(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 4, 8, 8, generator=generator)


def rows(model, latent: torch.Tensor, prompt: str | Conditioning) -> _MixRows:
    return _MixRows(
        model=model,
        latent=latent,
        aux={},
        method=None,
        settings={},
        prompt=prompt,
        steps=STEPS,
        guidance_scale=GUIDANCE,
    )


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def test_conditionings_concatenate_row_by_row(tiny_model):
    first = encode_prompts(tiny_model, ["a fox", "a cat"])
    second = encode_prompts(tiny_model, ["a dog"])

    joined = Conditioning.concat([first, second])

    assert torch.equal(joined.cond, torch.cat([first.cond, second.cond]))
    assert torch.equal(joined.uncond, first.uncond)
    assert torch.equal(joined.rows(2, 3).cond, second.cond)


def test_a_job_with_mixed_prompts_and_one_with_a_prompt_render_in_one_call_as_alone(tiny_model):
    weights = [[0.9, 0.1], [0.25, 0.75]]
    mixed_text = frame_conditioning(tiny_model, ["a red fox", "a blue cat"], [None, None], weights)
    mixed, plain = (
        rows(tiny_model, latents(2, 0), mixed_text),
        rows(tiny_model, latents(1, 1), "a dog"),
    )

    _render_group([mixed, plain])

    alone = {
        "mixed": generate(
            tiny_model, mixed.latent, mixed_text, steps=STEPS, guidance_scale=GUIDANCE
        ),
        "plain": generate(tiny_model, plain.latent, "a dog", steps=STEPS, guidance_scale=GUIDANCE),
    }
    assert mixed.error is None and plain.error is None
    assert len(mixed.value) == 2 and len(plain.value) == 1
    # one call over three rows against two calls: the same images, to a level of rounding
    assert np.abs(pixels(mixed.value) - pixels(alone["mixed"])).max() <= 1
    assert np.abs(pixels(plain.value) - pixels(alone["plain"])).max() <= 1


def test_a_call_of_such_jobs_conditions_each_row_on_its_own_jobs_text(tiny_model):
    """What the call gets (the tiny model's text barely moves its pixels: `shapes` shows the
    effect, tests/e2e/test_shapes_service.py)."""
    weights = [[0.9, 0.1], [0.25, 0.75]]
    mixed_text = frame_conditioning(tiny_model, ["a red fox", "a blue cat"], [None, None], weights)
    group = [rows(tiny_model, latents(2, 0), mixed_text), rows(tiny_model, latents(1, 1), "a dog")]

    text = _group_text(group)

    assert torch.equal(text.cond[:2], mixed_text.cond)
    assert torch.equal(text.cond[2:], encode_prompts(tiny_model, ["a dog"]).cond)
    assert torch.equal(text.uncond, encode_prompts(tiny_model, [""]).cond)
    # jobs that each bring one prompt keep the plain list of prompts
    plain = [rows(tiny_model, latents(1, 2), "a cat"), rows(tiny_model, latents(2, 3), "a dog")]
    assert _group_text(plain) == ["a cat", "a dog", "a dog"]


@pytest.mark.parametrize("family", ["tiny_sd3", "tiny_sdxl"])
def test_mixed_prompts_of_a_family_with_pooled_embeddings_render_in_a_shared_call(family, request):
    """SD 3 and SDXL condition on pooled embeddings too: a mix without a prompt mixes them
    with the same weights, and its rows share a call with another job's."""
    model = request.getfixturevalue(family)
    weights = [[1.0, 0.0], [0.3, 0.7]]
    mixed_text = frame_conditioning(model, ["a red fox", "a blue cat"], [None, None], weights)
    encoded = encode_prompts(model, ["a red fox", "a blue cat"])
    assert torch.equal(mixed_text.pooled[0], encoded.pooled[0])
    expected = 0.3 * encoded.pooled[0].float() + 0.7 * encoded.pooled[1].float()
    assert torch.allclose(mixed_text.pooled[1].float(), expected, atol=1e-6)

    channels, side = model.card.latent_channels, model.default_size // model.card.vae_scale_factor
    shape = (channels, side, side)
    group = [
        rows(model, torch.randn(2, *shape, generator=torch.Generator().manual_seed(0)), mixed_text),
        rows(model, torch.randn(1, *shape, generator=torch.Generator().manual_seed(1)), "a dog"),
    ]
    for job in group:
        job.steps = 2
    _render_group(group)

    assert [job.error for job in group] == [None, None]
    assert [len(job.value) for job in group] == [2, 1]
