"""Which models are served, and what each is: the cards (model_card.py) workers publish in
Redis.

A worker publishes its model's card once the model is loaded, and keeps a liveness key
(`latentmix:serving:{worker}`) alive with its heartbeat; it deletes the key when it stops,
and a killed worker's key expires with its heartbeat TTL. So "served" means a live worker
with its model loaded, not a registration left behind by a dead one.

Cards are kept after their workers are gone (a model's card does not change): the API
validates requests for a model whose workers are restarting against its last card.
"""

from typing import Literal

from redis import Redis

from latentmix.service.core.contract import DEFAULT_GUIDANCE
from latentmix.service.core.errors import Invalid
from latentmix.service.core.model_card import ModelCard
from latentmix.service.core.morph_plan import ATTENTION_MODES

CARDS_KEY = "latentmix:model-cards"  # hash: model -> card JSON
SERVING_KEY = "latentmix:serving:{worker}"  # the model a live worker serves
_SERVING_PATTERN = SERVING_KEY.format(worker="*")


def publish_card(redis: Redis, card: ModelCard, worker: str, ttl_s: int) -> None:
    """Called by a worker whose model is loaded: its card, and that it serves it now."""
    with redis.pipeline() as pipe:
        pipe.hset(CARDS_KEY, card.model, card.model_dump_json())
        pipe.set(SERVING_KEY.format(worker=worker), card.model, ex=ttl_s)
        pipe.execute()


def keep_serving(redis, worker: str, ttl_s: int) -> None:
    """The worker's heartbeat: it still serves its model (`redis` may be a pipeline)."""
    redis.expire(SERVING_KEY.format(worker=worker), ttl_s)


def stop_serving(redis: Redis, worker: str) -> None:
    redis.delete(SERVING_KEY.format(worker=worker))


def served_models(redis: Redis) -> dict[str, int]:
    """Live workers per model, for the models at least one live worker serves."""
    keys = list(redis.scan_iter(match=_SERVING_PATTERN, count=1000))
    counts: dict[str, int] = {}
    for model in redis.mget(keys) if keys else []:
        if model is not None:  # expired between the scan and the read
            counts[model.decode()] = counts.get(model.decode(), 0) + 1
    return counts


def model_card(redis: Redis, model: str) -> ModelCard | None:
    """The last card published for `model`, or None if no worker ever served it."""
    raw = redis.hget(CARDS_KEY, model)
    return ModelCard.model_validate_json(raw) if raw is not None else None


def model_cards(redis: Redis) -> dict[str, ModelCard]:
    return {
        name.decode(): ModelCard.model_validate_json(raw)
        for name, raw in redis.hgetall(CARDS_KEY).items()
    }


def check_attention(redis: Redis, model: str, attention: str) -> None:
    """ValueError naming the problem when `model` cannot interpolate attention with
    `attention`; a model no worker has described yet is left to its worker to check."""
    if attention not in ATTENTION_MODES:
        raise ValueError(f"unknown attention {attention!r}; allowed: {', '.join(ATTENTION_MODES)}")
    card = model_card(redis, model) if attention != "none" else None
    if card is not None:
        card.check_attention_interpolation()


def guidance_for(
    requested: float | None, card: ModelCard | None, use: Literal["inversion", "generation"]
) -> float:
    """The request's guidance, else the model's for that use (its card's `augmentation`: the
    guidance its mixes stay on-class with; `shapes`: 1), else its default (SD 3: 4.5); before
    any worker has published the card, Stable Diffusion's."""
    if requested is not None:
        return requested
    if card is None:
        return DEFAULT_GUIDANCE
    augmentation = card.augmentation
    if augmentation is None:
        return card.default_guidance
    if use == "inversion":
        return augmentation.inversion_guidance
    return augmentation.generation_guidance


def check_same_model(models: set[str], redis: Redis) -> None:
    """Latents of different models (or families) live in different spaces: Invalid naming
    every model involved, with its family where its card is known."""
    if len(models) <= 1:
        return
    cards = model_cards(redis)
    named = [
        f"{model!r} ({cards[model].family})" if model in cards else repr(model)
        for model in sorted(models)
    ]
    raise Invalid(
        f"latents from different models cannot be mixed: {' and '.join(named)}; "
        "mix latents of one model"
    )
