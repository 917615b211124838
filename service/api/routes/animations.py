"""GET /jobs/{id}/animation.{webp,gif,mp4}: a finished morph's (or mix's) images as an
animation, built once per job and options, then kept in storage."""

import io
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from PIL import Image

from latentmix.service.api.animation import FORMATS, encode_animation
from latentmix.service.api.deps import RedisDep, StorageDep
from latentmix.service.api.job_views import existing_job
from latentmix.service.api.problems import PROBLEM_RESPONSES, problem
from latentmix.service.core.jobs import JobStatus
from latentmix.service.core.latents import image_key

router = APIRouter(tags=["jobs"])
MAX_ANIMATION_FRAMES = 1000


def animation_key(job_id: str, fmt: str, fps: float, loop: bool, bounce: bool) -> str:
    return f"animations/{job_id}-{fps:g}fps-loop{int(loop)}-bounce{int(bounce)}.{fmt}"


@router.get(
    "/jobs/{job_id}/animation.{fmt}",
    response_class=Response,
    responses={200: {"content": {media: {} for media in FORMATS.values()}}} | PROBLEM_RESPONSES,
)
def get_job_animation(
    job_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")],
    fmt: Literal["webp", "gif", "mp4"],
    redis: RedisDep,
    storage: StorageDep,
    fps: Annotated[float, Query(gt=0, le=60, description="frames per second")] = 8.0,
    loop: Annotated[bool, Query(description="WebP/GIF: play forever")] = True,
    bounce: Annotated[bool, Query(description="play forward, then backward")] = False,
) -> Response:
    """The images of a succeeded job, in order, as an animated WebP or GIF or an H.264 MP4."""
    view = existing_job(redis, job_id)
    if view.status is not JobStatus.succeeded:
        raise problem(409, f"job {job_id} is {view.status}: animations are of succeeded jobs")
    images = (view.result or {}).get("images") or []
    if not images:
        raise problem(404, f"job {job_id} has no images")
    if len(images) > MAX_ANIMATION_FRAMES:
        raise problem(
            422,
            f"job {job_id} has {len(images)} images; at most "
            f"{MAX_ANIMATION_FRAMES} make an animation",
        )
    key = animation_key(job_id, fmt, fps, loop, bounce)
    if storage.exists(key):
        return Response(storage.get(key), media_type=FORMATS[fmt])
    frames = storage.in_parallel(lambda image: _open(storage.get(image_key(image["id"]))), images)
    sizes = {frame.size for frame in frames}
    if len(sizes) > 1:
        raise problem(422, f"job {job_id} has images of different sizes: {sorted(sizes)}")
    data = encode_animation(frames, fmt, fps=fps, loop=loop, bounce=bounce)
    storage.put(key, data, FORMATS[fmt])
    return Response(data, media_type=FORMATS[fmt])


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
