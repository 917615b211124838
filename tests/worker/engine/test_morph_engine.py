"""A morph's text conditions and its sequence metrics."""

import numpy as np
import pytest
import torch
from PIL import Image

from latentmix.worker.engine.diffusion import encode_prompts
from latentmix.worker.engine.frame_distance import consecutive_distances, frame_distance
from latentmix.worker.engine.morph import frame_conditioning
from latentmix.worker.engine.morph_metrics import consistency, gini, smoothness


def test_frames_without_a_prompt_interpolate_the_keyframes_embeddings(tiny_model):
    prompts = ["a cat", "a dog", "a bird"]
    weights = [[1, 0, 0], [0, 0.25, 0.75], [0, 1, 0]]
    conditioning = frame_conditioning(tiny_model, prompts, ["a cat", None, "a guide"], weights)
    e = {p: encode_prompts(tiny_model, [p]).cond[0] for p in [*prompts, "a guide"]}
    assert torch.equal(conditioning.cond[0], e["a cat"])
    assert torch.allclose(conditioning.cond[1], 0.25 * e["a dog"] + 0.75 * e["a bird"], atol=1e-6)
    assert torch.equal(conditioning.cond[2], e["a guide"])
    assert torch.equal(conditioning.uncond, encode_prompts(tiny_model, [""]).cond)


def test_gini_smoothness_and_consistency_follow_their_definitions():
    assert gini([0.2, 0.2, 0.2]) == 0.0
    # One step holds everything: sum |xi - xj| = 2 * 2 * 1, n = 3, mean 1/3 -> G = 2/3.
    assert gini([0.0, 0.0, 1.0]) == pytest.approx(2 / 3)
    assert smoothness([0.0, 0.0, 1.0]) == pytest.approx(1 / 3)
    assert consistency([0.1, 0.2, 0.3]) == pytest.approx(0.2)
    assert gini([0.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        gini([-1.0, 1.0])


def test_the_fallback_distance_is_the_rms_of_rgb_in_unit_range():
    black, white = Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), (255, 255, 255))
    grey = Image.fromarray(np.full((4, 4, 3), 51, np.uint8))
    assert frame_distance(black, white) == 1.0
    assert consecutive_distances([black, grey, white]) == pytest.approx([0.2, 0.8])
    with pytest.raises(ValueError, match="different sizes"):
        frame_distance(black, Image.new("RGB", (2, 2)))
