"""Settings: one class, read from the environment once (`get_settings()`).

Every variable is documented in docs/configuration.md (tests/service/test_config.py checks it).
"""

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
MIN_API_KEY_LENGTH = 16
# Comma-separated environment values (`a,b,c`), not JSON.
CommaList = Annotated[list[str], NoDecode]
SecretCommaList = Annotated[list[SecretStr], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LATENTMIX_", extra="ignore")

    # Model served by a worker (hub id, local directory, or "tiny"); also the API's default.
    model: str = DEFAULT_MODEL
    # Root for embedded state: the local store, embedded Redis data, the cached tiny model.
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8000

    # Redis. Unset: `latentmix up` starts an embedded server on a fixed port (so its URL is
    # the same after a restart); API and worker alone use localhost's 6379.
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    embedded_redis_port: int = Field(default=6390, ge=1, le=65535)
    # Redis Sentinel (service/core/redis_connection.py): `host:port` of each sentinel; set, the
    # service uses the current master of `redis_sentinel_master` instead of REDIS_URL.
    redis_sentinels: CommaList = Field(default_factory=list)
    redis_sentinel_master: str = "mymaster"
    redis_password: SecretStr | None = None  # Redis's own (for REDIS_URL, one in it wins)
    redis_sentinel_password: SecretStr | None = None  # the sentinels' (`requirepass` there)
    # TLS (rediss:// URLs, or Sentinel with this set): the CA file the server is checked with.
    redis_ca_file: Path | None = None
    # The API answers 202 only once this many replicas have the job (Redis WAIT, up to
    # 1 s; else 503 with Retry-After): an accepted job survives a failover. 0: no waiting.
    redis_min_replicas: int = Field(default=0, ge=0)

    # Storage: S3 when a bucket is set, else a directory under data_dir.
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None  # host in presigned image URLs, if not the above
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_addressing_style: Literal["path", "virtual", "auto"] = "path"
    s3_prefix: str = ""
    presign_expiry_s: int = 3600

    # Worker: compute device and batch bounds ("auto": CUDA fp16 if available, else CPU fp32).
    device: str = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    max_batch_size: int | None = None  # None: a per-device default
    vae_batch_size: int | None = None  # images per VAE call; None: a per-device default
    # Images per UNet call when inverting; None: a per-device default (the largest that pays)
    inversion_batch_size: int | None = None
    compile: bool = False  # torch.compile the UNet (for CUDA; each new batch shape compiles)
    # SD 3: load the T5 text encoder (most of the model's memory); false leaves it out and the
    # T5 part of the prompt embedding is zeros. The model card says which (`t5`).
    t5: bool = True
    # Decoded latents a worker keeps in memory (those it inverted, mixed or read), MiB; 0: none.
    worker_latent_memory_mb: int = Field(default=256, ge=0)
    # Keyframes' attention keys and values a worker keeps for attention-interpolated morphs
    # and mixes (worker/engine/attention/), MiB (SD 1.5, 512 px, 50 steps: ~1.1 GB per
    # keyframe, fp16); a keyframe larger than this is recomputed by each morph.
    worker_attention_cache_mb: int = Field(default=4096, ge=0)
    # LPIPS (AlexNet) weights for morph metrics and perceptual spacing: a local safetensors
    # file (worker/engine/lpips.py says its keys). Unset: the named `rgb-rmse` fallback.
    lpips_weights: Path | None = None

    # Cross-job batching (worker/batching.py): a worker runs up to 2 x max_batch_size rows of
    # mix and inversion jobs at once, each job in a thread of its own, and the rows of jobs
    # with the same settings share denoiser calls (up to max_batch_size rows); a call short
    # of rows waits for company up to this many ms (and at most 5% of the last call's
    # time). Each job keeps its own progress, result, cancellation and failure. None: one
    # job at a time.
    worker_batch_wait_ms: float | None = Field(default=None, ge=0, le=1000)

    # Jobs.
    job_timeout_s: int = 3600
    result_ttl_s: int = 7 * 24 * 3600
    failure_ttl_s: int = 7 * 24 * 3600
    max_wait_s: float = 60.0  # cap for GET /jobs/{id}?wait=S
    max_mixes_per_request: int = Field(default=1000, ge=1)
    # Input latents of one mix request (the pool a `subset` sample draws from, or K).
    max_latents_per_mix: int = Field(default=4096, ge=2)
    # Frames of one POST /morph, keyframes included.
    max_morph_frames: int = Field(default=240, ge=2)
    # Image encoder of the quality metrics (worker/engine/metrics/clip.py): a hub id, a local
    # directory, or "tiny-clip" (seeded random, offline tests). Loaded by an evaluation job.
    clip_model: str = "openai/clip-vit-large-patch14"
    # Inception features for FID/KID on request (features=inception): a local TorchScript
    # Inception file (inception-2015-12-05.pt of StyleGAN2-ADA / clean-fid) or "tiny-inception".
    inception_weights: str | None = None
    # Mix diagnostics (service/core/diagnostics.py): warn when a mix amplifies the inputs' channel
    # means more than this (Eq. 9), or when lerp/slerp keep less than this fraction of the
    # inputs' interpolated norm.
    diagnostics_max_amplification: float = Field(default=2.0, gt=0)
    diagnostics_min_norm_ratio: float = Field(default=0.8, ge=0)
    webhook_secret: SecretStr | None = None  # HMAC key for job-end webhooks; unset: no webhooks
    # Networks webhooks may not reach (checked on every address a URL's host resolves to):
    # by default link-local, which holds the cloud metadata endpoints. "" allows all.
    webhook_blocked_networks: CommaList = Field(
        default_factory=lambda: ["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128"]
    )

    # Request limits (service/api/limits.py): bytes per uploaded file and per request body,
    # enforced while the body streams in; file parts per request; pixels per image.
    max_upload_bytes: int = Field(default=32 * 2**20, ge=1)
    max_request_bytes: int = Field(default=128 * 2**20, ge=1)
    max_files: int = Field(default=64, ge=1)
    max_image_pixels: int = Field(default=4096 * 4096, ge=1)

    # Security (service/api/security.py). API keys: unset, the API is open; set, every
    # endpoint but /healthz and /readyz needs `Authorization: Bearer <key>`.
    api_keys: SecretCommaList = Field(default_factory=list)
    cors_origins: CommaList = Field(default_factory=list)  # unset: no CORS headers at all
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=1)

    # Abandoned jobs: a worker's heartbeat keeps its running job alive for this long; the
    # API's reaper fails jobs whose heartbeat stopped (a killed worker) every interval.
    worker_heartbeat_ttl_s: int = Field(default=30, ge=3)
    # A worker retries each Redis command with backoff for this long before giving up, so a
    # busy worker rides out a Redis restart; past it, its job fails naming Redis.
    worker_redis_outage_s: float = Field(default=120.0, ge=0)
    reaper_interval_s: float = Field(default=10.0, gt=0)
    # `latentmix up`'s stop (Ctrl-C, SIGTERM, SIGHUP) waits this long for running jobs to
    # finish; then they are interrupted at their next step and requeued for the next start.
    # A second Ctrl-C stops at once: running jobs fail ("stopped by shutdown").
    shutdown_grace_s: float = Field(default=120.0, ge=0)

    @field_validator(
        "api_keys", "cors_origins", "webhook_blocked_networks", "redis_sentinels", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_are_long_enough(cls, keys: list[SecretStr]) -> list[SecretStr]:
        short = [
            i for i, key in enumerate(keys) if len(key.get_secret_value()) < MIN_API_KEY_LENGTH
        ]
        if short:
            raise ValueError(
                f"API keys must have at least {MIN_API_KEY_LENGTH} characters; "
                f"key(s) at position {short} are shorter"
            )
        return keys

    @field_validator("webhook_blocked_networks")
    @classmethod
    def _networks_parse(cls, networks: list[str]) -> list[str]:
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"not a network in CIDR notation: {network!r} ({exc})") from None
        return networks

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or "redis://127.0.0.1:6379/0"

    @property
    def uses_embedded_redis(self) -> bool:
        """Whether `latentmix up` runs its own Redis (neither REDIS_URL nor Sentinel set)."""
        return self.redis_url is None and not self.redis_sentinels

    def with_launcher_redis(self) -> "Settings":
        """These settings, pointing at the Redis `latentmix up` runs when it runs one."""
        if not self.uses_embedded_redis:
            return self
        return self.model_copy(update={"redis_url": self.embedded_redis_url})

    @property
    def embedded_redis_url(self) -> str:
        """Where `latentmix up` runs its embedded Redis when no REDIS_URL is set."""
        return f"redis://127.0.0.1:{self.embedded_redis_port}/0"

    def environment(self) -> dict[str, str]:
        """These settings as the environment variables that read them back (unset ones
        left out): what a child process of `latentmix up` starts with."""
        prefix = self.model_config["env_prefix"]
        env = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if value is None:
                continue
            key = field.validation_alias or f"{prefix}{name}".upper()
            env[key] = _environment_value(value)
        return env


def redacted(url: str) -> str:
    """`url` without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _environment_value(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_environment_value(item) for item in value)
    return str(value)


@lru_cache
def get_settings() -> Settings:
    return Settings()
