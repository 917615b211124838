"""Blob storage shared by the API and the workers: a local directory or an S3 bucket.

Keys are relative, slash-separated paths (`jobs/<id>/latent.safetensors`). Both stores accept
the same keys, so code that runs against the local store also runs against S3.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from latentmix.service.core.config import Settings

KEY_PATTERN = re.compile(r"[A-Za-z0-9._/-]+")
MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600  # SigV4 presigned URLs are valid for at most 7 days
_MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}
_MISSING_BUCKET_CODES = {"NoSuchBucket", "404", "NotFound"}
_CONDITION_FAILED_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


IO_THREADS = 8  # storage calls made side by side, at most


class NotFound(KeyError):
    """No object is stored under this key."""


class StorageUnavailable(RuntimeError):
    """The store cannot be reached or used (raised by `Storage.check`)."""


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative path, else raise ValueError naming it."""
    if not KEY_PATTERN.fullmatch(key):
        raise ValueError(f"invalid storage key {key!r}: allowed characters are [A-Za-z0-9._/-]")
    if key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(
            f"invalid storage key {key!r}: must be a relative path without empty, '.' or '..' parts"
        )
    return key


class Storage(ABC):
    """A flat key -> bytes store, with its own I/O threads: storage calls are network round
    trips, and independent ones are made side by side (`in_parallel`). The process that
    opens the store owns them: the API in its app state, a worker on its context."""

    def __init__(self) -> None:
        self.io = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="latentmix-storage")

    def in_parallel(self, fn, *iterables) -> list:
        """`fn` over the iterables on this store's I/O threads; results in order."""
        return list(self.io.map(fn, *iterables))

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str, *, if_absent: bool = False) -> bool:
        """Store `data` under `key`, replacing any previous object; with `if_absent`, only
        if there is none (atomically). Returns whether `data` was stored."""

    @abstractmethod
    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """Return the bytes under `key` (only the first `max_bytes`, if given); raise
        NotFound if there are none."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object under `key`; a missing key is not an error."""

    @abstractmethod
    def url(self, key: str) -> str | None:
        """A URL a client can GET the object from, or None: serve the bytes through the API."""

    @abstractmethod
    def check(self) -> None:
        """Raise StorageUnavailable if the store cannot be used."""


class LocalStorage(Storage):
    """Files under `root`. Writes are atomic: a reader sees the old file or the new one.

    The content type is not persisted; whoever serves the bytes derives it from the key.
    """

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, key: str, data: bytes, content_type: str, *, if_absent: bool = False) -> bool:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write, then publish: a temp file in the same directory, fsynced, then renamed over
        # the key, or hard-linked to it, which fails if the key exists (create-if-absent).
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), 0o644)
                os.fsync(f.fileno())
            if not if_absent:
                os.replace(tmp, target)
            else:
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    return False
        finally:
            Path(tmp).unlink(missing_ok=True)
        _fsync_dir(target.parent)
        return True

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        try:
            with self.path(key).open("rb") as f:
                return f.read(max_bytes if max_bytes is not None else -1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(key) from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self.path(key).unlink()

    def url(self, key: str) -> str | None:
        validate_key(key)
        return None

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageUnavailable(f"cannot create storage directory {self.root}: {e}") from e
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageUnavailable(f"storage directory {self.root} is not writable")


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX; a no-op where directories can't be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3Storage(Storage):
    """Objects in an S3 (or S3-compatible) bucket, keys under `prefix`.

    Credentials left unset come from boto3's default chain (environment, profile, IAM role).
    `check` uses a separate client without retries so that /readyz answers quickly.
    """

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: str = "path",
        prefix: str = "",
        presign_expiry_s: int = 3600,
        public_endpoint_url: str | None = None,
        *,
        max_attempts: int = 3,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
    ) -> None:
        if addressing_style not in ("path", "virtual", "auto"):
            raise ValueError(
                f"addressing_style must be 'path', 'virtual' or 'auto', got {addressing_style!r}"
            )
        if not 1 <= presign_expiry_s <= MAX_PRESIGN_EXPIRY_S:
            raise ValueError(
                f"presign_expiry_s must be in [1, {MAX_PRESIGN_EXPIRY_S}], got {presign_expiry_s}"
            )
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither")
        super().__init__()
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.presign_expiry_s = presign_expiry_s

        session = boto3.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
        )
        base = Config(
            # Presigned URLs default to SigV2 unless SigV4 is asked for explicitly (boto3#2680).
            signature_version="s3v4",
            s3={"addressing_style": addressing_style},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
        )
        probe = base.merge(
            Config(
                connect_timeout=min(connect_timeout_s, 2.0),
                read_timeout=min(read_timeout_s, 5.0),
                retries={"total_max_attempts": 1, "mode": "standard"},
            )
        )
        self.client = session.client("s3", endpoint_url=endpoint_url, config=base)
        self._probe_client = session.client("s3", endpoint_url=endpoint_url, config=probe)
        # Presigning is local signing, no request: a client for the address users can reach
        # (the compose network's `minio:9000` is not one of them).
        self._presign_client = (
            session.client("s3", endpoint_url=public_endpoint_url, config=base)
            if public_endpoint_url
            else self.client
        )

    def object_key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def put(self, key: str, data: bytes, content_type: str, *, if_absent: bool = False) -> bool:
        # A conditional write (If-None-Match: *): S3 answers 412 if the key exists, and 409
        # while another conditional write of the key is in flight. Either way, not ours.
        condition = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.object_key(key),
                Body=data,
                ContentType=content_type,
                **condition,
            )
        except ClientError as e:
            if if_absent and _error_code(e) in _CONDITION_FAILED_CODES:
                return False
            raise
        return True

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        byte_range = {"Range": f"bytes=0-{max_bytes - 1}"} if max_bytes else {}
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=self.object_key(key), **byte_range
            )
        except ClientError as e:
            if _error_code(e) in _MISSING_KEY_CODES:
                raise NotFound(key) from None
            raise
        return response["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as e:
            # HEAD has no body, so a missing key is reported as the bare status code "404".
            if _error_code(e) in _MISSING_KEY_CODES:
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def url(self, key: str) -> str:
        return self._presign_client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.object_key(key)},
            ExpiresIn=self.presign_expiry_s,
        )

    def check(self) -> None:
        try:
            self._probe_client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as e:
            raise StorageUnavailable(f"S3 bucket {self.bucket!r} is not usable: {e}") from e

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (embedded/dev mode and tests)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as e:
            if _error_code(e) not in _MISSING_BUCKET_CODES:
                raise
        region = self.client.meta.region_name
        kwargs = {}
        if region and region != "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(Bucket=self.bucket, **kwargs)
        except ClientError as e:
            if _error_code(e) != "BucketAlreadyOwnedByYou":
                raise


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


# The settings storage_from_settings reads (what a process needs to open the same store).
STORAGE_SETTINGS = {
    "data_dir",
    "s3_bucket",
    "s3_endpoint_url",
    "s3_public_endpoint_url",
    "s3_region",
    "s3_access_key_id",
    "s3_secret_access_key",
    "s3_addressing_style",
    "s3_prefix",
    "presign_expiry_s",
}


def storage_from_settings(settings: Settings) -> Storage:
    """S3 when a bucket is configured, else a directory under `data_dir`."""
    if settings.s3_bucket:
        return S3Storage(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            addressing_style=settings.s3_addressing_style,
            prefix=settings.s3_prefix,
            presign_expiry_s=settings.presign_expiry_s,
            public_endpoint_url=settings.s3_public_endpoint_url,
        )
    return LocalStorage(settings.data_dir / "store")
