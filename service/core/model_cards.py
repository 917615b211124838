"""Which models are served, and what each is: the cards (model_card.py) workers publish in
Redis.

A worker publishes its model's card once the model is loaded, and rewrites it and a
liveness key (`latentmix:serving:{worker}`) at each heartbeat, with a TTL of two heartbeat
intervals (SERVING_BEATS); it deletes the key when it stops, a killed worker's key expires
within two beats, and `latentmix up` deletes the key of a worker it saw exit at once. So
"served" means a live worker with its model loaded, not a registration left behind by a
dead one, and a Redis that lost the keys has them back within one beat.

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
SERVING_BEATS = 2  # a worker counts as serving for this many heartbeat intervals


def worker_name(host: str, pid: int, nonce: str) -> str:
    """A worker's name: its host and pid first, so that its supervisor can find the keys
    of a child it saw die (`forget_workers(redis, f"{host}.{pid}.*")`)."""
    return f"{host}.{pid}.{nonce}"


def publish_card(redis, card: ModelCard, worker: str, ttl_s: float) -> None:
    """Called by a worker whose model is loaded, and again at each heartbeat: its card, and
    that it serves it for `ttl_s` more seconds. Rewritten each time, not just extended, so
    that a Redis that lost them (restarted without its data, failed over) has them again
    within one heartbeat. `redis` may be a pipeline."""
    redis.hset(CARDS_KEY, card.model, card.model_dump_json())
    redis.set(SERVING_KEY.format(worker=worker), card.model, px=int(ttl_s * 1000))


def forget_workers(redis: Redis, pattern: str) -> int:
    """Drop the serving keys of workers known dead (names matching `pattern`), so they stop
    counting before their TTL runs out; returns how many."""
    keys = list(redis.scan_iter(match=SERVING_KEY.format(worker=pattern), count=1000))
    return redis.delete(*keys) if keys else 0


def stop_serving(redis: Redis, worker: str) -> None:
    redis.delete(SERVING_KEY.format(worker=worker))


def serving_workers(redis: Redis) -> dict[str, str]:
    """The live workers with their model loaded: name -> model."""
    keys = list(redis.scan_iter(match=_SERVING_PATTERN, count=1000))
    prefix = len(SERVING_KEY.format(worker=""))
    return {
        key.decode()[prefix:]: model.decode()
        for key, model in zip(keys, redis.mget(keys) if keys else [], strict=True)
        if model is not None  # expired between the scan and the read
    }


def served_models(redis: Redis) -> dict[str, int]:
    """Live workers per model, for the models at least one live worker serves."""
    counts: dict[str, int] = {}
    for model in serving_workers(redis).values():
        counts[model] = counts.get(model, 0) + 1
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
