"""A job as the API shows it, for every route that answers with one."""

from typing import Annotated

from fastapi import Path, Request

from latentmix.service.api.problems import problem
from latentmix.service.api.schemas import JobPublic
from latentmix.service.core.jobs import JobView, fetch_job, view_job

JobIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


def existing_job(redis, job_id: str) -> JobView:
    """The job's view; 404 if there is no such job."""
    job = fetch_job(redis, job_id)
    if job is None:
        raise problem(404, f"job {job_id} not found")
    return view_job(redis, job)


def public_job(view: JobView, request: Request | None = None) -> JobPublic:
    """The API's view of a job; image results get URLs the client can fetch."""
    result = view.result
    if result and "images" in result and request is not None:
        images = [
            image | {"url": str(request.url_for("get_image", image_id=image["id"]))}
            for image in result["images"]
        ]
        result = result | {"images": images}
    return JobPublic(
        id=view.id,
        type=view.type,
        model=view.model,
        status=view.status,
        progress=view.progress,
        created_at=view.created_at,
        started_at=view.started_at,
        finished_at=view.finished_at,
        error=view.error,
        result=result,
    )
