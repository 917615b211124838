"""Exceptions of the client: one base class, one per way a call can fail."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from latentmix.client.models import Job


class LatentMixError(Exception):
    """Base class of the client's errors."""


class ProblemError(LatentMixError):
    """The service answered with an error: the RFC 9457 problem details it sent.

    `errors` lists per-field validation errors (`{"field", "message"}`) when the service
    gave them; `retry_after` is the seconds a 503 asked to wait.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type: str = "about:blank",
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ):
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors = errors or []
        self.retry_after = retry_after
        super().__init__(f"{status} {title}" + (f": {detail}" if detail else ""))


class InvalidArgument(LatentMixError, ValueError):
    """An argument the service could not take (a weight that is not a finite number): refused
    by the client before anything is sent."""


class LimitExceeded(LatentMixError, ValueError):
    """A request would pass one of the service's limits (`GET /limits`): refused by the
    client before anything is sent."""


class JobFailed(LatentMixError):
    """A job ended failed or canceled; `job.error` says why."""

    def __init__(self, job: Job):
        self.job = job
        super().__init__(f"{job.type} job {job.id} {job.status}: {job.error or 'no error given'}")
