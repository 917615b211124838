"""Python client of the LatentMix service (HTTP only, no torch) and `latentmix augment`.

from latentmix.client import LatentMixClient

with LatentMixClient("http://127.0.0.1:8000") as lm:
    latents = lm.invert(["cat1.jpg", "cat2.jpg"], prompt="a photo of a cat")
    paths = lm.download(lm.sample(latents, count=20, seed=7), "out/cat")
"""

from latentmix.client.api import DEFAULT_URL, LatentMixClient
from latentmix.client.errors import (
    InvalidArgument,
    JobFailed,
    LatentMixError,
    LimitExceeded,
    ProblemError,
)
from latentmix.client.models import (
    ImageResult,
    Job,
    JobStatus,
    Latent,
    LatentInfo,
    Limits,
    ModelInfo,
    PlannedImage,
    Progress,
    Provenance,
)

__all__ = [
    "DEFAULT_URL",
    "ImageResult",
    "InvalidArgument",
    "Job",
    "JobFailed",
    "JobStatus",
    "Latent",
    "LatentInfo",
    "LatentMixClient",
    "LatentMixError",
    "LimitExceeded",
    "Limits",
    "ModelInfo",
    "PlannedImage",
    "ProblemError",
    "Progress",
    "Provenance",
]
