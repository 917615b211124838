"""Mix diagnostics (service/core/diagnostics.py, numpy) against the worker's torch mix, and Eq. 9
on synthetic biased latents."""

import math

import numpy as np
import pytest
import torch

from latentmix.service.core import diagnostics as diagnostics_module
from latentmix.service.core.diagnostics import InputStatistics, Thresholds, diagnose
from latentmix.service.core.mix_methods import MIX_METHODS
from latentmix.worker.engine.mixing import mix


def biased_latents(k: int, seed: int = 0, bias=(0.02, -0.01, 0.015, 0.02), size: int = 32):
    """z_k = n_k + b: i.i.d. N(0, I) noise plus a small per-channel constant (method.md,
    Sec. 2; small: Eq. 9 holds while ||b||^2 << ||n||^2 / K)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((k, len(bias), size, size))
    return noise + np.asarray(bias)[None, :, None, None]


@pytest.mark.parametrize("method", MIX_METHODS)
def test_diagnostics_match_the_latent_the_worker_mixes(method):
    latents = biased_latents(2 if method == "slerp" else 5, seed=1)
    rng = np.random.default_rng(2)
    rows = rng.dirichlet(np.ones(latents.shape[0]), size=3).tolist()

    found = diagnose(InputStatistics.of(latents), rows, method)

    mixed = mix(torch.from_numpy(latents), rows, method).numpy()
    for diagnostics, z, w in zip(found, mixed, rows, strict=True):
        assert diagnostics.norm == pytest.approx(np.linalg.norm(z), rel=1e-9)
        assert diagnostics.channel_means == pytest.approx(z.mean(axis=(1, 2)), rel=1e-7, abs=1e-12)
        norms = np.linalg.norm(latents.reshape(len(latents), -1), axis=1)
        assert diagnostics.interpolated_norm == pytest.approx(np.dot(w, norms), rel=1e-12)
        expected = np.tensordot(w, latents.mean(axis=(2, 3)), axes=1)
        assert diagnostics.expected_channel_means == pytest.approx(expected, rel=1e-12)
        assert diagnostics.bias_amplification == pytest.approx(
            np.linalg.norm(z.mean(axis=(1, 2))) / np.linalg.norm(expected), rel=1e-7
        )
        assert diagnostics.nominal_norm == math.sqrt(z.size)


def test_fix0_amplifies_a_bias_by_sqrt_k_and_chm_does_not():
    latents = biased_latents(64, seed=3)
    stats = InputStatistics.of(latents)
    uniform = [[1 / 64] * 64]

    (fix0,) = diagnose(stats, uniform, "fix/0")
    (chm,) = diagnose(stats, uniform, "fix/chm")

    assert fix0.k_eff == pytest.approx(64)
    assert fix0.bias_amplification == pytest.approx(8, rel=0.15)
    assert chm.bias_amplification == pytest.approx(1, rel=0.05)
    assert any("amplified" in w and "Eq. 9" in w for w in fix0.warnings)
    assert not any("amplified" in w for w in chm.warnings)


@pytest.mark.parametrize(
    ("method", "quiet_k", "warned_k"),
    [("nin/chm", 16, 17), ("fix/chm", 16, 17), ("fix/0", 4, 5), ("nin/m", 4, 5), ("lerp", 4, 5)],
)
def test_an_effective_k_where_the_paper_measures_degradation_is_warned(method, quiet_k, warned_k):
    latents = biased_latents(32, seed=5)
    stats = InputStatistics.of(latents)
    rows = [[1 / k] * k + [0.0] * (32 - k) for k in (quiet_k, warned_k)]

    quiet, warned = diagnose(stats, rows, method, Thresholds(max_amplification=100))

    assert (quiet.k_eff, warned.k_eff) == pytest.approx((quiet_k, warned_k))
    assert not any("K_eff" in w and "Fig. 7" in w for w in quiet.warnings)
    assert any(f"K_eff = {warned_k}.0" in w and "Fig. 7" in w for w in warned.warnings)


def test_few_inputs_per_mix_earn_no_k_warning_and_slerp_none():
    latents = biased_latents(4, seed=6)
    rows = np.random.default_rng(0).dirichlet(np.ones(4), size=20).tolist()

    found = diagnose(InputStatistics.of(latents), rows, "nin/chm")
    (slerp,) = diagnose(InputStatistics.of(latents[:2]), [[0.5, 0.5]], "slerp")

    assert all(d.warnings == [] for d in found)
    assert not any("K_eff" in w for w in slerp.warnings)


def test_lerp_warns_of_its_norm_loss_and_thresholds_come_from_settings():
    latents = biased_latents(16, seed=4)
    stats = InputStatistics.of(latents)

    (lerp,) = diagnose(stats, [[1 / 16] * 16], "lerp")
    (lenient,) = diagnose(stats, [[1 / 16] * 16], "lerp", Thresholds(min_norm_ratio=0.1))

    assert lerp.norm_ratio < 0.5
    assert any("interpolated norm" in w for w in lerp.warnings)
    assert not any("interpolated norm" in w for w in lenient.warnings)


def test_unbiased_inputs_report_no_amplification():
    latents = np.zeros((2, 4, 8, 8))
    latents[0, :, ::2] = 1.0
    latents[0, :, 1::2] = -1.0
    latents[1] = -latents[0].transpose(0, 2, 1)

    (found,) = diagnose(InputStatistics.of(latents), [[0.5, 0.5]], "nin/0")

    assert found.bias_amplification is None


def test_statistics_computed_in_slices_equal_the_whole_computation(monkeypatch):
    latents = biased_latents(6, seed=5).astype(np.float32)
    monkeypatch.setattr(diagnostics_module, "_CHUNK_ELEMENTS", 100)  # 4 positions a slice

    stats = InputStatistics.of(latents)

    flat = latents.astype(np.float64).reshape(6, -1)
    np.testing.assert_allclose(stats.gram, flat @ flat.T, rtol=1e-12)
    np.testing.assert_allclose(stats.channel_means, latents.astype(np.float64).mean(axis=(2, 3)))
