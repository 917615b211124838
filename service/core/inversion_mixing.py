"""Which inverted latents can be mixed together, and what their mix is sampled with.

A latent's inversion origin is its method, steps and the method's options. Latents mix
only with latents of the same origin: another method's latent (or the same method's at
other steps or options) lives on another trajectory, and its auxiliary state (EDICT's
second latent, BDIA's previous latent, null-text's per-step embeddings) means nothing to
another sampler. Uploaded latents carry no state and count as the model's default method
(ddim for Stable Diffusion) at any steps; so do mixes of them. Methods whose state belongs
to the inversion's timesteps are sampled with those steps only.

Torch-free: the API checks a mix with it before queueing; the mix task once more.
"""

from dataclasses import dataclass, field
from typing import Any

from latentmix.service.core.contract import InversionSettings
from latentmix.service.core.inversion_methods import INVERSION_METHOD_SPECS, STEP_BOUND_METHODS


@dataclass(frozen=True)
class InversionOrigin:
    """How a latent was inverted, as far as mixing it goes."""

    method: str
    steps: int | None = None  # None: an upload, or a mix of uploads (no trajectory)
    options: dict[str, Any] = field(default_factory=dict, compare=True, hash=False)

    def describe(self) -> str:
        if self.steps is None:
            return f"{self.method} (an upload, or a mix of uploads: no steps)"
        parts = [f"{self.steps} steps"]
        parts += [f"{name}={value}" for name, value in sorted(self.options.items())]
        return f"{self.method} ({', '.join(parts)})"

    def record_settings(self) -> dict[str, Any]:
        """What a mix of such latents records as its settings (so it can be mixed again)."""
        if self.steps is None:
            return {}
        return {"steps": self.steps, "method": self.method, **self.options}


def origin_of_record(
    inversion: str | None, settings: dict[str, Any], default_method: str
) -> InversionOrigin:
    """A stored latent's origin, from its record's `inversion` and `settings`."""
    method = inversion or settings.get("method") or default_method
    spec = INVERSION_METHOD_SPECS.get(method)
    own = spec.option_names if spec else ()
    return InversionOrigin(
        method=method,
        steps=settings.get("steps"),
        options={name: settings[name] for name in own if name in settings},
    )


def origin_of_request(settings: InversionSettings, default_method: str) -> InversionOrigin:
    """The origin a pending inversion job's latents will have."""
    method = settings.method or default_method
    return InversionOrigin(method=method, steps=settings.steps, options=settings.options())


def shared_origin(origins: dict[str, InversionOrigin]) -> InversionOrigin:
    """The one origin of a mix's inputs (by latent id); ValueError naming two inputs that
    differ. Inputs without steps (uploads) go with any steps of their method."""
    first_id, first = next(iter(origins.items()))
    shared = first
    for latent_id, origin in origins.items():
        same_method = origin.method == shared.method and origin.options == shared.options
        same_steps = None in (origin.steps, shared.steps) or origin.steps == shared.steps
        if not (same_method and same_steps):
            holder = first_id if shared is first else _holder(origins, shared)
            raise ValueError(
                f"latents inverted differently cannot be mixed: {holder} is "
                f"{shared.describe()}, {latent_id} is {origin.describe()}; mix latents of one "
                "inversion method, steps and options"
            )
        if shared.steps is None and origin.steps is not None:
            shared = origin
    return shared


def _holder(origins: dict[str, InversionOrigin], wanted: InversionOrigin) -> str:
    return next(latent_id for latent_id, origin in origins.items() if origin is wanted)


def check_generation_steps(origin: InversionOrigin, steps: int) -> None:
    """ValueError when a step-bound method's latents are to be sampled with other steps."""
    if origin.method in STEP_BOUND_METHODS and origin.steps not in (None, steps):
        raise ValueError(
            f"{origin.method} latents are sampled with the {origin.steps} steps they were "
            f"inverted with, not {steps}; leave steps out or send steps={origin.steps}"
        )
