"""Seeded weight sampling for augmentation (numpy only)."""

import numpy as np
import pytest

from latentmix.service.core.weight_sampling import sample_weights


def test_the_same_seed_gives_the_same_rows_and_another_seed_others():
    first = sample_weights(5, 20, "dirichlet", 7)
    assert sample_weights(5, 20, "dirichlet", 7) == first
    assert sample_weights(5, 20, "dirichlet", 8) != first


def test_dirichlet_rows_lie_on_the_simplex_with_the_right_mean_spread():
    rows = np.array(sample_weights(4, 4000, "dirichlet", 1, alpha=1.0))
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-12)
    assert (rows >= 0).all()
    # Dirichlet(1,1,1,1): each coordinate has mean 1/4 and variance (1/4)(3/4)/5 = 0.0375.
    np.testing.assert_allclose(rows.mean(axis=0), 0.25, atol=0.01)
    np.testing.assert_allclose(rows.var(axis=0), 0.0375, atol=0.004)


def test_large_alpha_concentrates_on_the_centroid():
    rows = np.array(sample_weights(4, 200, "dirichlet", 1, alpha=1000.0))
    np.testing.assert_allclose(rows, 0.25, atol=0.05)


def test_subset_rows_are_uniform_centroids_of_k_inputs():
    rows = np.array(sample_weights(8, 500, "subset", 3, subset_size=3))
    assert ((rows > 0).sum(axis=1) == 3).all()
    np.testing.assert_allclose(rows[rows > 0], 1 / 3)
    # Every input is chosen about 3/8 of the time.
    np.testing.assert_allclose((rows > 0).mean(axis=0), 3 / 8, atol=0.07)


def test_subset_defaults_to_all_inputs():
    assert sample_weights(4, 2, "subset", 0) == [[0.25] * 4] * 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "subset", "subset_size": 9}, r"subset k must be in \[1, 8\]"),
        ({"scheme": "dirichlet", "alpha": 0.0}, "alpha must be > 0"),
        ({"scheme": "beta"}, "unknown sampling scheme 'beta'; use one of few"),
    ],
)
def test_bad_parameters_are_named(kwargs, message):
    scheme = kwargs.pop("scheme")
    with pytest.raises(ValueError, match=message):
        sample_weights(8, 3, scheme, 0, **kwargs)


def test_few_rows_mix_two_to_four_inputs_whatever_the_class_size():
    rows = np.array(sample_weights(291, 3000, "few", 5))
    used = (rows > 0).sum(axis=1)
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-12)
    assert set(used.tolist()) == {2, 3, 4}
    # The subset size is uniform on {2, 3, 4}; each input is picked about equally often.
    np.testing.assert_allclose(np.bincount(used)[2:] / len(rows), 1 / 3, atol=0.03)
    k_eff = 1 / (rows**2).sum(axis=1)
    assert k_eff.max() <= 4 + 1e-9
    assert (rows > 0).sum(axis=0).min() > 0


def test_few_weights_over_a_subset_are_dirichlet_and_k_caps_the_subset():
    rows = np.array(sample_weights(6, 4000, "few", 2, subset_size=2))
    assert ((rows > 0).sum(axis=1) == 2).all()
    # Dirichlet(1, 1) over a pair: the larger weight is uniform on [1/2, 1], mean 3/4.
    assert rows.max(axis=1).mean() == pytest.approx(0.75, abs=0.01)


def test_few_over_fewer_inputs_than_its_range_uses_them_all_or_one():
    assert sample_weights(1, 2, "few", 0) == [[1.0], [1.0]]
    rows = np.array(sample_weights(2, 50, "few", 0))
    assert ((rows > 0).sum(axis=1) == 2).all()
