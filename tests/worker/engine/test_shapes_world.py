"""The shapes world: deterministic, upright, and its captions say what is drawn."""

import numpy as np
import pytest

from latentmix.worker.engine.shapes import world


def test_a_sample_is_the_same_every_time_and_in_any_order():
    first = [world.sample(i, seed=5) for i in range(6)]
    again = [world.sample(i, seed=5) for i in reversed(range(6))][::-1]
    for a, b in zip(first, again, strict=True):
        assert a.caption == b.caption
        np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(world.sample(0, seed=5).image, world.sample(0, seed=6).image)


def test_images_are_64px_rgb_in_unit_range():
    image = world.sample(3).image
    assert image.shape == (64, 64, 3) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 1


@pytest.mark.parametrize("shape", world.SHAPES)
def test_the_shape_is_filled_with_its_colour_on_its_background(shape: str):
    image = world.draw(shape, "blue", "gray", centre=(32, 32), radius=20)
    np.testing.assert_allclose(image[32, 32], world.COLOURS["blue"], atol=1e-6)
    for corner in (image[0, 0], image[0, -1], image[-1, 0], image[-1, -1]):
        np.testing.assert_allclose(corner, world.BACKGROUNDS["gray"], atol=1e-6)


def row_widths(shape: str) -> np.ndarray:
    """Covered pixels per image row (y down) of `shape` centred in the image."""
    coverage = world.shape_coverage(shape, centre=(32, 32), radius=20)
    return coverage.sum(axis=1)


def test_the_triangle_stands_on_its_base_with_the_apex_up():
    widths = row_widths("triangle")
    rows = np.nonzero(widths > 0)[0]
    top, bottom = rows[0], rows[-1]
    assert widths[top] < 3 < 25 < widths[bottom]  # a point up top, the wide base below
    assert np.all(np.diff(widths[top : bottom + 1]) >= -1e-6)  # widening all the way down
    # The apex is the circumradius above the centre, the base half of it below.
    assert (top, bottom) == (32 - 20, 32 + 10 - 1)


def test_the_star_points_up():
    widths = row_widths("star")
    rows = np.nonzero(widths > 0)[0]
    assert rows[0] == 32 - 20  # the top point reaches the circumradius; the lower two do not
    assert rows[-1] < 32 + 20 - 2


def test_polygons_are_symmetric_about_the_vertical_axis():
    for shape in ("triangle", "star"):
        coverage = world.shape_coverage(shape, centre=(32, 32), radius=18)
        np.testing.assert_allclose(coverage, coverage[:, ::-1], atol=1e-6)


def test_captions_match_the_drawings():
    for index in range(40):
        s = world.sample(index, seed=1)
        assert s.caption == f"a {s.colour} {s.shape} on a {s.background} background"
        x, y = (round(v) for v in s.centre)
        np.testing.assert_allclose(s.image[y, x], world.COLOURS[s.colour], atol=0.02)
        corner = s.image[0, 0] if s.centre[0] + s.centre[1] > 64 else s.image[-1, -1]
        np.testing.assert_allclose(corner, world.BACKGROUNDS[s.background], atol=1e-6)


def test_the_world_uses_every_shape_colour_and_background():
    drawn = world.samples(range(300))
    assert {s.shape for s in drawn} == set(world.SHAPES)
    assert {s.colour for s in drawn} == set(world.COLOUR_NAMES)
    assert {s.background for s in drawn} == set(world.BACKGROUNDS)
    assert len(world.all_captions()) == 4 * 6 + 4 * 6 * 3


def test_colours_are_far_apart_and_far_from_the_backgrounds():
    colours = np.array(list(world.COLOURS.values()))
    backgrounds = np.array(list(world.BACKGROUNDS.values()))
    between = np.linalg.norm(colours[:, None] - colours[None], axis=2) + np.eye(len(colours)) * 9
    assert between.min() > 0.5
    assert np.linalg.norm(colours[:, None] - backgrounds[None], axis=2).min() > 0.5


def test_an_unknown_shape_is_refused_by_name():
    with pytest.raises(ValueError, match="hexagon"):
        world.draw("hexagon", "red", "white", (32, 32), 10)
