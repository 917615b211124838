"""One spec per inversion method: its name, what it needs of a model (`Needs`, checked
against the model card's capabilities), its options
(a pydantic model: bounds, defaults, descriptions), whether its latents are sampled with
the inversion's step count only, and the names of the state it stores beside the latent.

The contract (`InversionSettings`), the form fields of POST /latents, the OpenAPI document
and the engine's methods (worker/engine/inversion/) all read these specs. Adding a method:
its spec here (and its line in `INVERSION_METHOD_SPECS`), its engine file, and its line in
the engine's registry. Torch-free: both processes import it.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from latentmix.service.core.model_card import (
    NOISE_PREDICTIONS,
    PREDICTS_FLOW,
    PREDICTS_NOISE,
    Needs,
)

MAX_INVERSION_ITERATIONS = 50
# BDIA inversion divides by gamma every step: only gamma = 1 is invertible in float32.
INVERTIBLE_BDIA_GAMMA = 1.0
TIMESTEP_SPACINGS = ("leading", "trailing")


class MethodOptions(BaseModel):
    """A method's options: each field's default is the reference's, its description is what
    the API documents. A method without options has this empty model."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class SamplerOptions(MethodOptions):
    """The options every DDIM-type method takes, used alike in inversion and generation.
    None: not given, and left out of records and ids (so DDIM ids stay what they were)."""

    timestep_spacing: Literal["leading", "trailing"] | None = Field(
        default=None,
        description="every DDIM-type method: timestep spacing in inversion and generation "
        "(trailing: Lin et al.); default: the scheduler's (leading for SD 1.5)",
    )
    guidance_rescale: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="every DDIM-type method: diffusers' rescale_noise_cfg phi, in "
        "inversion and generation (default 0: none)",
    )


class FixedPointOptions(SamplerOptions):
    inversion_iterations: int = Field(
        default=5,
        ge=0,
        le=MAX_INVERSION_ITERATIONS,
        description="fixed-point: iterations per step (default 5; 0 is DDIM)",
    )
    renoise_average: bool = Field(
        default=False,
        description="fixed-point: ReNoise averaging of the last estimates (default off)",
    )


class EdictOptions(SamplerOptions):
    edict_mix: float = Field(
        default=0.93, gt=0.0, le=1.0, description="edict: the mixing weight p (0.93)"
    )


class BdiaOptions(SamplerOptions):
    bdia_gamma: float = Field(
        default=INVERTIBLE_BDIA_GAMMA,
        description="bdia: gamma; only 1 inverts (others diverge in float32)",
    )

    @field_validator("bdia_gamma")
    @classmethod
    def _invertible(cls, gamma: float) -> float:
        if gamma != INVERTIBLE_BDIA_GAMMA:
            raise ValueError(
                f"bdia_gamma must be {INVERTIBLE_BDIA_GAMMA:g} for inversion, got {gamma:g}: "
                "inversion divides by gamma at every step, and any other gamma diverges in "
                "float32 (measured round-trip error 1.2e5 at gamma 0.5, 50 steps)"
            )
        return gamma


class NullTextOptions(SamplerOptions):
    null_text_iterations: int = Field(
        default=10,
        ge=0,
        le=MAX_INVERSION_ITERATIONS,
        description="null-text: Adam iterations per step (default 10, early stop)",
    )


@dataclass(frozen=True)
class InversionMethodSpec:
    """What both processes know of an inversion method (the engine adds the math)."""

    name: str
    needs: Needs  # what a model's card must offer (e.g. PREDICTS_NOISE)
    options: type[MethodOptions] = MethodOptions
    # Its stored state belongs to the inversion's N timesteps (EDICT's and BDIA's coupled
    # pair, null-text's N embeddings): its latents are sampled with exactly those N steps.
    step_bound: bool = False
    state: tuple[str, ...] = ()  # the tensors it stores beside the latent, one row per latent
    latent_state: tuple[str, ...] = ()  # those that are latents (mixed like the latent)
    # Exact by construction: sampling undoes inversion up to float rounding (EDICT, BDIA at
    # gamma 1), so measuring the round trip by default would spend a pass to learn nothing.
    exact: bool = False

    @property
    def option_names(self) -> tuple[str, ...]:
        """Its options by name: its own first, then the shared sampler options it takes."""
        names = self.options.model_fields
        return tuple(sorted(names, key=lambda name: name in SamplerOptions.model_fields))

    def defaults(self) -> dict[str, Any]:
        """Each option's default, by name (None: not given)."""
        return self.options().model_dump()

    def parse(self, options: Mapping[str, Any] | None) -> MethodOptions:
        """`options` over the defaults, checked; ValueError naming each bad option and why."""
        try:
            return self.options(**(options or {}))
        except ValidationError as exc:
            reasons = "; ".join(map(_reason, exc.errors()))
            raise ValueError(f"inversion method {self.name!r}: {reasons}") from None


def _reason(error: Any) -> str:
    """One pydantic error in a sentence: the option, why (a validator's own words), the value."""
    why = error.get("ctx", {}).get("error") or error["msg"]
    name = ".".join(map(str, error["loc"]))
    if error["type"] == "value_error":
        return str(why)
    return f"{name}: {why}, got {error['input']!r}"


DDIM = InversionMethodSpec("ddim", PREDICTS_NOISE, SamplerOptions)
FIXED_POINT = InversionMethodSpec("fixed-point", PREDICTS_NOISE, FixedPointOptions)
EDICT = InversionMethodSpec(
    "edict",
    PREDICTS_NOISE,
    EdictOptions,
    step_bound=True,
    state=("y",),
    latent_state=("y",),
    exact=True,
)
BDIA = InversionMethodSpec(
    "bdia",
    PREDICTS_NOISE,
    BdiaOptions,
    step_bound=True,
    state=("previous",),
    latent_state=("previous",),
    exact=True,
)
NEGATIVE_PROMPT = InversionMethodSpec("negative-prompt", PREDICTS_NOISE, SamplerOptions)
NULL_TEXT = InversionMethodSpec(
    "null-text",
    # phi replaces the unconditional sequence alone: no pooled embedding beside it
    Needs(NOISE_PREDICTIONS, single_text_embedding=True),
    NullTextOptions,
    step_bound=True,
    state=("uncond_embeddings",),
)
FLOW_EULER = InversionMethodSpec("flow-euler", PREDICTS_FLOW)
RF_SOLVER = InversionMethodSpec("rf-solver", PREDICTS_FLOW)

# In the order a family's methods are listed; a family's first is its default.
INVERSION_METHOD_SPECS: dict[str, InversionMethodSpec] = {
    spec.name: spec
    for spec in (DDIM, FIXED_POINT, EDICT, BDIA, NEGATIVE_PROMPT, NULL_TEXT, FLOW_EULER, RF_SOLVER)
}
DEFAULT_INVERSION = DDIM.name  # Stable Diffusion's; other families name their own in their card
STEP_BOUND_METHODS = tuple(name for name, spec in INVERSION_METHOD_SPECS.items() if spec.step_bound)

# Every option of every method, by name: the methods' own first, then the shared sampler
# options (the order of the form fields).
OPTION_FIELDS: dict[str, FieldInfo] = {
    name: spec.options.model_fields[name]
    for spec in INVERSION_METHOD_SPECS.values()
    for name in spec.option_names
    if name not in SamplerOptions.model_fields
} | SamplerOptions.model_fields


def owners_of(option: str) -> tuple[str, ...]:
    """The methods that take `option`."""
    return tuple(s.name for s in INVERSION_METHOD_SPECS.values() if option in s.option_names)
