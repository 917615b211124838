"""The inversion form fields of POST /latents: the method and each method's own options (the
fields come from the method specs, service/core/inversion_methods.py), checked against the
model's card before anything is queued."""

import inspect
from typing import Annotated, Any

from fastapi import Form
from pydantic.fields import FieldInfo

from latentmix.service.api.problems import problem
from latentmix.service.core.contract import (
    DEFAULT_RECONSTRUCTION_MEASURE,
    InversionSettings,
    ReconstructionMeasure,
    reconstruction_measure,
)
from latentmix.service.core.inversion_methods import (
    DEFAULT_INVERSION,
    INVERSION_METHOD_SPECS,
    OPTION_FIELDS,
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
        allowed = card.inversion_methods if card else tuple(INVERSION_METHOD_SPECS)
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


def _form_parameter(name: str, field: FieldInfo) -> inspect.Parameter:
    """A method option as an optional form field: its spec's type, bounds and description."""
    bounds = {
        key: getattr(constraint, key)
        for constraint in field.metadata
        for key in ("gt", "ge", "lt", "le")
        if hasattr(constraint, key)
    }
    form = Form(description=field.description, **bounds)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[field.annotation | None, form],
    )


def inversion_form(
    inversion: str | None = None,
    measure_reconstruction: str = DEFAULT_RECONSTRUCTION_MEASURE,
    **options: Any,
) -> InversionForm:
    try:
        measure = reconstruction_measure(measure_reconstruction)
    except ValueError as exc:
        raise problem(422, str(exc)) from None
    return InversionForm(inversion, options, measure)


_EXACT_METHODS = " and ".join(name for name, spec in INVERSION_METHOD_SPECS.items() if spec.exact)
# FastAPI reads the form fields from the signature: the method, each option of the specs
# (service/core/inversion_methods.py), then measure_reconstruction.
inversion_form.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter(
            "inversion",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                str | None,
                Form(
                    description=f"inversion method: {', '.join(INVERSION_METHOD_SPECS)}; GET "
                    "/models lists each model's. Default: the model's first (ddim for Stable "
                    "Diffusion)"
                ),
            ],
        ),
        *(_form_parameter(name, field) for name, field in OPTION_FIELDS.items()),
        inspect.Parameter(
            "measure_reconstruction",
            inspect.Parameter.KEYWORD_ONLY,
            default=DEFAULT_RECONSTRUCTION_MEASURE,
            annotation=Annotated[
                str,
                Form(
                    description="which latents to regenerate to record their round trip's "
                    "error (latent RMSE, pixel PSNR), each costing a generation pass: sample "
                    "(one per job, its record says `sample_of`; none for "
                    f"{_EXACT_METHODS}, exact by construction), all, or none; true and false "
                    "(as before) mean all and none",
                ),
            ],
        ),
    ]
)
