"""Numeric tests for the latent-mixing math (worker.engine.mixing, service.mix_methods)."""

import itertools
import math

import pytest
import torch

from latentmix.service.core.mix_methods import (
    DEFAULT_METHOD,
    MIX_METHODS,
    canonical_method,
    check_weights,
)
from latentmix.worker.engine.mixing import mix

NORM_METHODS = ("fix/0", "fix/m", "fix/chm", "nin/0", "nin/m", "nin/chm")
REPRODUCING = ("lerp", "nin/0", "nin/m", "nin/chm")
TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def _latents(k: int, c: int = 4, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, c, h, w, generator=g, dtype=torch.float64)


def _random_weights(n: int, k: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, k, generator=g, dtype=torch.float64)
    return w / w.sum(dim=1, keepdim=True)


def _norm(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x.to(torch.float64)))


def _channel_means(x: torch.Tensor) -> torch.Tensor:
    """Per-channel spatial means, broadcast back to x's shape ([..., C, H, W])."""
    return x.mean(dim=(-2, -1), keepdim=True).expand_as(x)


def _global_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(-3, -2, -1), keepdim=True).expand_as(x)


_MEAN_OF = {"0": torch.zeros_like, "m": _global_mean, "chm": _channel_means}


# --- input reproduction ------------------------------------------------------------------


@pytest.mark.parametrize("method", REPRODUCING)
def test_one_hot_weights_reproduce_each_input(method):
    z = _latents(3)
    for j in range(3):
        w = [0.0, 0.0, 0.0]
        w[j] = 1.0
        torch.testing.assert_close(mix(z, w, method), z[j], **TIGHT)


def test_slerp_endpoints_reproduce_the_inputs():
    z = _latents(2)
    torch.testing.assert_close(mix(z, [1.0, 0.0], "slerp"), z[0], **TIGHT)
    torch.testing.assert_close(mix(z, [0.0, 1.0], "slerp"), z[1], **TIGHT)


@pytest.mark.parametrize("mean_kind", ["0", "m", "chm"])
def test_fix_with_one_hot_weight_keeps_the_mean_and_rescales_the_residual_to_sqrt_d(mean_kind):
    z = _latents(3)
    d = z[0].numel()
    out = mix(z, [0.0, 1.0, 0.0], f"fix/{mean_kind}")
    mu = _MEAN_OF[mean_kind](z[1])
    residual = out - mu
    assert _norm(residual) == pytest.approx(math.sqrt(d), rel=1e-12)
    # Same direction as the input's residual, and the mean part untouched.
    expected = mu + (z[1] - mu) * math.sqrt(d) / _norm(z[1] - mu)
    torch.testing.assert_close(out, expected, **TIGHT)


# --- norms for random weights ------------------------------------------------------------


def test_fix0_output_norm_is_sqrt_d_and_nin0_is_the_interpolated_input_norm():
    z = _latents(5)
    d = z[0].numel()
    weights = _random_weights(6, 5)
    input_norms = torch.linalg.vector_norm(z.reshape(5, -1), dim=1)
    fix = mix(z, weights, "fix/0")
    nin = mix(z, weights, "nin/0")
    for i, row in enumerate(weights):
        assert _norm(fix[i]) == pytest.approx(math.sqrt(d), rel=1e-12)
        assert _norm(nin[i]) == pytest.approx(float(row @ input_norms), rel=1e-12)
        # Both keep the direction of the linear interpolation (Eq. 1).
        lerp = mix(z, row, "lerp")
        torch.testing.assert_close(fix[i] / _norm(fix[i]), lerp / _norm(lerp), **TIGHT)
        torch.testing.assert_close(nin[i] / _norm(nin[i]), lerp / _norm(lerp), **TIGHT)


@pytest.mark.parametrize("method", ["fix/m", "fix/chm", "nin/m", "nin/chm"])
def test_mean_adjusted_methods_mix_means_linearly_and_normalise_residuals(method):
    norm_kind, mean_kind = method.split("/")
    z = _latents(5) + torch.tensor([0.3, -0.2, 0.1, 0.25], dtype=torch.float64)[:, None, None]
    d = z[0].numel()
    weights = _random_weights(4, 5)
    mean_of = _MEAN_OF[mean_kind]
    mu = mean_of(z)
    residual_norms = torch.linalg.vector_norm((z - mu).reshape(5, -1), dim=1)
    out = mix(z, weights, method)
    for i, row in enumerate(weights):
        expected_mean = torch.einsum("k,kchw->chw", row, mu)
        torch.testing.assert_close(mean_of(out[i]), expected_mean, **TIGHT)
        target = math.sqrt(d) if norm_kind == "fix" else float(row @ residual_norms)
        assert _norm(out[i] - expected_mean) == pytest.approx(target, rel=1e-12)


def test_lerp_is_the_weighted_sum():
    z = _latents(3)
    expected = 0.2 * z[0] + 0.5 * z[1] + 0.3 * z[2]
    torch.testing.assert_close(mix(z, [0.2, 0.5, 0.3], "lerp"), expected, **TIGHT)


# --- Eq. 9: bias amplification -----------------------------------------------------------

BIAS = torch.tensor([0.3, -0.2, 0.1, 0.25], dtype=torch.float64)
KS = (1, 2, 4, 8, 16, 32, 64)


@pytest.fixture(scope="module")
def biased_centroids():
    """Channel means of uniform-weight centroids of z_k = n_k + b, n_k ~ N(0, I), 4x64x64.

    One [7, 64] weight matrix: row i averages the first KS[i] latents.
    """
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 4, 64, 64, generator=g, dtype=torch.float64) + BIAS[:, None, None]
    weights = torch.zeros(len(KS), 64, dtype=torch.float64)
    for i, k in enumerate(KS):
        weights[i, :k] = 1.0  # normalised to 1/k by mix
    input_channel_means = z.mean(dim=(2, 3))
    means = {
        m: mix(z, weights, m).mean(dim=(2, 3)) for m in ("fix/0", "nin/0", "fix/chm", "nin/chm")
    }
    return means, input_channel_means


def _amplification(channel_means: torch.Tensor) -> float:
    """Least-squares factor a in channel_means ~ a * b."""
    return float(channel_means @ BIAS / (BIAS @ BIAS))


@pytest.mark.parametrize("method", ["fix/0", "nin/0"])
def test_norm_adjustment_amplifies_a_common_bias_as_eq9_predicts(biased_centroids, method):
    # With uniform weights l = mean_k z_k = nbar + b, nbar ~ N(0, I/K), so
    # ||l||^2 ~ d (1/K + mean(b^2)). fix rescales l to sqrt(d): the bias is multiplied by
    #   A_K = 1 / sqrt(1/K + mean(b^2))                  (~ sqrt(K) while 1/K >> mean(b^2))
    # nin rescales to mean_k ||z_k|| ~ sqrt(d (1 + mean(b^2))): A_K * sqrt(1 + mean(b^2)).
    # The measured factor has Monte-Carlo standard error A_K / (sqrt(K H W) ||b||) from the
    # noise in the channel means; we allow 4 standard errors plus 1% for replacing ||l|| by
    # its expectation.
    means, _ = biased_centroids
    mean_b2 = float((BIAS**2).mean())
    measured = {}
    for i, k in enumerate(KS):
        predicted = 1 / math.sqrt(1 / k + mean_b2)
        if method == "nin/0":
            predicted *= math.sqrt(1 + mean_b2)
        standard_error = predicted / (math.sqrt(k * 64 * 64) * float(BIAS.norm()))
        measured[k] = _amplification(means[method][i])
        assert measured[k] == pytest.approx(predicted, abs=4 * standard_error + 0.01 * predicted)
    # For small K (1/K dominates mean(b^2) = 0.05) the growth is roughly sqrt(K).
    for k in (2, 4):
        assert measured[k] / measured[1] == pytest.approx(math.sqrt(k), rel=0.15)
    # And the bias keeps growing with K: at K = 64 it is well over 3.5 b.
    assert all(measured[a] < measured[b] for a, b in itertools.pairwise(KS))
    assert measured[64] > 3.5


@pytest.mark.parametrize("method", ["fix/chm", "nin/chm"])
def test_channel_mean_adjustment_keeps_the_bias_at_b(biased_centroids, method):
    # /chm mixes the channel means linearly (Sec. 5) and the residuals have zero channel
    # means, so the output's channel means are exactly the average of the inputs' channel
    # means: b plus noise with standard error 1/sqrt(K H W). Allowed: 4 standard errors.
    means, input_channel_means = biased_centroids
    for i, k in enumerate(KS):
        expected = input_channel_means[:k].mean(dim=0)
        torch.testing.assert_close(means[method][i], expected, rtol=1e-9, atol=1e-12)
        tolerance = 4 / math.sqrt(k * 64 * 64)
        assert torch.all((means[method][i] - BIAS).abs() <= tolerance), (k, means[method][i])


# --- batched path ------------------------------------------------------------------------


@pytest.mark.parametrize("method", MIX_METHODS)
def test_batched_weights_equal_one_call_per_row(method):
    k = 2 if method == "slerp" else 4
    z = _latents(k)
    weights = _random_weights(5, k)
    batched = mix(z, weights, method)
    assert batched.shape == (5, *z.shape[1:])
    for i, row in enumerate(weights):
        torch.testing.assert_close(batched[i], mix(z, row, method), **TIGHT)
    # Nested lists are the same as tensors.
    torch.testing.assert_close(mix(z, weights.tolist(), method), batched, **TIGHT)


# --- slerp ---------------------------------------------------------------------------------


def test_slerp_uses_the_angle_of_the_whole_flattened_latent():
    z1, noise = _latents(2)
    # z2 orthogonal to z1 over the whole latent (not per row), same norm.
    z2 = noise - (noise.flatten() @ z1.flatten()) / (z1.flatten() @ z1.flatten()) * z1
    z2 = z2 * _norm(z1) / _norm(z2)
    out = mix(torch.stack([z1, z2]), [0.5, 0.5], "slerp")
    # theta = pi/2: z = sin(pi/4) / sin(pi/2) (z1 + z2).
    torch.testing.assert_close(out, math.sin(math.pi / 4) * (z1 + z2), **TIGHT)
    t = 0.3
    out = mix(torch.stack([z1, z2]), [1 - t, t], "slerp")
    expected = math.sin((1 - t) * math.pi / 2) * z1 + math.sin(t * math.pi / 2) * z2
    torch.testing.assert_close(out, expected, **TIGHT)


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0])
def test_slerp_of_identical_latents_returns_the_latent(t):
    z = _latents(1)[0]
    out = mix(torch.stack([z, z]), [1 - t, t], "slerp")
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, z, **TIGHT)


def test_slerp_of_parallel_latents_is_the_lerp_limit():
    z = _latents(1)[0]
    out = mix(torch.stack([z, 2 * z]), [0.5, 0.5], "slerp")
    torch.testing.assert_close(out, 1.5 * z, **TIGHT)


def test_slerp_of_nearly_parallel_latents_is_close_to_lerp_without_nan():
    z1, noise = _latents(2)
    latents = torch.stack([z1, z1 + 1e-9 * noise])
    out = mix(latents, [0.7, 0.3], "slerp")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, mix(latents, [0.7, 0.3], "lerp"), rtol=1e-12, atol=1e-12)


def test_slerp_of_opposite_latents_is_refused():
    z = _latents(1)[0]
    with pytest.raises(ValueError, match="opposite"):
        mix(torch.stack([z, -z]), [0.5, 0.5], "slerp")


def test_slerp_with_a_zero_latent_is_refused():
    z = _latents(1)[0]
    with pytest.raises(ValueError, match="non-zero"):
        mix(torch.stack([z, torch.zeros_like(z)]), [0.5, 0.5], "slerp")


@pytest.mark.parametrize("k", [1, 3])
def test_slerp_needs_exactly_two_latents(k):
    with pytest.raises(ValueError, match="exactly 2 latents, got K = " + str(k)):
        mix(_latents(k), [1.0] * k, "slerp")


# --- weights that do not sum to 1, K = 1 --------------------------------------------------


@pytest.mark.parametrize("method", MIX_METHODS)
def test_weights_are_normalised_by_their_sum(method):
    z = _latents(2 if method == "slerp" else 3)
    raw, normalised = (
        ([2.0, 6.0], [0.25, 0.75]) if method == "slerp" else ([2, 6, 2], [0.2, 0.6, 0.2])
    )
    torch.testing.assert_close(mix(z, raw, method), mix(z, normalised, method), **TIGHT)


def test_lerp_of_unnormalised_weights_is_the_weighted_mean_not_the_sum():
    z = _latents(2)
    torch.testing.assert_close(mix(z, [3.0, 3.0], "lerp"), (z[0] + z[1]) / 2, **TIGHT)


@pytest.mark.parametrize("method", [m for m in MIX_METHODS if m != "slerp"])
def test_a_single_latent_is_returned_as_is_or_rescaled(method):
    z = _latents(1)
    out = mix(z, [3.0], method)
    if method.startswith("fix"):
        mu = _MEAN_OF[method.split("/")[1]](z[0])
        expected = mu + (z[0] - mu) * math.sqrt(z[0].numel()) / _norm(z[0] - mu)
        torch.testing.assert_close(out, expected, **TIGHT)
    else:
        torch.testing.assert_close(out, z[0], **TIGHT)


def test_nin_chm_of_a_latent_constant_per_channel_is_exact_not_nan():
    z = torch.ones(1, 4, 8, 8, dtype=torch.float64) * torch.arange(4.0)[:, None, None]
    torch.testing.assert_close(mix(z, [1.0], "nin/chm"), z[0], **TIGHT)
    with pytest.raises(ValueError, match="cancel out"):
        mix(z, [1.0], "fix/chm")


# --- cancellation ------------------------------------------------------------------------


@pytest.mark.parametrize("method", NORM_METHODS)
def test_opposite_latents_that_cancel_out_are_refused(method):
    z = _latents(1)[0]
    latents = torch.stack([z, -z, z])
    with pytest.raises(ValueError, match=r"weighted latents cancel out in weights row 1"):
        mix(latents, [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], method)


def test_lerp_of_cancelling_latents_is_zero():
    z = _latents(1)[0]
    out = mix(torch.stack([z, -z]), [0.5, 0.5], "lerp")
    torch.testing.assert_close(out, torch.zeros_like(z), **TIGHT)


# --- dtypes --------------------------------------------------------------------------------


LOW_PRECISION_TOLERANCE = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 1e-6}


@pytest.mark.parametrize("dtype", list(LOW_PRECISION_TOLERANCE))
@pytest.mark.parametrize("method", MIX_METHODS)
def test_low_precision_input_keeps_its_dtype_and_matches_float64(method, dtype):
    k = 2 if method == "slerp" else 4
    exact = _latents(k)
    z = exact.to(dtype)
    weights = _random_weights(3, k)
    out = mix(z, weights, method)
    assert out.dtype == dtype
    # The arithmetic is float64: only the final rounding to `dtype` differs from float64.
    torch.testing.assert_close(out, mix(z.to(torch.float64), weights, method).to(dtype), **TIGHT)
    # And the result is as close to the mix of the unrounded latents as `dtype` allows.
    tol = LOW_PRECISION_TOLERANCE[dtype]
    torch.testing.assert_close(
        out.to(torch.float64), mix(exact, weights, method), rtol=tol, atol=tol
    )


# --- method names --------------------------------------------------------------------------


def test_method_names():
    assert canonical_method("fix") == "fix/0"
    assert canonical_method("nin") == "nin/0"
    assert DEFAULT_METHOD == "nin/chm"
    for name in MIX_METHODS:
        assert canonical_method(name) == name


@pytest.mark.parametrize("name", ["NIN/CHM", "nin/c", "slerp2", "", None])
def test_unknown_method_names_list_the_allowed_ones(name):
    with pytest.raises(ValueError, match=r"unknown mixing method .*lerp, slerp, fix/0.*nin/chm"):
        canonical_method(name)
    with pytest.raises(ValueError, match="unknown mixing method"):
        mix(_latents(2), [0.5, 0.5], name)


@pytest.mark.parametrize("alias", ["fix", "nin"])
def test_aliases_mix_like_slash_zero(alias):
    z = _latents(3)
    w = [0.2, 0.3, 0.5]
    torch.testing.assert_close(mix(z, w, alias), mix(z, w, alias + "/0"), **TIGHT)


def test_default_method_is_nin_chm():
    z = _latents(3)
    w = [0.2, 0.3, 0.5]
    torch.testing.assert_close(mix(z, w), mix(z, w, "nin/chm"), **TIGHT)


# --- bad inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([0.5, 0.5], r"weights row 0 has 2 entries, expected K = 3"),
        ([[0.2, 0.3, 0.5], [0.5, 0.5]], r"weights row 1 has 2 entries, expected K = 3"),
        ([0.5, -0.1, 0.6], r"weights row 0, entry 1 is negative"),
        ([[1, 0, 0], [0.5, float("nan"), 0.5]], r"weights row 1, entry 1 is not finite"),
        ([0.5, float("inf"), 0.5], r"weights row 0, entry 1 is not finite"),
        ([[1, 0, 0], [0, 0, 1], [0.0, 0.0, 0.0]], r"weights row 2 is all zero"),
        ([1e308, 1e308, 1e308], r"weights row 0 sums to inf"),
        ([True, 0, 0], r"weights row 0, entry 0 is not a number"),
        (["1", 0, 0], r"weights row 0, entry 0 is not a number"),
        ([], r"non-empty"),
        ([[[0.5, 0.5, 0.0]]], r"shape \[K\] or \[N, K\]"),
        ([[0.5, 0.5, 0.0], 1.0], r"shape \[K\] or \[N, K\]"),
        (torch.ones(1, 1, 3), r"shape \[K\] or \[N, K\]"),
        (torch.tensor(1.0), r"non-empty \[K\] or \[N, K\]"),
    ],
)
def test_bad_weights_are_refused_with_the_row_named(weights, match):
    with pytest.raises(ValueError, match=match):
        mix(_latents(3), weights, "lerp")


@pytest.mark.parametrize(
    ("latents", "match"),
    [
        (torch.zeros(4, 8, 8), r"\[K, C, H, W\] tensor, got shape \(4, 8, 8\)"),
        (torch.zeros(2, 1, 4, 8, 8), r"\[K, C, H, W\]"),
        (torch.zeros(2, 4, 8, 8, dtype=torch.int64), "floating point"),
        (torch.full((2, 4, 8, 8), float("nan")), "NaN or inf"),
        (torch.zeros(0, 4, 8, 8), "at least one latent"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_bad_latents_are_refused(latents, match):
    with pytest.raises(ValueError, match=match):
        mix(latents, [1.0], "lerp")


def test_latents_of_different_shapes_cannot_be_stacked_for_mix():
    # mix takes one stacked tensor: the shape error comes from stacking, before mix runs.
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        torch.stack([torch.zeros(4, 8, 8), torch.zeros(4, 16, 16)])


# --- check_weights on plain lists (what the API calls) -------------------------------------


@pytest.mark.parametrize(
    ("rows", "k", "method"),
    [([[0.2, 0.8]], 2, "slerp"), ([[1, 0, 0], [0.1, 0.2, 0.3]], 3, "nin/chm"), ([[5]], 1, "fix")],
)
def test_check_weights_accepts_valid_plain_lists_and_mix_uses_them(rows, k, method):
    assert check_weights(rows, k, method) is None  # no ValueError
    latents = _latents(k)
    mixed = mix(latents, rows, method)
    assert mixed.shape == (len(rows), *latents.shape[1:])
    assert torch.isfinite(mixed).all()


@pytest.mark.parametrize(
    ("rows", "k", "method", "match"),
    [
        ([[0.5, 0.5]], 3, "lerp", r"weights row 0 has 2 entries, expected K = 3"),
        ([[0.5, 0.5], [0.5, -0.5]], 2, "nin/chm", r"weights row 1, entry 1 is negative"),
        ([[0.5, float("nan")]], 2, "lerp", r"weights row 0, entry 1 is not finite"),
        ([[0.0, 0.0]], 2, "fix/0", r"weights row 0 is all zero"),
        ([[0.3, 0.3, 0.4]], 3, "slerp", r"slerp mixes exactly 2 latents, got K = 3"),
        ([], 2, "lerp", r"non-empty list of rows"),
        ([0.5, 0.5], 2, "lerp", r"weights row 0 is not a list"),
        ([[0.5, None]], 2, "lerp", r"weights row 0, entry 1 is not a number"),
        ([[1.0]], 0, "lerp", r"at least one latent"),
        ([[0.5, 0.5]], 2, "mystery", r"unknown mixing method 'mystery'"),
    ],
)
def test_check_weights_names_the_problem(rows, k, method, match):
    with pytest.raises(ValueError, match=match):
        check_weights(rows, k, method)
