"""The job contract: what the API resolves before queueing, and what a worker refuses."""

import pytest
from pydantic import ValidationError

from latentmix.service.core.contract import (
    EVALUATE,
    INVERT,
    JOB_TYPES,
    MEASURE,
    MIX,
    MORPH,
    EvaluateRequest,
    InversionSettings,
    InvertRequest,
    MeasureRequest,
    MixRequest,
    MorphRequest,
    plan_mix,
    shared_value,
)
from latentmix.service.core.ids import image_id, image_latent_id, mixed_latent_id
from latentmix.service.core.weight_sampling import sample_weights

IDS = [f"{i:032x}" for i in range(3)]


def test_each_job_type_has_one_task_and_one_request_model():
    assert {
        INVERT.task: INVERT,
        MIX.task: MIX,
        EVALUATE.task: EVALUATE,
        MORPH.task: MORPH,
        MEASURE.task: MEASURE,
    } == JOB_TYPES
    assert (INVERT.request, MIX.request, EVALUATE.request, MORPH.request, MEASURE.request) == (
        InvertRequest,
        MixRequest,
        EvaluateRequest,
        MorphRequest,
        MeasureRequest,
    )


def test_plan_mix_normalises_each_row_and_computes_its_ids():
    mix = plan_mix(
        latents=IDS[:2],
        rows=[[2, 6], [1, 1]],
        method="nin/chm",
        prompt="a fox",
        steps=20,
        guidance_scale=5.0,
        seed=3,
    )

    assert mix.weights == [[0.25, 0.75], [0.5, 0.5]]
    latent = mixed_latent_id(IDS[:2], [0.25, 0.75], "nin/chm")
    assert mix.rows[0].latent == latent
    assert mix.rows[0].image == image_id(latent, "a fox", 20, 5.0)
    provenance = mix.image(1).provenance
    assert (provenance.inputs, provenance.weights, provenance.seed) == (IDS[:2], [0.5, 0.5], 3)


def two_input_mix(prompt: str | None, prompts: list[str] | None = None) -> MixRequest:
    return plan_mix(
        latents=IDS[:2],
        rows=[[1, 3]],
        method="nin/chm",
        prompt=prompt,
        prompts=prompts,
        steps=10,
        guidance_scale=1.0,
    )


def test_a_mix_without_a_prompt_mixes_its_inputs_prompts_and_its_image_ids_say_so():
    mixed = two_input_mix(None, ["a red circle", "a blue square"])
    empty = two_input_mix("")
    other = two_input_mix(None, ["a red circle", "a green star"])

    assert mixed.prompts == ["a red circle", "a blue square"]
    assert mixed.image(0).provenance.prompt is None
    assert mixed.rows[0].latent == empty.rows[0].latent  # the same mixed latent...
    images = {mixed.rows[0].image, empty.rows[0].image, other.rows[0].image}
    assert len(images) == 3  # ...rendered under other text conditions: other images
    assert empty.prompts is None  # a prompt given: no prompts to mix


def test_a_mix_request_has_one_prompt_or_one_prompt_per_input():
    mix = plan_mix(
        latents=IDS[:2], rows=[[1, 1]], method="lerp", prompt="", steps=10, guidance_scale=1.0
    )
    with pytest.raises(ValidationError, match="either one prompt or the inputs' prompts"):
        MixRequest.model_validate(mix.model_dump() | {"prompt": None})
    with pytest.raises(ValidationError, match="1 prompts for 2 latents"):
        MixRequest.model_validate(mix.model_dump() | {"prompt": None, "prompts": ["a"]})


class CountedRow(list):
    """A weight row that counts how often it is walked through."""

    walks = 0

    def __iter__(self):
        CountedRow.walks += 1
        return super().__iter__()


def test_planning_an_augment_batch_walks_each_row_a_few_times_not_once_per_weight():
    """Each row is normalised by its sum once (summing it once per weight took seconds for
    thousands of latents): counted, not timed."""
    latents = [f"{i:032x}" for i in range(4096)]
    rows = [
        CountedRow(row)
        for row in sample_weights(len(latents), 50, "subset", seed=1, subset_size=10)
    ]
    CountedRow.walks = 0

    mix = plan_mix(
        latents=latents, rows=rows, method="nin/chm", prompt="", steps=50, guidance_scale=7.5
    )

    assert CountedRow.walks <= 4 * len(rows)
    assert all(sum(row) == pytest.approx(1.0) for row in mix.weights)


def test_a_mix_request_whose_rows_do_not_fit_its_inputs_is_refused():
    mix = plan_mix(
        latents=IDS[:2], rows=[[1, 1]], method="lerp", prompt="", steps=10, guidance_scale=1.0
    )
    broken = mix.model_dump() | {"latents": IDS}

    with pytest.raises(ValidationError, match="weight row 0 has 2 entries for 3 latents"):
        MixRequest.model_validate(broken)


def test_contract_messages_refuse_fields_they_do_not_know():
    mix = plan_mix(
        latents=IDS[:1], rows=[[1]], method="lerp", prompt="", steps=10, guidance_scale=1.0
    )
    with pytest.raises(ValidationError, match="wieghts"):
        MixRequest.model_validate(mix.model_dump() | {"wieghts": [1]})


def test_ddim_latent_ids_are_those_of_the_previous_release():
    settings = InversionSettings(steps=10, guidance_scale=7.5, size=None)
    before_methods = {"steps": 10, "guidance_scale": 7.5, "size": None, "prompt": "p"}

    assert settings.id_fields() | {"prompt": "p"} == before_methods
    assert image_latent_id(b"png", "tiny", settings.id_fields() | {"prompt": "p"}) == (
        image_latent_id(b"png", "tiny", before_methods)
    )


def test_naming_no_method_or_ddim_gives_the_same_ids():
    assert (
        InversionSettings(steps=10).id_fields()
        == InversionSettings(method="ddim", steps=10).id_fields()
    )


def test_other_inversion_methods_get_other_ids():
    ddim = InversionSettings(steps=10).id_fields()
    other = InversionSettings(method="edict", steps=10).id_fields()
    assert other["method"] == "edict"
    assert image_latent_id(b"png", "tiny", ddim) != image_latent_id(b"png", "tiny", other)


def test_shared_value_is_the_value_all_share_or_none():
    assert shared_value(["a", "a"]) == "a"
    assert shared_value(["a", "b"]) is None
    assert shared_value([]) is None


def morph(**overrides) -> MorphRequest:
    fields = {
        "keyframes": IDS[:2],
        "prompts": ["a fox", "a fox"],
        "frames": 5,
        "method": "nin/chm",
        "steps": 20,
        "guidance_scale": 5.0,
    } | overrides
    return MorphRequest(**fields)


def test_a_plain_morph_frame_is_the_mix_of_its_weights_with_the_same_ids():
    request = morph()
    frame = request.frame(request.plan()[1])  # t = 0.25 between the two keyframes
    mix = plan_mix(
        latents=IDS[:2],
        rows=[[0.75, 0.25]],
        method="nin/chm",
        prompt="a fox",
        steps=20,
        guidance_scale=5.0,
    )
    assert (frame.id, frame.latent) == (mix.rows[0].image, mix.rows[0].latent)
    assert frame.provenance.segment == 0 and frame.provenance.keyframe is None


def test_morph_frames_that_interpolate_prompts_or_attention_get_their_own_image_ids():
    plain = morph().frame(morph().plan()[1])
    prompts = morph(prompts=["a fox", "a cat"])
    attention = morph(attention="fused")
    assert prompts.frame_prompt(prompts.plan()[1]) is None
    assert (
        len(
            {plain.id, prompts.frame(prompts.plan()[1]).id, attention.frame(attention.plan()[1]).id}
        )
        == 3
    )
    assert len({plain.latent, attention.frame(attention.plan()[1]).latent}) == 1
    # Keyframes are their own generation whatever the mode: the same image.
    assert attention.frame(attention.plan()[0]).id == morph().frame(morph().plan()[0]).id
    guided = morph(prompts=["a fox", "a cat"], guide_prompt="an animal")
    assert guided.frame_prompt(guided.plan()[2]) == "an animal"
    assert guided.frame_prompt(guided.plan()[4]) == "a cat"


def test_a_morph_needs_one_prompt_per_keyframe():
    with pytest.raises(ValidationError, match="1 prompts for 2 keyframes"):
        morph(prompts=["a fox"])
