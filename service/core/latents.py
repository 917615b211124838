"""Latents as the service stores them: content-addressed ids, safetensors data, metadata
records, and the claim that lets two concurrent requests compute a new latent only once.

Storage layout (keys): `latents/{id}.safetensors` (the tensor `latent`, [C, H, W] float32,
plus the inversion method's auxiliary state as tensors named `aux.*`, e.g. EDICT's second
latent, with the latent's record as JSON in the file's metadata), `images/{id}.png`,
`uploads/{sha256}`. Tensor and record are one object, written once: a latent is stored
completely or not at all, and one write publishes it.
"""

import contextlib
import hashlib
import json
import math
import struct
import threading
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field
from redis import Redis
from redis.exceptions import WatchError
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from latentmix.service.core.jobs import fetch_job, status_of
from latentmix.service.core.storage import NotFound, Storage

LATENT_TENSOR = "latent"
AUX_PREFIX = "aux."  # auxiliary state tensors: `aux.{name}`
_CLAIM_KEY = "latentmix:latent-claim:{id}"
_RECORD_CACHE_KEY = "latentmix:latent-record:{id}"
RECORD_CACHE_TTL_S = 7 * 24 * 3600
RECORD_METADATA = "latentmix.record"  # the record's key in the safetensors metadata
# A record is read from the start of its latent file: the safetensors header comes first.
_HEADER_READ_BYTES = 64 * 1024
_RECORDS_PER_READ = 1000  # record copies per Redis MGET


class InvalidLatent(ValueError):
    """An uploaded or stored latent file that is not what the service accepts."""


def upload_key(data: bytes) -> str:
    return f"uploads/{hashlib.sha256(data).hexdigest()}"


def latent_key(latent_id: str) -> str:
    return f"latents/{latent_id}.safetensors"


def image_key(image_id: str) -> str:
    return f"images/{image_id}.png"


def evaluation_key(job_id: str) -> str:
    """An evaluation job's figures, kept after its job record expires."""
    return f"evaluations/{job_id}.json"


def encode_latent(
    array: np.ndarray,
    record: "LatentRecord | None" = None,
    aux: dict[str, np.ndarray] | None = None,
) -> bytes:
    """A safetensors file with the tensor `latent`, the `aux.*` tensors, and, if given, the
    record as metadata. Auxiliary tensors keep their dtype (float16 state stays small)."""
    metadata = {RECORD_METADATA: record.model_dump_json()} if record is not None else None
    tensors = {LATENT_TENSOR: np.ascontiguousarray(array, dtype=np.float32)}
    tensors |= {AUX_PREFIX + name: np.ascontiguousarray(v) for name, v in (aux or {}).items()}
    return save_safetensors(tensors, metadata=metadata)


def header_size(data: bytes) -> int:
    """Bytes of the safetensors header at the start of `data`, its 8-byte length included."""
    (length,) = struct.unpack_from("<Q", data)
    return 8 + length


def stored_record(data: bytes) -> "LatentRecord":
    """The record in a stored latent file's metadata (`data`: at least its header)."""
    header = json.loads(data[8 : header_size(data)])
    return LatentRecord.model_validate_json(header["__metadata__"][RECORD_METADATA])


def decode_latent(data: bytes, channels: int | None = None) -> np.ndarray:
    """Parse and check a latent file's tensor `latent`: [C, H, W] (C = `channels` when
    given: the model card's), float, finite.

    safetensors is a plain header plus raw bytes: nothing is ever unpickled."""
    tensors = _load_tensors(data)
    if LATENT_TENSOR not in tensors:
        found = ", ".join(sorted(tensors)) or "none"
        raise InvalidLatent(f"expected one tensor named '{LATENT_TENSOR}', found: {found}")
    array = tensors[LATENT_TENSOR]
    if array.ndim != 3 or (channels is not None and array.shape[0] != channels):
        expected = "C" if channels is None else str(channels)
        raise InvalidLatent(f"latent must have shape [{expected}, H, W], got {list(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidLatent(f"latent must be a float tensor, got {array.dtype}")
    if not np.isfinite(array).all():
        raise InvalidLatent("latent contains NaN or infinite values")
    return array.astype(np.float32)


def decode_aux(data: bytes) -> dict[str, np.ndarray]:
    """The `aux.*` tensors of a latent file, by name without the prefix."""
    tensors = _load_tensors(data)
    return {k.removeprefix(AUX_PREFIX): v for k, v in tensors.items() if k.startswith(AUX_PREFIX)}


def _load_tensors(data: bytes) -> dict[str, np.ndarray]:
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, OverflowError) as exc:
        raise InvalidLatent(f"not a safetensors file ({exc})") from None


def latent_stats(array: np.ndarray) -> dict[str, Any]:
    """Shape, norm and per-channel means: the statistics the paper's diagnosis is about."""
    values = array.astype(np.float64)
    return {
        "shape": list(array.shape),
        "norm": float(np.linalg.norm(values)),
        "channel_means": [float(m) for m in values.reshape(values.shape[0], -1).mean(axis=1)],
    }


class Reconstruction(BaseModel):
    """How well an inverted latent regenerates its image: sampled back with the same method,
    steps and guidance, against the input's clean latent and its decoded picture."""

    latent_rmse: float = Field(description="RMSE of the regenerated clean latent")
    pixel_psnr_db: float | None = Field(
        description="PSNR (8-bit pixels) of the decoded round trip against the decoded input; "
        "null when they are identical"
    )
    pixel_max_error: int = Field(description="largest difference of one 8-bit pixel value")
    sample_of: int | None = Field(
        default=None,
        description="measured as the sample of its inversion job: this one latent of that "
        "many (measure_reconstruction=sample, the default); null when every latent was",
    )


def measured_reconstruction(
    errors: dict[str, float], sample_of: int | None = None
) -> Reconstruction | None:
    """A row's measured round-trip errors (latent_rmse, pixel_psnr_db, pixel_max_error) as
    its record holds them; None for a row not measured (NaN)."""
    if math.isnan(errors["latent_rmse"]):
        return None
    psnr = errors["pixel_psnr_db"]
    return Reconstruction(
        latent_rmse=errors["latent_rmse"],
        pixel_psnr_db=psnr if math.isfinite(psnr) else None,  # identical pictures
        pixel_max_error=int(errors["pixel_max_error"]),
        sample_of=sample_of,
    )


class LatentRecord(BaseModel):
    """A stored latent's metadata."""

    id: str
    status: Literal["ready"] = "ready"
    model: str
    source: Literal["image", "upload", "mix"]
    settings: dict[str, Any] = Field(default_factory=dict)
    shape: list[int]
    norm: float
    channel_means: list[float]
    parents: list[str] | None = None
    weights: list[float] | None = None
    method: str | None = None  # mixes: the mixing method
    prompt: str | None = None
    inversion: str | None = None  # inverted images: the inversion method
    source_image: str | None = None  # inverted images: the storage key of the image (evaluations)
    aux: dict[str, list[int]] = Field(default_factory=dict)  # auxiliary tensors' shapes
    aux_bytes: int = 0  # the auxiliary tensors' size in the stored file
    reconstruction: Reconstruction | None = None  # inverted images, unless opted out
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def describe(cls, latent_id: str, array: np.ndarray, **fields: Any) -> "LatentRecord":
        return cls(id=latent_id, **latent_stats(array), **fields)


class LatentCatalog:
    """Ready latents live in storage; latents being computed are claimed in Redis.

    `memory`, if given, keeps decoded latents this process published or loaded (a worker
    mixes what it just inverted, a morph mixes the same latents job after job). Ids are
    content addresses and a stored latent never changes, so a kept copy never goes stale."""

    def __init__(
        self, storage: Storage, redis: Redis, memory: MutableMapping[str, np.ndarray] | None = None
    ):
        self.storage = storage
        self.redis = redis
        self._memory = memory
        self._memory_lock = threading.Lock()  # loads run on several storage I/O threads

    def record(self, latent_id: str) -> LatentRecord | None:
        """The stored record, or None. Read through a copy in Redis: a cached latent's
        lookup (every repeated `POST /latents` image) is one Redis GET, not a storage read.
        Storage stays the source of truth; a record missing in Redis is copied over."""
        cached = self.redis.get(_RECORD_CACHE_KEY.format(id=latent_id))
        if cached is not None:
            return LatentRecord.model_validate_json(cached)
        key = latent_key(latent_id)
        try:
            data = self.storage.get(key, max_bytes=_HEADER_READ_BYTES)
            if len(data) < header_size(data):  # a record longer than the first read
                data = self.storage.get(key)
        except NotFound:
            return None
        record = stored_record(data)
        self._cache(record)
        return record

    def cached_records(self, latent_ids: list[str]) -> list[LatentRecord | None]:
        """The Redis copies of these records (None where there is none: ask `record`), read
        in one round trip per thousand; a mix of thousands of latents looks them all up."""
        found: list[LatentRecord | None] = []
        for start in range(0, len(latent_ids), _RECORDS_PER_READ):
            chunk = latent_ids[start : start + _RECORDS_PER_READ]
            cached = self.redis.mget([_RECORD_CACHE_KEY.format(id=i) for i in chunk])
            found += [
                LatentRecord.model_validate_json(data) if data is not None else None
                for data in cached
            ]
        return found

    def load(self, latent_id: str) -> np.ndarray:
        kept = self._recall(latent_id)
        if kept is not None:
            return kept.copy()  # callers may write to theirs
        array = decode_latent(self.storage.get(latent_key(latent_id)))
        self._remember(latent_id, array)
        return array

    def _recall(self, latent_id: str) -> np.ndarray | None:
        if self._memory is None:
            return None
        with self._memory_lock:
            return self._memory.get(latent_id)

    def _remember(self, latent_id: str, array: np.ndarray) -> None:
        if self._memory is None:
            return
        with self._memory_lock, contextlib.suppress(ValueError):  # larger than all of memory
            self._memory[latent_id] = array.copy()

    def load_aux(self, latent_id: str) -> dict[str, np.ndarray]:
        """The latent's auxiliary state (empty for most methods)."""
        return decode_aux(self.storage.get(latent_key(latent_id)))

    def publish(
        self, record: LatentRecord, array: np.ndarray, aux: dict[str, np.ndarray] | None = None
    ) -> bool:
        """Store the latent with its record and auxiliary state, unless one is stored under
        its id already (ids are content addresses: the stored one stays). Returns whether
        it was new."""
        data = encode_latent(array, record, aux)
        if not self.storage.put(
            latent_key(record.id), data, "application/octet-stream", if_absent=True
        ):
            return False  # keep the stored one: it may differ in the last bits from `array`
        self._cache(record)
        self._remember(record.id, array)
        return True

    def amend(self, record: LatentRecord, array: np.ndarray, aux: dict[str, np.ndarray]) -> None:
        """Store a new record for a stored latent, with the array and state it holds
        (`load`, `load_aux`): a round trip measured after it was published."""
        data = encode_latent(array, record, aux)
        self.storage.put(latent_key(record.id), data, "application/octet-stream")
        self._cache(record)

    def _cache(self, record: LatentRecord) -> None:
        key = _RECORD_CACHE_KEY.format(id=record.id)
        self.redis.set(key, record.model_dump_json(), ex=RECORD_CACHE_TTL_S)

    def claim(self, latent_id: str, job_id: str, ttl_s: int) -> str | None:
        """Make `job_id` the one job computing `latent_id`.

        Returns None when the claim is ours, or the id of the live job that holds it. A
        claim held by a job that failed, was canceled or vanished is taken over."""
        key = _CLAIM_KEY.format(id=latent_id)
        while True:
            if self.redis.set(key, job_id, nx=True, ex=ttl_s):
                return None
            holder = self.redis.get(key)
            if holder is None:
                continue  # released in between: try again
            holder_id = holder.decode()
            if self._is_live(holder_id):
                return holder_id
            if self._take_over(key, holder, job_id, ttl_s):
                return None

    def _take_over(self, key: str, holder: bytes, job_id: str, ttl_s: int) -> bool:
        """Replace a dead holder's claim, unless someone else replaced it first."""
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.get(key) != holder:
                    return False
                pipe.multi()
                pipe.set(key, job_id, ex=ttl_s)
                pipe.execute()
                return True
            except WatchError:
                return False

    def pending_job(self, latent_id: str) -> str | None:
        holder = self.redis.get(_CLAIM_KEY.format(id=latent_id))
        return holder.decode() if holder is not None else None

    def release(self, latent_ids: list[str], job_id: str) -> None:
        """Drop the claims `job_id` holds (after success or failure alike)."""
        for latent_id in latent_ids:
            key = _CLAIM_KEY.format(id=latent_id)
            if self.redis.get(key) == job_id.encode():
                self.redis.delete(key)

    def _is_live(self, job_id: str) -> bool:
        job = fetch_job(self.redis, job_id)
        return job is not None and not status_of(self.redis, job).is_terminal()
