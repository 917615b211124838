"""The morph planner: paths, frame counts, spacings (Beta against scipy), re-spacing."""

import itertools

import pytest
from scipy import stats

from latentmix.service.core.morph_plan import (
    beta_cdf,
    beta_ppf,
    check_morph,
    plan_frames,
    points_per_segment,
    respace_by_distance,
    segment_coefficients,
)


@pytest.mark.parametrize(
    ("a", "b"),
    [(6.0, 3.0), (20.0, 20.0), (0.5, 0.5), (1.0, 1.0), (2.5, 0.7), (0.05, 300.0), (1e4, 0.05)],
)
def test_beta_coefficients_equal_scipy_inverse_cdf(a, b):
    n = 17
    coefficients = segment_coefficients(n, "beta", a, b)
    expected = stats.beta.ppf([i / (n - 1) for i in range(n)], a, b)
    assert coefficients[0] == 0.0 and coefficients[-1] == 1.0
    assert max(abs(c - e) for c, e in zip(coefficients, expected, strict=True)) < 1e-9


@pytest.mark.parametrize("x", [1e-6, 0.01, 0.3, 0.5, 0.77, 0.999])
def test_beta_cdf_equals_scipy(x):
    assert beta_cdf(x, 6.0, 3.0) == pytest.approx(stats.beta.cdf(x, 6.0, 3.0), abs=1e-13)
    assert beta_ppf(0.0, 2, 2) == 0.0 and beta_ppf(1.0, 2, 2) == 1.0


def test_linear_coefficients_are_evenly_spaced_with_exact_ends():
    assert segment_coefficients(5, "linear") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert segment_coefficients(2, "beta") == [0.0, 1.0]


def test_a_chain_visits_each_keyframe_once_in_order():
    frames = plan_frames(3, 7, path="chain")
    # 4 frames between the 3 keyframes, 2 per segment: 4 points on each segment.
    assert points_per_segment(3, 7, "chain") == [4, 4]
    assert [(f.segment, f.start, f.end) for f in frames] == [(0, 0, 1)] * 3 + [(1, 1, 2)] * 4
    assert [f.coefficient for f in frames] == pytest.approx([0, 1 / 3, 2 / 3, 0, 1 / 3, 2 / 3, 1])
    assert [f.keyframe for f in frames] == [0, None, None, 1, None, None, 2]
    assert points_per_segment(3, 8, "chain") == [5, 4]  # the spare frame goes first


def test_a_loop_returns_to_the_first_keyframe_without_repeating_it():
    frames = plan_frames(2, 6, path="loop")
    assert len(frames) == 6
    assert [(f.start, f.end) for f in frames] == [(0, 1)] * 3 + [(1, 0)] * 3
    assert [f.keyframe for f in frames].count(0) == 1
    assert frames[-1].weights(2)[0] == pytest.approx(2 / 3)


def test_frame_weights_are_mix_rows_over_all_keyframes():
    frame = plan_frames(3, 5)[3]  # segment 1 (keyframes 1 -> 2), t = 0.5
    assert (frame.segment, frame.coefficient) == (1, 0.5)
    assert frame.weights(3) == [0.0, 0.5, 0.5]


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"keyframes": 1, "frames": 4}, "at least 2 keyframes"),
        ({"keyframes": 3, "frames": 2}, "at least the number of keyframes"),
        ({"keyframes": 2, "frames": 50, "max_frames": 10}, "limit is 10"),
        ({"keyframes": 2, "frames": 5, "spacing": "cosine"}, "unknown spacing 'cosine'"),
        ({"keyframes": 2, "frames": 5, "attention": "cross"}, "unknown attention 'cross'"),
        ({"keyframes": 2, "frames": 5, "path": "zigzag"}, "unknown path 'zigzag'"),
        ({"keyframes": 2, "frames": 5, "spacing": "beta", "alpha": 0}, "must be > 0"),
        ({"keyframes": 2, "frames": 5, "spacing": "beta", "beta": -1}, "must be > 0"),
        ({"keyframes": 2, "frames": 5, "spacing": "beta", "beta": float("inf")}, "at most"),
        ({"keyframes": 2, "frames": 5, "spacing": "beta", "alpha": float("nan")}, "must be > 0"),
    ],
)
def test_bad_morphs_are_refused_naming_the_problem(kwargs, phrase):
    with pytest.raises(ValueError, match=phrase):
        check_morph(**kwargs)


def test_perceptual_respacing_evens_out_a_known_distance():
    # Synthetic morph whose frame at t looks like f(t) = t**3: the distance between
    # consecutive frames is |f(t_i+1) - f(t_i)|, known in closed form.
    def distances(ts):
        return [abs(b**3 - a**3) for a, b in itertools.pairwise(ts)]

    linear = segment_coefficients(9, "perceptual")
    respaced = respace_by_distance(linear, distances(linear))
    before, after = distances(linear), distances(respaced)
    assert respaced[0] == 0.0 and respaced[-1] == 1.0
    assert max(after) - min(after) < 0.25 * (max(before) - min(before))
    # The exact answer inverts f: t_i = (i / 8) ** (1 / 3); the polyline gets close.
    exact = [(i / 8) ** (1 / 3) for i in range(9)]
    assert max(abs(r - e) for r, e in zip(respaced, exact, strict=True)) < 0.1


def test_respacing_equal_distances_changes_nothing():
    linear = segment_coefficients(5, "linear")
    assert respace_by_distance(linear, [0.1] * 4) == pytest.approx(linear)
    assert respace_by_distance(linear, [0.0] * 4) == linear
    with pytest.raises(ValueError, match="one per consecutive pair"):
        respace_by_distance(linear, [1.0])
    # All the change sits in the first and last quarter: half the frames go there each.
    assert respace_by_distance(linear, [1, 0, 0, 1]) == [0.0, 0.125, 0.25, 0.875, 1.0]
