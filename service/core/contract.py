"""The typed job contract between the API and the workers.

Each job type has one request model and one result model, and one row in `JOB_TYPES`
(name -> task path -> request model). The API builds a request with everything
deterministic already resolved (weights validated and normalised, ids computed, prompt and
steps taken from the inputs); the task parses it with the same model, so both sides agree
on every field and its default, and a request that does not fit is refused by name.

Torch-free: the API imports it. Defaults of the diffusion settings live here and nowhere
else.
"""

from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from latentmix.service.core.diagnostics import MixDiagnostics
from latentmix.service.core.ids import image_id, mixed_latent_id, morph_frame_image_id
from latentmix.service.core.inversion_methods import (
    DEFAULT_INVERSION,
    INVERSION_METHOD_SPECS,
    OPTION_FIELDS,
    owners_of,
)
from latentmix.service.core.morph_plan import (
    DEFAULT_ATTENTION_STEPS,
    DEFAULT_BETA,
    PlannedFrame,
    plan_frames,
)

# Paper defaults (Landolsi & Kahl): 50 DDIM steps, classifier-free guidance 7.5.
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 7.5
MAX_STEPS = 500
MAX_GUIDANCE = 30.0
# The text encoder reads 77 tokens; a longer prompt is truncated, so this only bounds waste.
MAX_PROMPT_CHARS = 2000


class Contract(BaseModel):
    """A message between the API and a worker: immutable, and no field it does not know."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- invert -----------------------------------------------------------------------------


def _optional(field: FieldInfo) -> tuple[Any, FieldInfo]:
    """A method option as a setting: its type and bounds, None when not given."""
    annotation = (
        Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    )
    return annotation | None, Field(default=None, description=field.description)


# Every method's options, each None unless given (built from the specs in inversion_methods).
InversionOptions = create_model(
    "InversionOptions",
    __base__=Contract,
    **{name: _optional(field) for name, field in OPTION_FIELDS.items()},
)


class InversionSettings(InversionOptions):
    """How images are inverted; part of every inverted latent's id, and what the engine
    inverts with.

    The option fields belong each to one method (service/core/inversion_methods.py); None
    means not given. `for_method` checks them against the method and fills in its defaults,
    so the id of a latent covers every option its method ran with."""

    method: str | None = None  # None: the model family's default (its card's first method)
    steps: int = Field(default=DEFAULT_STEPS, ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(
        default=DEFAULT_GUIDANCE, ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False
    )
    size: int | None = None  # image side in pixels; None: the model's default

    def options(self) -> dict[str, Any]:
        """The options given, by name."""
        return {name: value for name in OPTION_FIELDS if (value := getattr(self, name)) is not None}

    def for_method(self, allowed: tuple[str, ...], default: str) -> "InversionSettings":
        """These settings checked against the methods a model `allowed` (its card's list;
        `default` when no method is named), with the method's option defaults filled in.
        ValueError naming the allowed values otherwise."""
        method = self.method or default
        if method not in allowed:
            raise ValueError(
                f"unknown inversion method {method!r} for this model; allowed: {', '.join(allowed)}"
            )
        spec = INVERSION_METHOD_SPECS.get(method)
        own = spec.option_names if spec else ()
        foreign = [name for name in self.options() if name not in own]
        if foreign:
            takes = ", ".join(own) or "no options"
            owners = "; ".join(
                f"{name!r} belongs to {', '.join(map(repr, owners_of(name)))}" for name in foreign
            )
            raise ValueError(
                f"option {', '.join(map(repr, foreign))} does not apply to inversion method "
                f"{method!r} ({owners}); {method!r} takes: {takes}"
            )
        options = spec.parse(self.options()).model_dump() if spec else {}
        if options.get("guidance_rescale") == 0:  # no rescale: the same latent as without
            options["guidance_rescale"] = None
        return self.model_copy(update=options)

    def id_fields(self) -> dict[str, Any]:
        """What the latent id covers, and what a latent's record holds of its settings. The
        default method (and `ddim`) leaves the method out, so the ids of latents inverted
        before methods existed stay valid (their cache keeps working); the model, part of
        every id too, tells which default it was. Options are covered as given
        (`for_method` fills in the defaults first); absent ones leave no trace, so DDIM ids
        are what they were."""
        fields = self.model_dump(exclude=set(OPTION_FIELDS)) | self.options()
        if self.method in (None, DEFAULT_INVERSION):
            del fields["method"]
        return fields


class InvertItem(Contract):
    latent_id: str
    upload_key: str
    prompt: str


# Which latents of an inversion job are regenerated to record their round trip's error
# (each costs a generation pass): "sample" one per job (none for methods exact by
# construction), "all" every one, "none". Booleans, as release 0.2 took them, mean all or none.
ReconstructionMeasure = Literal["sample", "all", "none"]
RECONSTRUCTION_MEASURES: tuple[str, ...] = get_args(ReconstructionMeasure)
DEFAULT_RECONSTRUCTION_MEASURE: ReconstructionMeasure = "sample"
_MEASURE_WORDS = {"true": "all", "1": "all", "yes": "all", "on": "all"} | {
    "false": "none",
    "0": "none",
    "no": "none",
    "off": "none",
}


def reconstruction_measure(value: object) -> ReconstructionMeasure:
    """The measure a request names (a boolean or its words included); ValueError naming
    the allowed values otherwise."""
    if isinstance(value, bool):
        return "all" if value else "none"
    word = str(value).strip().lower()
    word = _MEASURE_WORDS.get(word, word)
    if word not in RECONSTRUCTION_MEASURES:
        raise ValueError(
            f"measure_reconstruction must be one of {list(RECONSTRUCTION_MEASURES)} "
            f"(or true = all, false = none), got {value!r}"
        )
    return word


class InvertRequest(Contract):
    items: list[InvertItem] = Field(min_length=1)
    settings: InversionSettings
    measure_reconstruction: ReconstructionMeasure = DEFAULT_RECONSTRUCTION_MEASURE

    @field_validator("measure_reconstruction", mode="before")
    @classmethod
    def _measure(cls, value: object) -> ReconstructionMeasure:
        return reconstruction_measure(value)


class ReconstructionSample(Contract):
    measure: ReconstructionMeasure
    measured: list[str]
    of: int
    # The sample is measured after the inversion, by this job on the model's background
    # queue (a worker takes it when nothing else waits); its record holds the error then.
    job: str | None = None


class InvertResult(Contract):
    latents: list[str]
    # The latents whose round trip was measured (their records hold the error), and how
    # many the job inverted: a sample of 1 of N by default.
    reconstruction: ReconstructionSample | None = None


class MeasureRequest(Contract):
    """Regenerate inverted latents with their own method, steps and guidance and record the
    round trip's error on each one's record: an inversion job's sample, off its critical
    path (the background queue)."""

    latents: list[str] = Field(min_length=1)
    sample_of: int | None = None  # the sample of an inversion job of that many latents


class MeasureResult(Contract):
    measured: list[str]


# --- mix --------------------------------------------------------------------------------


class MixRow(Contract):
    """One weight row of a mix job and the ids it produces (computed by the API)."""

    weights: list[float]  # normalised: they sum to 1
    latent: str  # the mixed latent's id
    image: str  # its image's id


class MixRequest(Contract):
    """A mix job, resolved by the API: normalised weight rows and their ids."""

    latents: list[str] = Field(min_length=1)
    method: str
    # None: each row's text condition is the inputs' prompts (`prompts`, one per input)
    # embedded and mixed with the row's weights (method.md section 3), as morph frames do.
    prompt: str | None
    prompts: list[str] | None = None
    steps: int = Field(ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False)
    seed: int | None = None
    rows: list[MixRow] = Field(min_length=1)
    producers: dict[str, str] = Field(default_factory=dict)  # pending input -> its job
    # The inputs' inversion method when not the model's default (None: plain latents,
    # sampled as today), and its steps and options; see service/core/inversion_mixing.py.
    inversion: str | None = None
    inversion_settings: dict[str, Any] = Field(default_factory=dict)
    # N-way attention interpolation with the inputs (worker/engine/attention/): "none" or
    # inner/outer/fused, during the first `attention_steps` fraction of the steps.
    attention: str = "none"
    attention_steps: float = Field(default=DEFAULT_ATTENTION_STEPS, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> "MixRequest":
        if (self.prompt is None) != (self.prompts is not None):
            raise ValueError("a mix has either one prompt or the inputs' prompts to mix")
        if self.prompts is not None and len(self.prompts) != len(self.latents):
            raise ValueError(f"{len(self.prompts)} prompts for {len(self.latents)} latents")
        for index, row in enumerate(self.rows):
            if len(row.weights) != len(self.latents):
                raise ValueError(
                    f"weight row {index} has {len(row.weights)} entries for "
                    f"{len(self.latents)} latents"
                )
        return self

    @property
    def weights(self) -> list[list[float]]:
        return [row.weights for row in self.rows]

    def interpolates(self, index: int) -> bool:
        """Row `index` interpolates attention: a mode is set and it mixes 2+ inputs."""
        return self.attention != "none" and sum(1 for w in self.rows[index].weights if w) > 1

    def image(self, index: int, diagnostics: MixDiagnostics | None = None) -> "MixImage":
        """Row `index` as the result shows it, with its mix's diagnostics if given."""
        row = self.rows[index]
        provenance = Provenance(
            inputs=self.latents,
            method=self.method,
            prompt=self.prompt,
            seed=self.seed,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            weights=row.weights,
            attention=self.attention if self.interpolates(index) else None,
        )
        return MixImage(
            id=row.image, latent=row.latent, provenance=provenance, diagnostics=diagnostics
        )


def plan_mix(
    *,
    latents: list[str],
    rows: list[list[float]],
    method: str,
    prompt: str | None,
    steps: int,
    guidance_scale: float,
    seed: int | None = None,
    prompts: list[str] | None = None,
    producers: dict[str, str] | None = None,
    inversion: str | None = None,
    inversion_settings: dict[str, Any] | None = None,
    attention: str = "none",
    attention_steps: float = DEFAULT_ATTENTION_STEPS,
) -> MixRequest:
    """The mix job for validated weight `rows`: each normalised once (so [1, 1] and
    [0.5, 0.5] are the same mix, with the same ids) and given its latent and image ids.
    A row that is one input alone renders plainly, whatever `attention` says. Without a
    `prompt`, each row mixes the inputs' `prompts` with its weights."""
    planned = []
    for row in rows:
        total = sum(row)
        weights = [w / total for w in row]
        latent = mixed_latent_id(latents, weights, method)
        interpolates = attention != "none" and sum(1 for w in weights if w) > 1
        extra = {"attention": attention, "attention_steps": attention_steps} if interpolates else {}
        if prompt is None:
            extra["prompts"] = prompts
        image = image_id(latent, prompt, steps, guidance_scale, **extra)
        planned.append(MixRow(weights=weights, latent=latent, image=image))
    return MixRequest(
        latents=latents,
        method=method,
        prompt=prompt,
        prompts=prompts if prompt is None else None,
        steps=steps,
        guidance_scale=guidance_scale,
        seed=seed,
        rows=planned,
        producers=producers or {},
        inversion=inversion,
        inversion_settings=inversion_settings or {},
        attention=attention,
        attention_steps=attention_steps,
    )


class Provenance(Contract):
    """How one mixed image was made: enough to make it again."""

    inputs: list[str]
    method: str
    prompt: str | None  # None: the inputs' prompts mixed with `weights`
    seed: int | None
    steps: int
    guidance_scale: float
    weights: list[float]
    attention: str | None = None  # the attention interpolation, where the image has one


class MixImage(Contract):
    """One image of a mix job: its id, the mixed latent's id, its provenance."""

    id: str
    latent: str
    provenance: Provenance
    diagnostics: MixDiagnostics | None = None  # service/core/diagnostics.py; None from release 0.1


class MixResult(Contract):
    latents: list[str]
    images: list[MixImage]
    method: str
    prompt: str | None  # None: each image's inputs' prompts mixed with its weights
    seed: int | None
    steps: int
    guidance_scale: float


def shared_value(values):
    """The one value all `values` share, or None (e.g. the inputs' common prompt)."""
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


# --- morph ------------------------------------------------------------------------------


class MorphProvenance(Contract):
    """How one morph frame was made. `inputs`, `weights`, `method` and `prompt` read as a
    mix's provenance (the frame's latent is that mix); `prompt` is None where the frame's
    text condition interpolates the keyframes' prompt embeddings with `weights`."""

    inputs: list[str]  # the keyframes
    weights: list[float]
    method: str
    prompt: str | None
    segment: int
    coefficient: float
    keyframe: int | None  # the keyframe this frame is (coefficient 0 or 1)
    attention: str
    attention_steps: float
    spacing: str
    steps: int
    guidance_scale: float
    seed: int | None


class MorphFrame(Contract):
    """One frame of a morph: its image id, its mixed latent's id, its provenance."""

    id: str
    latent: str
    provenance: MorphProvenance


class MorphRequest(Contract):
    """A morph job, resolved by the API (shared/morph.md; planner: service/core/morph_plan.py)."""

    keyframes: list[str] = Field(min_length=2)
    prompts: list[str]  # one per keyframe
    guide_prompt: str | None = None  # PAID: the text condition of every inner frame
    frames: int = Field(ge=2)
    path: str = "chain"
    spacing: str = "linear"
    alpha: float = DEFAULT_BETA[0]
    beta: float = DEFAULT_BETA[1]
    method: str
    attention: str = "none"
    attention_steps: float = Field(default=DEFAULT_ATTENTION_STEPS, ge=0.0, le=1.0)
    steps: int = Field(ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False)
    seed: int | None = None
    producers: dict[str, str] = Field(default_factory=dict)  # pending keyframe -> its job

    @model_validator(mode="after")
    def _one_prompt_per_keyframe(self) -> "MorphRequest":
        if len(self.prompts) != len(self.keyframes):
            raise ValueError(
                f"{len(self.prompts)} prompts for {len(self.keyframes)} keyframes; "
                "give one prompt per keyframe"
            )
        return self

    def plan(self, coefficients: list[list[float]] | None = None) -> list[PlannedFrame]:
        """The frames in path order; `coefficients` per segment override the spacing."""
        return plan_frames(
            len(self.keyframes),
            self.frames,
            path=self.path,
            spacing=self.spacing,
            alpha=self.alpha,
            beta=self.beta,
            coefficients=coefficients,
        )

    def frame_prompt(self, frame: PlannedFrame) -> str | None:
        """The one prompt a frame is conditioned on, or None when it interpolates the
        keyframes' prompt embeddings."""
        if frame.keyframe is not None:
            return self.prompts[frame.keyframe]
        if self.guide_prompt is not None:
            return self.guide_prompt
        return shared_value([self.prompts[frame.start], self.prompts[frame.end]])

    def frame(self, frame: PlannedFrame) -> MorphFrame:
        """A planned frame as the result shows it, with its ids. A frame made as a /mix
        would make it (one prompt, plain attention) has the /mix image's id: the same image."""
        weights = frame.weights(len(self.keyframes))
        latent = mixed_latent_id(self.keyframes, weights, self.method)
        prompt = self.frame_prompt(frame)
        attention = "none" if frame.keyframe is not None else self.attention
        if prompt is not None and attention == "none":
            image = image_id(latent, prompt, self.steps, self.guidance_scale)
        else:
            image = morph_frame_image_id(
                latent,
                prompts=self.prompts,
                weights=weights,
                guide_prompt=self.guide_prompt,
                attention=attention,
                attention_steps=self.attention_steps,
                steps=self.steps,
                guidance_scale=self.guidance_scale,
            )
        provenance = MorphProvenance(
            inputs=self.keyframes,
            weights=weights,
            method=self.method,
            prompt=prompt,
            segment=frame.segment,
            coefficient=frame.coefficient,
            keyframe=frame.keyframe,
            attention=attention,
            attention_steps=self.attention_steps,
            spacing=self.spacing,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
        )
        return MorphFrame(id=image, latent=latent, provenance=provenance)


class MorphMetrics(Contract):
    """AID's sequence metrics over consecutive frames, with the distance they used."""

    distance: str  # e.g. "lpips" or the fallback's name
    distances: list[float]  # between consecutive frames, in path order
    smoothness: float  # 1 - Gini coefficient of `distances` (higher is smoother)
    consistency: float  # mean of `distances` (lower is more consistent)


class MorphResult(Contract):
    latents: list[str]
    images: list[MorphFrame]  # the frames, in path order ("images" like a mix's result)
    keyframes: list[str]
    path: str
    spacing: str
    coefficients: list[list[float]]  # per segment, both keyframes included
    passes: int  # generation passes: 2 for perceptual spacing (uniform, then re-spaced)
    method: str
    attention: str
    steps: int
    guidance_scale: float
    seed: int | None
    # The keys and values a keyframe's reference pass keeps (the worker's attention cache
    # holds them, bounded by LATENTMIX_WORKER_ATTENTION_CACHE_MB); None without attention
    # (or when every frame was rendered before).
    attention_mb_per_keyframe: float | None = None
    metrics: MorphMetrics


# --- evaluate ---------------------------------------------------------------------------


EvaluationFeatures = Literal["clip", "inception", "judge"]


class EvaluateRequest(Contract):
    """Score generated images against real ones (the paper's Section 6 measures), or, with
    `judge`, read each one's class with the model's judge (its card's augmentation.judge)."""

    generated: list[str] = Field(min_length=1)  # image ids (stored under images/)
    references: list[str] = Field(default_factory=list)  # storage keys; needed unless judge
    label: str | None = None  # e.g. the class name, repeated in the result
    # Of FID and KID; "judge": of both them and the distance, the model's judge's features
    # (its card's augmentation.judge: on `shapes`, where CLIP and Inception mean little).
    features: EvaluationFeatures = "clip"
    judge: bool = False

    @model_validator(mode="after")
    def _references_unless_judged(self) -> "EvaluateRequest":
        if not self.judge and not self.references:
            raise ValueError("an evaluation needs reference images (or judge)")
        return self


class EvaluateResult(Contract):
    """The figures of one evaluation. FID and KID need two images per set (else null). A
    judged evaluation has only the judge's reading of each image (the figures are null)."""

    features: str | None  # FID's and KID's, e.g. "clip:openai/clip-vit-large-patch14"
    clip_features: str | None  # the CLIP distance's encoder, "clip:<LATENTMIX_CLIP_MODEL>"
    label: str | None
    generated: int
    references: int
    clip_distance: float | None  # mean over the generated images (Section 6)
    clip_distance_std: float | None
    clip_distances: list[float] | None  # one per generated image, in order
    fid: float | None
    kid: float | None  # unbiased MMD^2, cubic polynomial kernel
    judge: str | None = None  # the judge that read the images, e.g. "shapes-classifier"
    judged: list[str] | None = None  # its label of each generated image, in order
    judge_confidences: list[float] | None = None  # its probability of that label


# --- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobType:
    name: str  # as the API shows it
    task: str  # dotted path of the RQ task
    request: type[Contract]
    result: type[Contract]


INVERT = JobType(
    "invert", "latentmix.worker.tasks.invert.invert_images", InvertRequest, InvertResult
)
MIX = JobType("mix", "latentmix.worker.tasks.mix.mix_latents", MixRequest, MixResult)
EVALUATE = JobType(
    "evaluate", "latentmix.worker.tasks.evaluate.evaluate_images", EvaluateRequest, EvaluateResult
)
MEASURE = JobType(
    "measure",
    "latentmix.worker.tasks.measure.measure_reconstructions",
    MeasureRequest,
    MeasureResult,
)
JOB_TYPES = {job_type.task: job_type for job_type in (INVERT, MIX, EVALUATE, MEASURE)}
MORPH = JobType("morph", "latentmix.worker.tasks.morph.morph_keyframes", MorphRequest, MorphResult)
JOB_TYPES[MORPH.task] = MORPH
