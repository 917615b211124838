"""The inversion form fields of POST /latents: the method and each method's own options,
checked against the model's card before anything is queued."""

from typing import Annotated, Literal

from fastapi import Form

from latentmix.service.api.problems import problem
from latentmix.service.core.contract import (
    DEFAULT_INVERSION,
    DEFAULT_RECONSTRUCTION_MEASURE,
    INVERSION_OPTIONS,
    MAX_INVERSION_ITERATIONS,
    OPTION_FIELDS,
    InversionSettings,
    ReconstructionMeasure,
    reconstruction_measure,
)
from latentmix.service.core.model_card import ModelCard

# The form fields this module reads, as inversion_form declares them.
INVERSION_FORM_FIELDS = ("inversion", *OPTION_FIELDS, "measure_reconstruction")


class InversionForm:
    """The method and options as sent; `settings` checks them against a model."""

    def __init__(
        self, method: str | None, options: dict, measure_reconstruction: ReconstructionMeasure
    ):
        self.method = method
        self.options = {name: value for name, value in options.items() if value is not None}
        self.measure_reconstruction = measure_reconstruction

    def settings(
        self, card: ModelCard | None, steps: int, guidance_scale: float, size: int | None
    ) -> InversionSettings:
        """The request's InversionSettings with the method's option defaults filled in; a
        422 naming the allowed values for a method the model does not list or an option of
        another method. Without a card (no worker served the model yet) every method is
        allowed and the worker refuses what its family cannot run."""
        allowed = card.inversion_methods if card else tuple(INVERSION_OPTIONS)
        default = card.inversion_methods[0] if card else DEFAULT_INVERSION
        settings = InversionSettings(
            method=self.method,
            steps=steps,
            guidance_scale=guidance_scale,
            size=size,
            **self.options,
        )
        try:
            return settings.for_method(allowed, default)
        except ValueError as exc:
            raise problem(422, str(exc)) from None


def inversion_form(
    inversion: Annotated[
        str | None,
        Form(
            description="inversion method: ddim, fixed-point, edict, bdia, negative-prompt, "
            "null-text (Stable Diffusion), flow-euler, rf-solver (SD 3); GET /models lists each "
            "model's. Default: the model family's first (ddim for Stable Diffusion)"
        ),
    ] = None,
    inversion_iterations: Annotated[
        int | None,
        Form(
            ge=0,
            le=MAX_INVERSION_ITERATIONS,
            description="fixed-point: iterations per step (default 5; 0 is DDIM)",
        ),
    ] = None,
    renoise_average: Annotated[
        bool | None,
        Form(description="fixed-point: ReNoise averaging of the last estimates (default off)"),
    ] = None,
    edict_mix: Annotated[
        float | None, Form(gt=0.0, le=1.0, description="edict: the mixing weight p (0.93)")
    ] = None,
    bdia_gamma: Annotated[
        float | None,
        Form(description="bdia: gamma; only 1 inverts (others diverge in float32)"),
    ] = None,
    null_text_iterations: Annotated[
        int | None,
        Form(
            ge=0,
            le=MAX_INVERSION_ITERATIONS,
            description="null-text: Adam iterations per step (default 10, early stop)",
        ),
    ] = None,
    timestep_spacing: Annotated[
        Literal["leading", "trailing"] | None,
        Form(
            description="every DDIM-type method: timestep spacing in inversion and generation "
            "(trailing: Lin et al.); default: the scheduler's (leading for SD 1.5)"
        ),
    ] = None,
    guidance_rescale: Annotated[
        float | None,
        Form(
            ge=0.0,
            le=1.0,
            description="every DDIM-type method: diffusers' rescale_noise_cfg phi, in "
            "inversion and generation (default 0: none)",
        ),
    ] = None,
    measure_reconstruction: Annotated[
        str,
        Form(
            description="which latents to regenerate to record their round trip's error "
            "(latent RMSE, pixel PSNR), each costing a generation pass: sample (one per job, "
            "its record says `sample_of`; none for edict and bdia, exact by construction), "
            "all, or none; true and false (as before) mean all and none",
        ),
    ] = DEFAULT_RECONSTRUCTION_MEASURE,
) -> InversionForm:
    options = {
        "inversion_iterations": inversion_iterations,
        "renoise_average": renoise_average,
        "edict_mix": edict_mix,
        "bdia_gamma": bdia_gamma,
        "null_text_iterations": null_text_iterations,
        "timestep_spacing": timestep_spacing,
        "guidance_rescale": guidance_rescale,
    }
    try:
        measure = reconstruction_measure(measure_reconstruction)
    except ValueError as exc:
        raise problem(422, str(exc)) from None
    return InversionForm(inversion, options, measure)
