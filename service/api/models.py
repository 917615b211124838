"""Which model a request runs on, its card, and the defaults and limits the card sets."""

from redis import Redis

from latentmix.service.api.problems import problem
from latentmix.service.core.config import Settings
from latentmix.service.core.contract import DEFAULT_GUIDANCE
from latentmix.service.core.model_card import ModelCard
from latentmix.service.core.model_cards import model_card, model_cards, served_models


def resolve_model(requested: str | None, settings: Settings, redis: Redis) -> str:
    """The configured model is always accepted (its jobs wait for a worker); any other
    model must be served by a live worker, so no job waits forever on a queue nobody reads."""
    if requested is None or requested == settings.model:
        return settings.model
    served = served_models(redis)
    if requested not in served:
        served_list = ", ".join(sorted({*served, settings.model}))
        raise problem(
            422, f"model {requested!r} is not served by any worker; served: {served_list}"
        )
    return requested


def card_of(model: str, redis: Redis) -> ModelCard | None:
    """The model's card; None while no worker has ever served it (requests are then
    checked by the worker, which refuses what does not fit its model)."""
    return model_card(redis, model)


# --- per-model defaults and checks (the card of the model a request names) ---------------


def guidance_for(requested: float | None, card: ModelCard | None) -> float:
    """The request's guidance, else the model's default (SD 3: 4.5); before any worker has
    published the card, Stable Diffusion's."""
    if requested is not None:
        return requested
    return card.default_guidance if card is not None else DEFAULT_GUIDANCE


def check_same_model(models: set[str], redis: Redis) -> None:
    """Latents of different models (or families) live in different spaces: 422 naming
    every model involved, with its family where its card is known."""
    if len(models) <= 1:
        return
    cards = model_cards(redis)
    named = [
        f"{model!r} ({cards[model].family})" if model in cards else repr(model)
        for model in sorted(models)
    ]
    raise problem(
        422,
        f"latents from different models cannot be mixed: {' and '.join(named)}; "
        "mix latents of one model",
    )
