"""The inversion methods, by name, and the model families each works with.

Adding a method: a module here that defines its `InversionMethod` (see `ddim.py`), and one
entry in `INVERSION_METHODS`. Families list the methods that name them in their model card.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from latentmix.worker.engine.inversion.base import InversionMethod
from latentmix.worker.engine.inversion.bdia import BDIA
from latentmix.worker.engine.inversion.ddim import DDIM
from latentmix.worker.engine.inversion.edict import EDICT
from latentmix.worker.engine.inversion.fixed_point import FIXED_POINT
from latentmix.worker.engine.inversion.flow_euler import FLOW_EULER
from latentmix.worker.engine.inversion.negative_prompt import NEGATIVE_PROMPT
from latentmix.worker.engine.inversion.null_text import NULL_TEXT
from latentmix.worker.engine.inversion.rf_solver import RF_SOLVER

if TYPE_CHECKING:
    from latentmix.worker.engine.families.base import ModelFamily

INVERSION_METHODS: dict[str, InversionMethod] = {
    method.name: method for method in (DDIM, FIXED_POINT, EDICT, BDIA, NEGATIVE_PROMPT)
}
INVERSION_METHODS[NULL_TEXT.name] = NULL_TEXT
# Rectified flow (SD 3 / 3.5); flow-euler first: the family's default method.
INVERSION_METHODS.update({method.name: method for method in (FLOW_EULER, RF_SOLVER)})


def methods_for(family_name: str) -> tuple[str, ...]:
    """The names of the methods that work with the family, in registry order."""
    return tuple(m.name for m in INVERSION_METHODS.values() if family_name in m.families)


def get_inversion(name: str, family: ModelFamily | str) -> InversionMethod:
    """The method called `name`; ValueError naming the allowed ones unless the family has it."""
    family_name = family if isinstance(family, str) else family.name
    method = INVERSION_METHODS.get(name)
    if method is None:
        allowed = ", ".join(
            f"{m.name!r} ({', '.join(m.families)})" for m in INVERSION_METHODS.values()
        )
        raise ValueError(
            f"unknown inversion method {name!r}; allowed methods (with the model families "
            f"each works with): {allowed}"
        )
    if family_name not in method.families:
        raise ValueError(
            f"inversion method {name!r} works with model families {list(method.families)}, "
            f"not {family_name!r}; {family_name!r} supports {list(methods_for(family_name))}"
        )
    return method


def default_inversion(family: ModelFamily) -> InversionMethod:
    """The family's first method: what latents without a method of their own (mixes,
    uploads) are sampled with."""
    return get_inversion(methods_for(family.name)[0], family)


__all__ = [
    "INVERSION_METHODS",
    "InversionMethod",
    "default_inversion",
    "get_inversion",
    "methods_for",
]
