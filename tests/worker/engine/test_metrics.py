"""FID, KID and the CLIP distance against closed forms and independent computations, and the
CLIP encoder's loading (tiny random model offline; missing weights name the setting)."""

import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from latentmix.worker.engine.metrics import (
    clip_distances,
    frechet_distance,
    kernel_inception_distance,
)
from latentmix.worker.engine.metrics.clip import EncoderUnavailable, load_clip
from latentmix.worker.engine.metrics.inception import load_inception
from latentmix.worker.engine.metrics.kid import polynomial_kernel


def gaussian_set(n, mean, cov, seed):
    return np.random.default_rng(seed).multivariate_normal(mean, cov, size=n)


def test_fid_of_a_set_against_itself_is_zero():
    features = np.random.default_rng(0).standard_normal((200, 64)) * 3 + 1

    assert frechet_distance(features, features) == pytest.approx(0, abs=1e-6)


def test_fid_of_a_set_smaller_than_its_dimension_against_itself_is_zero():
    features = np.random.default_rng(1).standard_normal((10, 64))

    assert frechet_distance(features, features) == pytest.approx(0, abs=1e-6)


def test_fid_of_two_gaussian_sets_is_the_closed_form_of_their_statistics():
    rng = np.random.default_rng(2)
    root = rng.standard_normal((6, 6))
    a = gaussian_set(500, np.zeros(6), root @ root.T + np.eye(6), seed=3)
    b = gaussian_set(400, np.arange(6) / 3, np.diag(np.arange(1, 7.0)), seed=4)

    # Closed form with scipy's general matrix square root of S1 S2 (pytorch-fid's way).
    m1, m2 = a.mean(axis=0), b.mean(axis=0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)

    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_fid_of_diagonal_gaussians_is_the_population_formula_for_large_sets():
    # N(0, I) vs N(mu, 4 I) in D = 3: ||mu||^2 + D (1 + 4 - 2 * 2) = ||mu||^2 + 3.
    mu = np.array([1.0, -2.0, 0.5])
    a = np.random.default_rng(5).standard_normal((200_000, 3))
    b = mu + 2 * np.random.default_rng(6).standard_normal((200_000, 3))

    assert frechet_distance(a, b) == pytest.approx(mu @ mu + 3, rel=0.01)


def test_kid_matches_the_unbiased_pairwise_sum():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((4, 3)) + 1

    def k(x, y):
        return (sum(xi * yi for xi, yi in zip(x, y, strict=True)) / 3 + 1) ** 3

    within_a = sum(k(a[i], a[j]) for i, j in itertools.permutations(range(5), 2)) / 20
    within_b = sum(k(b[i], b[j]) for i, j in itertools.permutations(range(4), 2)) / 12
    across = sum(k(x, y) for x in a for y in b) / 20

    assert kernel_inception_distance(a, b) == pytest.approx(within_a + within_b - 2 * across)


def test_kid_is_unbiased_for_two_samples_of_one_distribution():
    # E[MMD^2_u] = 0 when both sets come from one distribution: the mean over many small
    # draws is ~0 (a biased estimator would be ~ 2 E[k(x, x) - k(x, y)] / n > 0).
    rng = np.random.default_rng(8)
    estimates = [
        kernel_inception_distance(rng.standard_normal((4, 2)), rng.standard_normal((4, 2)))
        for _ in range(4000)
    ]
    spread = np.std(estimates) / math.sqrt(len(estimates))

    assert abs(np.mean(estimates)) < 3 * spread
    x = rng.standard_normal((4, 2))
    biased_gap = np.mean(np.diag(polynomial_kernel(x, x))) - np.mean(polynomial_kernel(x, x))
    assert biased_gap > 3 * spread  # the test can tell a biased estimator apart


def test_clip_distance_equals_a_float64_computation_by_hand():
    rng = np.random.default_rng(9)
    generated = rng.standard_normal((3, 8)).astype(np.float32)
    reference = rng.standard_normal((5, 8)).astype(np.float32)

    centre = [sum(float(r[j]) for r in reference) / 5 for j in range(8)]
    expected = []
    for g in generated:
        dot = sum(float(g[j]) * centre[j] for j in range(8))
        norm_g = math.sqrt(sum(float(v) ** 2 for v in g))
        norm_c = math.sqrt(sum(v**2 for v in centre))
        expected.append(1 - dot / (norm_g * norm_c))

    assert clip_distances(generated, reference) == pytest.approx(expected, rel=1e-12)


def test_the_tiny_clip_encoder_embeds_images_reproducibly():
    images = [
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8))
        for i in range(3)
    ]
    encoder = load_clip("tiny-clip")

    first, again = encoder.embed(images), encoder.embed(images[::-1])

    assert first.shape == (3, 16) and first.dtype == np.float64
    np.testing.assert_allclose(first, again[::-1], rtol=1e-5, atol=1e-6)
    assert encoder.features == "clip:tiny-clip"


def test_missing_clip_weights_name_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(EncoderUnavailable, match="LATENTMIX_CLIP_MODEL"):
        load_clip(str(tmp_path / "no-such-model"))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_a_torchscript_inception_file_embeds_images(tmp_path):
    stand_in = load_inception("tiny-inception")
    path = tmp_path / "inception.pt"
    torch.jit.save(torch.jit.script(stand_in.model), str(path))
    images = [
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (50, 70, 3), dtype=np.uint8))
        for i in range(3)
    ]

    loaded = load_inception(str(path))

    assert loaded.features == "inception:inception.pt"
    np.testing.assert_allclose(loaded.embed(images), stand_in.embed(images), rtol=1e-6)
    assert loaded.embed(images).shape == (3, 32)


@pytest.mark.parametrize("path", [None, "/nonexistent/inception.pt"])
def test_missing_inception_weights_name_the_setting(path):
    with pytest.raises(EncoderUnavailable, match="LATENTMIX_INCEPTION_WEIGHTS"):
        load_inception(path)


def test_a_clip_model_directory_loads_like_a_hub_id(tmp_path):
    tiny = load_clip("tiny-clip")
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    images = [Image.fromarray(np.full((36, 36, 3), 40 * i, dtype=np.uint8)) for i in range(3)]

    loaded = load_clip(str(tmp_path))

    assert loaded.features == f"clip:{tmp_path}"
    np.testing.assert_allclose(loaded.embed(images), tiny.embed(images), rtol=1e-5, atol=1e-6)
