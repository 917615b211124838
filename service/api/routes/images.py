"""GET /images/{id}: the PNG, or a redirect to a presigned URL when storage is S3."""

from typing import Annotated

from fastapi import APIRouter, Path, Response
from fastapi.responses import RedirectResponse

from latentmix.service.api.deps import StorageDep
from latentmix.service.api.problems import PROBLEM_RESPONSES, problem
from latentmix.service.core.ids import ID_RE
from latentmix.service.core.latents import image_key
from latentmix.service.core.storage import NotFound

router = APIRouter(tags=["images"])


@router.get(
    "/images/{image_id}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 307: {"description": "presigned URL"}}
    | PROBLEM_RESPONSES,
)
def get_image(
    image_id: Annotated[str, Path(pattern=ID_RE.pattern)], storage: StorageDep
) -> Response:
    """A generated image."""
    key = image_key(image_id)
    if not storage.exists(key):
        raise problem(404, f"image {image_id} not found")
    if url := storage.url(key):
        return RedirectResponse(url, status_code=307)
    try:
        return Response(storage.get(key), media_type="image/png")
    except NotFound:
        raise problem(404, f"image {image_id} not found") from None
