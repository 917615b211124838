"""GET /limits: what one request may ask of this server (the settings and fixed bounds)."""

from fastapi import APIRouter

from latentmix.service.api.deps import SettingsDep
from latentmix.service.api.problems import PROBLEM_RESPONSES
from latentmix.service.api.schemas import LimitsPublic
from latentmix.service.core.config import Settings
from latentmix.service.core.contract import MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_STEPS
from latentmix.service.core.latent_planning import MAX_SIZE, MIN_SIZE

router = APIRouter(tags=["limits"])


@router.get("/limits", response_model=LimitsPublic, responses=PROBLEM_RESPONSES)
def get_limits(settings: SettingsDep) -> LimitsPublic:
    """The request limits, so that a client can split its work to fit before starting it."""
    return limits_of(settings)


def limits_of(settings: Settings) -> LimitsPublic:
    return LimitsPublic(
        max_latents_per_mix=settings.max_latents_per_mix,
        max_mixes_per_request=settings.max_mixes_per_request,
        max_files=settings.max_files,
        max_upload_bytes=settings.max_upload_bytes,
        max_request_bytes=settings.max_request_bytes,
        max_image_pixels=settings.max_image_pixels,
        min_image_size=MIN_SIZE,
        max_image_size=MAX_SIZE,
        max_prompt_chars=MAX_PROMPT_CHARS,
        max_steps=MAX_STEPS,
        max_guidance=MAX_GUIDANCE,
        max_wait_s=settings.max_wait_s,
        max_morph_frames=settings.max_morph_frames,
    )
