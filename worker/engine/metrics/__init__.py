"""Image-quality metrics of the mixing paper's Section 6 (Landolsi & Kahl): FID, KID and the
CLIP distance, on features of a CLIP image encoder (`clip.py`). Pure math in one file per
metric (`fid.py`, `kid.py`, `clip_distance.py`), float64 numpy, no I/O."""

from latentmix.worker.engine.metrics.clip_distance import clip_distances
from latentmix.worker.engine.metrics.fid import frechet_distance
from latentmix.worker.engine.metrics.kid import kernel_inception_distance

__all__ = ["clip_distances", "frechet_distance", "kernel_inception_distance"]
