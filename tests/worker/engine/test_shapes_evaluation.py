"""The measurement helpers of the shapes model, against numbers worked out by hand."""

import pytest
import torch

from latentmix.worker.engine.shapes import evaluation


def test_psnr_of_a_known_error():
    a = torch.zeros((2, 3, 4, 4))
    b = torch.full_like(a, 0.1)  # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert evaluation.psnr(a, b).tolist() == pytest.approx([20.0, 20.0])


def test_channel_mean_bias_averages_the_absolute_channel_means():
    latents = torch.randn((3, 4, 8, 8))
    latents -= latents.mean(dim=(2, 3), keepdim=True)  # every channel mean exactly 0 ...
    latents += torch.tensor([0.1, -0.2, 0.3, -0.4])[None, :, None, None]  # ... then these
    expected = (0.1 + 0.2 + 0.3 + 0.4) / 4
    assert evaluation.channel_mean_bias(latents).tolist() == pytest.approx([expected] * 3)


def test_lerp_centroids_are_the_subset_means_and_subsets_are_seeded():
    latents = torch.randn((10, 4, 8, 8), dtype=torch.float64)
    subsets = evaluation.centroid_weights(10, 4, count=3, seed=0)
    assert subsets == evaluation.centroid_weights(10, 4, count=3, seed=0)
    assert all(len(set(s)) == 4 for s in subsets)
    centroids = evaluation.centroids(latents, subsets, "lerp")
    for subset, centroid in zip(subsets, centroids, strict=True):
        torch.testing.assert_close(centroid, latents[subset].mean(dim=0))


def test_centroid_methods_are_every_method_but_slerp():
    assert set(evaluation.CENTROID_METHODS) == {
        "lerp",
        "fix/0",
        "fix/m",
        "fix/chm",
        "nin/0",
        "nin/m",
        "nin/chm",
    }
