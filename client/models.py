"""What the service answers, as typed, frozen dataclasses parsed from its JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    def is_terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the service (`GET /limits`); sizes in bytes. The
    defaults are those of a service too old to say (release 0.1)."""

    max_latents_per_mix: int = 256
    max_mixes_per_request: int = 1000
    max_files: int = 64
    max_upload_bytes: int = 32 * 2**20
    max_request_bytes: int = 128 * 2**20
    max_image_pixels: int = 4096 * 4096
    min_image_size: int = 64
    max_image_size: int = 2048
    max_prompt_chars: int = 2000
    max_steps: int = 500
    max_guidance: float = 30.0
    max_wait_s: float = 60.0
    max_morph_frames: int = 240

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Limits:
        names = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class Latent:
    """One latent of a `POST /latents` answer: ready, or pending on `job`."""

    id: str
    status: str
    cached: bool = False
    job: str | None = None
    filename: str | None = None
    source: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Latent:
        return cls(
            id=data["id"],
            status=data["status"],
            cached=bool(data.get("cached", False)),
            job=data.get("job"),
            filename=data.get("filename"),
            source=data.get("source"),
        )


@dataclass(frozen=True)
class LatentInfo:
    """A latent's metadata (`GET /latents/{id}`); mixes carry parents, weights, method."""

    id: str
    status: str
    model: str | None = None
    source: str | None = None
    shape: list[int] | None = None
    norm: float | None = None
    channel_means: list[float] | None = None
    parents: list[str] | None = None
    weights: list[float] | None = None
    method: str | None = None
    prompt: str | None = None
    settings: dict[str, Any] | None = None
    error: str | None = None
    inversion: str | None = None  # the inversion method
    aux: dict[str, list[int]] | None = None  # its state tensors' shapes
    aux_bytes: int | None = None
    reconstruction: dict[str, Any] | None = None  # latent_rmse, pixel_psnr_db, pixel_max_error

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatentInfo:
        names = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class Provenance:
    """How an image was made: which latents, mixed with which weights, rendered how."""

    inputs: list[str]
    weights: list[float]
    method: str | None = None
    prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Provenance:
        return cls(
            inputs=list(data.get("inputs") or []),
            weights=[float(w) for w in data.get("weights") or []],
            method=data.get("method"),
            prompt=data.get("prompt"),
            seed=data.get("seed"),
            steps=data.get("steps"),
            guidance_scale=data.get("guidance_scale"),
        )


@dataclass(frozen=True)
class ImageResult:
    """A generated image of a mix job; fetch its PNG with `LatentMixClient.image_bytes`."""

    id: str
    latent: str | None = None
    url: str | None = None
    provenance: Provenance | None = None
    # The mix's degeneracy figures (norms, bias amplification, k_eff, warnings), as sent.
    diagnostics: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any], job_result: dict[str, Any]) -> ImageResult:
        provenance = data.get("provenance")
        if provenance is not None:
            # Fields the server keeps once per job rather than per image.
            provenance = {
                key: job_result.get(key) for key in ("method", "prompt", "steps", "guidance_scale")
            } | provenance
        return cls(
            id=data["id"],
            latent=data.get("latent"),
            url=data.get("url"),
            provenance=Provenance.from_json(provenance) if provenance is not None else None,
            diagnostics=data.get("diagnostics"),
        )


@dataclass(frozen=True)
class Progress:
    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class PlannedImage:
    """An image a mix job will produce, as `POST /mix` announces it before the job runs."""

    id: str
    latent: str
    weights: list[float]
    url: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlannedImage:
        return cls(data["id"], data["latent"], list(data["weights"]), data["url"])


@dataclass(frozen=True)
class ModelInfo:
    """A model the service serves (`GET /models`): its live workers and its card (family,
    latent channels, default size and guidance, inversion methods...; None until a worker
    has loaded it)."""

    name: str
    workers: int
    default: bool
    card: dict[str, Any] | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelInfo:
        return cls(data["name"], int(data["workers"]), bool(data["default"]), data.get("card"))


@dataclass(frozen=True)
class Job:
    """A job's state (`GET /jobs/{id}`). `result` is the raw result; `images` and
    `latents` read it. While a mix job runs, `images` holds those finished so far.
    `planned` holds, for the answer of `POST /mix`, the images the job will produce."""

    id: str
    type: str
    status: JobStatus
    progress: Progress = field(default_factory=Progress)
    model: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    planned: list[PlannedImage] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        progress = data.get("progress") or {}
        return cls(
            id=data["id"],
            type=data.get("type", ""),
            status=JobStatus(data["status"]),
            progress=Progress(int(progress.get("done", 0)), int(progress.get("total", 0))),
            model=data.get("model"),
            created_at=_datetime(data.get("created_at")),
            started_at=_datetime(data.get("started_at")),
            finished_at=_datetime(data.get("finished_at")),
            error=data.get("error"),
            result=data.get("result"),
            planned=[PlannedImage.from_json(image) for image in data.get("planned") or []],
        )

    @property
    def done(self) -> bool:
        return self.status.is_terminal()

    @property
    def latents(self) -> list[str]:
        return list((self.result or {}).get("latents") or [])

    @property
    def images(self) -> list[ImageResult]:
        result = self.result or {}
        return [ImageResult.from_json(image, result) for image in result.get("images") or []]


def _datetime(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
