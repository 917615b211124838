"""Which model a request runs on, and its card."""

from redis import Redis

from latentmix.service.api.problems import problem
from latentmix.service.core.config import Settings
from latentmix.service.core.model_card import ModelCard
from latentmix.service.core.model_cards import model_card, served_models


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
