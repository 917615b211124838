"""Attention interpolation (AID, N-way) on the tiny model: the layer rule against an
independent formula, the endpoint property, plain generation untouched, and the keyframes'
reference passes cached."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from latentmix.worker.engine.attention import KeyframeAttentionCache, keyframe_attention
from latentmix.worker.engine.attention.keyframes import (
    active_timesteps,
    sample_with_attention,
)
from latentmix.worker.engine.attention.processors import AttentionSession, LayerProcessor
from latentmix.worker.engine.diffusion import encode_prompts, generate, sample
from latentmix.worker.engine.mixing import mix
from latentmix.worker.engine.morph import Keyframes, frame_conditioning, render_frames

STEPS = 4
GUIDANCE = 7.5
PROMPTS = ["a photo of a cat", "a photo of a dog"]


@pytest.fixture(scope="module")
def keyframe_latents() -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))


def keyframes(latents: torch.Tensor) -> Keyframes:
    return Keyframes(latents=latents, prompts=PROMPTS, keys=[("a", PROMPTS[0]), ("b", PROMPTS[1])])


def frames_of(model, latents, coefficients, *, attention, cache=None, row_weights=None):
    """Frames at `coefficients` between the two keyframes, rendered in one batch."""
    weights = [[1 - t, t] for t in coefficients]
    prompts = [PROMPTS[0] if t == 0 else PROMPTS[1] if t == 1 else None for t in coefficients]
    if row_weights is None:
        row_weights = [
            None if t in (0, 1) else w for t, w in zip(coefficients, weights, strict=True)
        ]
    return render_frames(
        model,
        mix(latents, weights, "nin/chm"),
        frame_conditioning(model, PROMPTS, prompts, weights),
        steps=STEPS,
        guidance_scale=GUIDANCE,
        attention=attention,
        row_weights=row_weights,
        keyframes=keyframes(latents),
        cache=cache,
    )


def pixels(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32))


# --- one layer ------------------------------------------------------------------------------


def first_self_attention(model):
    unet = model.pipe.unet
    name = next(n for n in unet.attn_processors if n.endswith("attn1.processor"))
    module = unet.get_submodule(name.removesuffix(".processor"))
    return name, module


def reference_attention(q, k, v):
    """softmax(Q K^T / sqrt(d)) V, written out (not scaled_dot_product_attention)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ v


def heads(x, h):
    return x.view(x.shape[0], h, -1).transpose(0, 1)


def layer_output(model, mode, weights, references, x):
    """The layer processor's output for one conditional row x [n, C]."""
    name, attn = first_self_attention(model)
    session = AttentionSession(
        mode,
        frozenset({5}),
        guided=False,
        row_weights=[weights],
        references=[{(name, 5): ref} for ref in references],
        timestep=5,
    )
    processor = LayerProcessor(name, session, attn.processor)
    with torch.inference_mode():
        return processor(attn, x[None])[0]


@torch.inference_mode()
def test_fused_with_two_inputs_equals_the_two_input_formula_on_one_layer(tiny_model):
    _, attn = first_self_attention(tiny_model)
    g = torch.Generator().manual_seed(0)
    x, xa, xb = (torch.randn(16, attn.to_q.in_features, generator=g) for _ in range(3))
    refs = [(attn.to_k(y), attn.to_v(y)) for y in (xa, xb)]
    t = 0.3
    actual = layer_output(tiny_model, "fused", [1 - t, t], refs, x)

    h = attn.heads
    q, k_self, v_self = heads(attn.to_q(x), h), heads(attn.to_k(x), h), heads(attn.to_v(x), h)
    (ka, va), (kb, vb) = [(heads(k, h), heads(v, h)) for k, v in refs]
    # AID fused: (1 - t) Attn(Q, [K; K_A], [V; V_A]) + t Attn(Q, [K; K_B], [V; V_B])
    mixed = (1 - t) * reference_attention(
        q, torch.cat([k_self, ka], 1), torch.cat([v_self, va], 1)
    ) + t * reference_attention(q, torch.cat([k_self, kb], 1), torch.cat([v_self, vb], 1))
    expected = attn.to_out[0](mixed.transpose(0, 1).reshape(16, -1))
    assert torch.allclose(actual, expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["inner", "outer", "fused"])
@torch.inference_mode()
def test_n_way_with_one_hot_weights_equals_the_single_input_rule(tiny_model, mode):
    _, attn = first_self_attention(tiny_model)
    g = torch.Generator().manual_seed(1)
    x, *others = (torch.randn(16, attn.to_q.in_features, generator=g) for _ in range(4))
    refs = [(attn.to_k(y), attn.to_v(y)) for y in others]
    three_way = layer_output(tiny_model, mode, [0.0, 1.0, 0.0], refs, x)
    single = layer_output(tiny_model, mode, [1.0], refs[1:2], x)
    assert torch.equal(three_way, single)


@torch.inference_mode()
def test_inner_and_outer_differ_from_fused_on_one_layer(tiny_model):
    _, attn = first_self_attention(tiny_model)
    g = torch.Generator().manual_seed(2)
    x, xa, xb = (torch.randn(16, attn.to_q.in_features, generator=g) for _ in range(3))
    refs = [(attn.to_k(y), attn.to_v(y)) for y in (xa, xb)]
    outputs = {
        m: layer_output(tiny_model, m, [0.5, 0.5], refs, x) for m in ("inner", "outer", "fused")
    }
    assert not torch.allclose(outputs["inner"], outputs["outer"])
    assert not torch.allclose(outputs["outer"], outputs["fused"])


# --- whole generations ------------------------------------------------------------------------


def test_frames_without_attention_are_the_mix_images_bit_for_bit(tiny_model, keyframe_latents):
    coefficients = [0.0, 0.25, 0.5, 1.0]
    # The same prompt at every frame: the frames are /mix's images, bit for bit.
    shared = ["a photo of a cat"] * 2
    weights = [[1 - t, t] for t in coefficients]
    same_prompt = render_frames(
        tiny_model,
        mix(keyframe_latents, weights, "nin/chm"),
        frame_conditioning(tiny_model, shared, shared[:1] * 4, weights),  # as MorphRequest says
        steps=STEPS,
        guidance_scale=GUIDANCE,
    )
    as_mix = generate(
        tiny_model,
        mix(keyframe_latents, weights, "nin/chm"),
        "a photo of a cat",
        steps=STEPS,
        guidance_scale=GUIDANCE,
    )
    assert [np.asarray(a).tolist() for a in same_prompt] == [np.asarray(b).tolist() for b in as_mix]


def test_processors_interpolating_nothing_leave_generation_unchanged(tiny_model, keyframe_latents):
    conditioning = encode_prompts(tiny_model, PROMPTS)
    timesteps = active_timesteps(tiny_model, STEPS, 0.5)
    references = keyframe_attention(
        tiny_model,
        keyframe_latents,
        conditioning,
        ["a", "b"],
        steps=STEPS,
        guidance_scale=GUIDANCE,
        timesteps=timesteps,
        cache=KeyframeAttentionCache(0),
    )
    kwargs = {"steps": STEPS, "guidance_scale": GUIDANCE}
    plain = sample(tiny_model, keyframe_latents, conditioning, **kwargs)
    untouched = sample_with_attention(
        tiny_model,
        keyframe_latents,
        conditioning,
        [None, None],
        references,
        mode="fused",
        timesteps=timesteps,
        **kwargs,
    )
    no_steps = sample_with_attention(
        tiny_model,
        keyframe_latents,
        conditioning,
        [[0.5, 0.5]] * 2,
        references,
        mode="fused",
        timesteps=frozenset(),
        **kwargs,
    )
    assert torch.equal(untouched, plain)
    assert torch.equal(no_steps, plain)
    interpolated = sample_with_attention(
        tiny_model,
        keyframe_latents,
        conditioning,
        [[0.5, 0.5]] * 2,
        references,
        mode="fused",
        timesteps=timesteps,
        **kwargs,
    )
    assert not torch.allclose(interpolated, plain, atol=1e-4)


@pytest.mark.parametrize("mode", ["inner", "outer", "fused"])
def test_keyframes_reproduce_their_own_generation_in_every_mode(tiny_model, keyframe_latents, mode):
    coefficients = [0.0, 0.5, 1.0]
    plain = frames_of(tiny_model, keyframe_latents, coefficients, attention="none")
    with_attention = frames_of(tiny_model, keyframe_latents, coefficients, attention=mode)
    # Coefficient 0 and 1 are the keyframes: exactly their own generation (AID's endpoints).
    assert np.asarray(with_attention[0]).tolist() == np.asarray(plain[0]).tolist()
    assert np.asarray(with_attention[2]).tolist() == np.asarray(plain[2]).tolist()
    assert np.asarray(with_attention[1]).tolist() != np.asarray(plain[1]).tolist()


@pytest.mark.parametrize("mode", ["inner", "outer", "fused"])
def test_the_rule_itself_at_a_one_hot_weight_is_the_keyframes_own_attention(
    tiny_model, keyframe_latents, mode
):
    """The formula, not the keyframe shortcut: at weights (1, 0) each rule reduces to the
    keyframe's own attention (its reference keys and values are its own), up to rounding."""
    plain = frames_of(tiny_model, keyframe_latents, [0.0, 1.0], attention="none")
    forced = frames_of(
        tiny_model,
        keyframe_latents,
        [0.0, 1.0],
        attention=mode,
        row_weights=[[1.0, 0.0], [0.0, 1.0]],
    )
    for a, b in zip(forced, plain, strict=True):
        assert (pixels(a) - pixels(b)).abs().max() <= 1.0  # at most one 8-bit level


def test_a_second_morph_of_the_same_keyframes_runs_no_reference_pass(
    tiny_model, keyframe_latents, unet_calls
):
    cache = KeyframeAttentionCache(64 * 2**20)
    frames_of(tiny_model, keyframe_latents, [0.0, 0.5, 1.0], attention="fused", cache=cache)
    first = len(unet_calls)
    frames_of(tiny_model, keyframe_latents, [0.0, 0.5, 1.0], attention="fused", cache=cache)
    second = len(unet_calls) - first
    batches = math.ceil(3 / tiny_model.max_batch_size)
    assert second == STEPS * batches  # the frames only
    assert first == STEPS * (batches + math.ceil(2 / tiny_model.max_batch_size))
    assert len(cache) == 2 and cache.nbytes > 0


def test_a_cache_too_small_keeps_nothing_and_recomputes(tiny_model, keyframe_latents, unet_calls):
    cache = KeyframeAttentionCache(1024)
    frames_of(tiny_model, keyframe_latents, [0.0, 0.5, 1.0], attention="inner", cache=cache)
    assert len(cache) == 0


def test_models_whose_card_cannot_interpolate_attention_are_refused_by_name(tiny_model):
    card = tiny_model.card.model_copy(update={"family": "new", "attention_interpolation": False})
    model = SimpleNamespace(card=card, max_batch_size=2)
    with pytest.raises(ValueError, match="model 'tiny' \\(family 'new'\\) cannot interpolate"):
        keyframe_attention(
            model,
            torch.zeros(1, 4, 8, 8),
            None,
            ["k"],
            steps=STEPS,
            guidance_scale=1.0,
            timesteps=frozenset(),
            cache=KeyframeAttentionCache(0),
        )
