"""The reconstruction error every inverted latent records (engine/reconstruction.py and
`invert(measure=True)`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from latentmix.worker.engine import reconstruction
from latentmix.worker.engine.diffusion import (
    InversionSettings,
    decode_latents,
    encode_images,
    encode_prompts,
    invert,
    round_trip,
    sample,
)

PROMPT = "a photo of a cat"


def test_measured_errors_are_those_of_the_round_trip_written_out(tiny_model, images):
    settings = InversionSettings(steps=3, guidance_scale=7.5)
    result = invert(tiny_model, images[:2], PROMPT, settings, measure=True)

    conditioning = encode_prompts(tiny_model, [PROMPT] * 2)
    regenerated = sample(tiny_model, result, conditioning, steps=3, guidance_scale=7.5)
    clean = encode_images(tiny_model, images[:2], tiny_model.default_size)
    ours, theirs = decode_latents(tiny_model, regenerated), decode_latents(tiny_model, clean)
    for row in range(2):
        rmse = math.sqrt(float(((regenerated[row] - clean[row]).double() ** 2).mean()))
        difference = np.asarray(ours[row], float) - np.asarray(theirs[row], float)
        psnr = 10 * math.log10(255**2 / np.mean(difference**2))
        errors = {name: float(values[row]) for name, values in result.reconstruction.items()}
        assert errors["latent_rmse"] == pytest.approx(rmse, rel=1e-6)
        assert errors["pixel_psnr_db"] == pytest.approx(psnr, rel=1e-9)
        assert errors["pixel_max_error"] == np.abs(difference).max()


def test_identical_pictures_have_an_infinite_psnr():
    picture = Image.new("RGB", (8, 8), (10, 20, 30))
    psnr, largest = reconstruction.pixel_errors([picture], [picture])
    assert math.isinf(float(psnr[0])) and float(largest[0]) == 0


def test_without_measuring_nothing_is_recorded(tiny_model, images):
    result = invert(tiny_model, images[:1], PROMPT, InversionSettings(steps=2))
    assert result.reconstruction == {}


def test_progress_counts_inversion_then_measurement_and_can_cancel_either(tiny_model, images):
    reports: list[tuple[int, int]] = []
    settings = InversionSettings(steps=3, method="edict")
    invert(tiny_model, images[:1], PROMPT, settings, lambda *r: reports.append(r), measure=True)
    assert reports[-1] == (12, 12)  # 2 x 3 evaluations per direction, EDICT
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)
    assert {total for _, total in reports} == {12}

    class Canceled(Exception):
        pass

    def cancel_in_second_half(done: int, total: int) -> None:
        if done > total // 2:
            raise Canceled

    with pytest.raises(Canceled):
        invert(tiny_model, images[:1], PROMPT, settings, cancel_in_second_half, measure=True)


def test_measuring_the_first_rows_records_their_errors_as_measuring_all_does(tiny_model, images):
    settings = InversionSettings(steps=3, guidance_scale=7.5)
    every = invert(tiny_model, images[:3], PROMPT, settings, measure=True)
    first = invert(tiny_model, images[:3], PROMPT, settings, measure=1)
    # Within float rounding of batch 1 against batch 3 (one 8-bit level for the largest).
    tolerance = {"latent_rmse": 1e-3, "pixel_psnr_db": 1e-3, "pixel_max_error": 1.0}
    for name, values in first.reconstruction.items():
        expected = float(every.reconstruction[name][0])
        assert float(values[0]) == pytest.approx(expected, rel=1e-3, abs=tolerance[name])
        assert values[1:].isnan().all()


def test_progress_counts_a_sampled_measurement_as_its_share_of_the_rows(tiny_model, images):
    reports: list[tuple[int, int]] = []
    settings = InversionSettings(steps=6)
    invert(tiny_model, images, PROMPT, settings, lambda *r: reports.append(r), measure=1)
    # 6 inversion steps, then one row of three regenerated: a third of 6 steps more.
    assert reports[-1] == (8, 8)
    assert {total for _, total in reports} == {8}
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)


@pytest.mark.parametrize("method", ["ddim", "fixed-point", "null-text", "negative-prompt"])
def test_a_round_trip_measured_later_is_the_one_measured_inline(tiny_model, images, method):
    """The measure job's path (a stored latent, its state and settings, the image and
    prompt) gives the errors `invert(measure=True)` records, per row."""
    settings = InversionSettings(method=method, steps=3, guidance_scale=7.5)
    inline = invert(tiny_model, images[:2], PROMPT, settings, measure=True)
    stored = inline.rows(1, 2)  # what the catalog gives back for the second latent

    later = round_trip(tiny_model, stored, images[1:2], PROMPT)

    # Batch 1 against batch 2 through the UNet: equal up to float32 rounding (which may
    # move a decoded pixel by one 8-bit level).
    expected = {name: float(values[1]) for name, values in inline.reconstruction.items()}
    assert float(later["latent_rmse"][0]) == pytest.approx(expected["latent_rmse"], rel=1e-4)
    assert float(later["pixel_psnr_db"][0]) == pytest.approx(expected["pixel_psnr_db"], abs=0.05)
    assert float(later["pixel_max_error"][0]) == pytest.approx(expected["pixel_max_error"], abs=1)
