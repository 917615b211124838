"""Request and response bodies of the HTTP API, named by role (`*Create`, `*Public`)."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from latentmix.service.core.contract import (
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_STEPS,
)
from latentmix.service.core.diagnostics import MixDiagnostics
from latentmix.service.core.ids import ID_RE
from latentmix.service.core.jobs import JobStatus
from latentmix.service.core.latents import Reconstruction
from latentmix.service.core.mix_methods import DEFAULT_METHOD, METHOD_ALIASES, MIX_METHODS
from latentmix.service.core.weight_sampling import DEFAULT_SCHEME, FEW_MAX_INPUTS

LatentId = Annotated[
    str, Field(pattern=ID_RE.pattern, examples=["3f2a9c0d4b1e5f6a7b8c9d0e1f2a3b4c"])
]


# The largest integer every JSON reader holds exactly: OpenAPI tools read bounds as doubles,
# so a bound of 2**63 would let them generate seeds the API refuses.
MAX_SEED = 2**53 - 1

# One weight per input latent. Negative weights are refused by the route, naming the entry
# (service/core/mix_methods.py); the schema says so with `minimum`.
WeightRow = Annotated[
    list[Annotated[float, Field(json_schema_extra={"minimum": 0})]], Field(min_length=1)
]

# A request's classifier-free guidance; None takes the model's.
GuidanceScale = Annotated[
    float | None,
    Field(
        ge=0.0,
        le=MAX_GUIDANCE,
        allow_inf_nan=False,  # NaN passes no comparison: say what is wrong with it
        description="default: the model's (its card's default_guidance: 7.5 SD, 4.5 SD 3)",
    ),
]
WebhookUrl = Annotated[
    AnyHttpUrl,
    Field(description="receives a signed POST when the job ends (needs LATENTMIX_WEBHOOK_SECRET)"),
]


class RequestBody(BaseModel):
    """A JSON request body: a field it does not know is refused by name (a typo such as
    `wieghts` must not silently fall back to a default). The schema says
    `additionalProperties: false`."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [str(key) for key in data if key not in cls.model_fields]
            if unknown:
                raise PydanticCustomError(
                    "unknown_field",
                    "{unknown}; allowed: {allowed}",
                    {
                        "unknown": unknown_fields(unknown),
                        "allowed": ", ".join(cls.model_fields),
                    },
                )
        return data


def unknown_fields(names: list[str]) -> str:
    """`unknown field 'a'` or `unknown fields 'a', 'b'`."""
    listed = ", ".join(repr(name) for name in names)
    return f"unknown field{'s' if len(names) > 1 else ''} {listed}"


class Progress(BaseModel):
    done: int
    total: int


class PlannedImage(BaseModel):
    """An image a mix job will produce, known when the job is queued."""

    id: str
    latent: str = Field(description="the mixed latent's id")
    weights: list[float] = Field(description="the row's weights, normalised to sum 1")
    url: str


class JobPublic(BaseModel):
    id: str
    type: str
    model: str | None
    status: JobStatus
    progress: Progress
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    result: dict[str, Any] | None = Field(
        description="invert: {latents}; mix: {latents, images: [{id, url, latent, provenance, "
        "diagnostics}], method, prompt, steps, guidance_scale}; morph: {latents, images (the "
        "frames, with provenance), keyframes, path, spacing, coefficients, passes, method, "
        "attention, metrics: {distance, distances, smoothness, consistency}, "
        "attention_mb_per_keyframe}; evaluate: {features, clip_features, label, generated, "
        "references, clip_distance, clip_distance_std, clip_distances, fid, kid}"
    )
    planned: list[PlannedImage] | None = Field(
        default=None,
        description="POST /mix and POST /morph: the images the job will produce, in order",
    )


class LatentEntry(BaseModel):
    """One latent of a POST /latents answer."""

    id: str
    status: Literal["ready", "pending"]
    cached: bool = Field(description="true when the latent was already known")
    job: str | None = Field(description="the job computing it, while pending")
    filename: str | None = None
    source: Literal["image", "upload"]


class LatentsCreated(BaseModel):
    latents: list[LatentEntry]
    job: JobPublic | None


class LatentPublic(BaseModel):
    """A latent's metadata: the statistics the paper's diagnosis is about."""

    id: str
    status: Literal["ready", "pending", "failed"]
    job: str | None = None
    error: str | None = None
    model: str | None = None
    source: Literal["image", "upload", "mix"] | None = None
    settings: dict[str, Any] | None = None
    shape: list[int] | None = None
    norm: float | None = None
    channel_means: list[float] | None = None
    parents: list[str] | None = None
    weights: list[float] | None = None
    method: str | None = None
    prompt: str | None = None
    inversion: str | None = Field(default=None, description="the inversion method")
    aux: dict[str, list[int]] | None = Field(
        default=None, description="auxiliary state tensors (in /data as aux.*) and shapes"
    )
    aux_bytes: int | None = Field(default=None, description="the auxiliary state's size")
    reconstruction: Reconstruction | None = Field(
        default=None, description="inverted images: the round trip's error"
    )
    created_at: datetime | None = None


class SampleSpec(RequestBody):
    """Seeded weights for many mixes, instead of explicit weights."""

    count: int = Field(ge=1, description="number of mixes (one image each)")
    scheme: Literal["few", "dirichlet", "subset"] = Field(
        default=DEFAULT_SCHEME,
        description="few: Dirichlet(alpha) over a random subset of 2 to k inputs (k default "
        f"{FEW_MAX_INPUTS}), whatever the number of latents: mixes of few inputs, where "
        "quality holds; dirichlet: Dirichlet(alpha) over all latents (near the centroid of "
        "a large class: its effective K grows with the class); subset: uniform centroids of "
        "random k-subsets (the paper's experiment)",
    )
    alpha: float = Field(default=1.0, gt=0, le=1000, description="dirichlet concentration")
    k: int | None = Field(
        default=None,
        ge=1,
        description=f"few: the most inputs per mix (default {FEW_MAX_INPUTS}); subset: the "
        "subset size (default all latents)",
    )
    seed: int = Field(
        default=0, ge=0, le=MAX_SEED, description="same seed, same weights and images"
    )


class MixCreate(RequestBody):
    model_config = ConfigDict(
        extra="forbid",
        # weights and sample exclude each other (either may be null).
        json_schema_extra={
            "not": {
                "required": ["weights", "sample"],
                "properties": {"weights": {"type": "array"}, "sample": {"type": "object"}},
            }
        },
    )

    latents: list[LatentId] = Field(
        min_length=1,
        description="input latent ids; at most the server's max_latents_per_mix (GET /limits, "
        "LATENTMIX_MAX_LATENTS_PER_MIX)",
    )
    weights: WeightRow | Annotated[list[WeightRow], Field(min_length=1)] | None = Field(
        default=None,
        description="one weight per latent for one mix, or a list of such rows for many "
        "mixes (one image each); rows are normalised to sum 1; default uniform",
    )
    method: str = Field(
        default=DEFAULT_METHOD,
        description="lerp, slerp, fix/0, fix/m, fix/chm, nin/0, nin/m, nin/chm (fix, nin = /0)",
        json_schema_extra={"enum": [*MIX_METHODS, *METHOD_ALIASES]},
    )
    prompt: str | None = Field(
        default=None,
        max_length=MAX_PROMPT_CHARS,
        description="default: the prompt the inputs were inverted with; where their prompts "
        "differ, each mix's text condition is their prompts' embeddings mixed with its weights "
        "(its provenance's prompt is then null)",
    )
    guidance_scale: GuidanceScale = None
    steps: int | None = Field(
        default=None, ge=1, le=MAX_STEPS, description="default: the inputs' inversion steps"
    )
    sample: SampleSpec | None = Field(default=None, description="seeded weights; not with weights")
    webhook: WebhookUrl | None = None
    attention: str = Field(
        default="none",
        description="N-way attention interpolation with the inputs (AID's rules): none, inner, "
        "outer, fused; each input's own generation runs once per worker (cached)",
        json_schema_extra={"enum": ["none", "inner", "outer", "fused"]},
    )
    attention_steps: float = Field(
        default=0.5, ge=0.0, le=1.0, description="fraction of the steps that interpolate"
    )
    dry_run: bool = Field(
        default=False,
        description="answer 200 with each row's degeneracy diagnostics (norms, channel means, "
        "bias amplification, warnings) and queue nothing; the inputs must be ready",
    )

    @model_validator(mode="after")
    def _weights_or_sample(self) -> "MixCreate":
        if self.weights is not None and self.sample is not None:
            raise ValueError("give either weights or sample, not both")
        return self


class DryRunRow(BaseModel):
    """One row of a dry run: the mix it would make, and that mix's diagnostics."""

    weights: list[float] = Field(description="the row's weights, normalised to sum 1")
    latent: str = Field(description="the id the mixed latent would have")
    image: str = Field(description="the id its image would have")
    diagnostics: MixDiagnostics


class MixDryRun(BaseModel):
    """POST /mix with dry_run: what each mix would be; nothing was queued."""

    method: str
    rows: list[DryRunRow]


class LimitsPublic(BaseModel):
    """What one request may ask of this server; a client checks its plan against these
    before doing any work. Sizes in bytes."""

    max_latents_per_mix: int = Field(description="input latents of one POST /mix")
    max_mixes_per_request: int = Field(description="weight rows or sample.count of one POST /mix")
    max_files: int = Field(description="file parts of one POST /latents")
    max_upload_bytes: int = Field(description="bytes of one uploaded file")
    max_request_bytes: int = Field(description="bytes of one request body")
    max_image_pixels: int = Field(description="width x height of one uploaded image")
    min_image_size: int = Field(description="smallest `size` (image side in pixels)")
    max_image_size: int = Field(description="largest `size` (image side in pixels)")
    max_prompt_chars: int = Field(description="characters of one prompt")
    max_steps: int = Field(description="inversion or generation steps")
    max_guidance: float = Field(description="guidance_scale")
    max_wait_s: float = Field(description="longest hold of GET /jobs/{id}?wait=S")
    max_morph_frames: int = Field(description="frames of one POST /morph, keyframes included")
