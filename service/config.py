"""Settings: one class, read from the environment once (`get_settings()`).

Every variable is documented in README.md, section "Configuration".
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LATENTMIX_", extra="ignore")

    # Model served by a worker (hub id, local directory, or "tiny"); also the API's default.
    model: str = DEFAULT_MODEL
    # Root for embedded state: the local store, embedded Redis data, the cached tiny model.
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8000

    # Redis. Unset: `latentmix up` starts an embedded server; API and worker use localhost.
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")

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

    # Jobs.
    job_timeout_s: int = 3600
    result_ttl_s: int = 7 * 24 * 3600
    failure_ttl_s: int = 7 * 24 * 3600
    max_wait_s: float = 60.0  # cap for GET /jobs/{id}?wait=S
    max_mixes_per_request: int = 1000

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or "redis://127.0.0.1:6379/0"


@lru_cache
def get_settings() -> Settings:
    return Settings()
