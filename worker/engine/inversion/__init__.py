"""The inversion methods, by name, and the models each works with (by their cards'
capabilities: `InversionMethod.needs`).

Adding a method: its spec (service/core/inversion_methods.py: name, needs, options, state),
a module here that defines its `InversionMethod` (see `ddim.py`) from that spec, and one entry
in `INVERSION_METHODS`. A model's card lists the methods whose needs it meets.
"""

from __future__ import annotations

from latentmix.service.core.model_card import ModelCard
from latentmix.worker.engine.inversion.base import InversionMethod
from latentmix.worker.engine.inversion.bdia import BDIA
from latentmix.worker.engine.inversion.ddim import DDIM
from latentmix.worker.engine.inversion.edict import EDICT
from latentmix.worker.engine.inversion.fixed_point import FIXED_POINT
from latentmix.worker.engine.inversion.flow_euler import FLOW_EULER
from latentmix.worker.engine.inversion.negative_prompt import NEGATIVE_PROMPT
from latentmix.worker.engine.inversion.null_text import NULL_TEXT
from latentmix.worker.engine.inversion.rf_solver import RF_SOLVER

# A card's first method is its model's default: ddim for noise predictors, flow-euler for SD 3.
INVERSION_METHODS: dict[str, InversionMethod] = {
    method.name: method
    for method in (
        *(DDIM, FIXED_POINT, EDICT, BDIA, NEGATIVE_PROMPT, NULL_TEXT),
        *(FLOW_EULER, RF_SOLVER),  # rectified flow (SD 3 / 3.5)
    )
}


def methods_for(card: ModelCard) -> tuple[str, ...]:
    """The names of the methods whose needs the card meets, in registry order."""
    return tuple(m.name for m in INVERSION_METHODS.values() if m.needs.met_by(card))


def get_inversion(name: str, card: ModelCard) -> InversionMethod:
    """The method called `name`; ValueError naming the allowed ones unless the card's model
    has it."""
    method = INVERSION_METHODS.get(name)
    if method is None:
        allowed = ", ".join(f"{m.name!r} ({m.needs})" for m in INVERSION_METHODS.values())
        raise ValueError(
            f"unknown inversion method {name!r}; allowed methods (with the models each "
            f"works with): {allowed}"
        )
    if not method.needs.met_by(card):
        raise ValueError(
            f"inversion method {name!r} works with {method.needs}, not model "
            f"{card.model!r} ({card.family}, {card.prediction_type}); {card.model!r} "
            f"supports {list(card.inversion_methods)}"
        )
    return method


def default_inversion(card: ModelCard) -> InversionMethod:
    """The card's first method: what latents without a method of their own (mixes,
    uploads) are sampled with."""
    return get_inversion(card.inversion_methods[0], card)


__all__ = [
    "INVERSION_METHODS",
    "InversionMethod",
    "default_inversion",
    "get_inversion",
    "methods_for",
]
