"""The paper's CLIP distance (Landolsi & Kahl, Section 6): the cosine distance between the
CLIP image embedding of each generated image and the mean CLIP image embedding of the class's
real examples,

    d_i = 1 - <g_i, r> / (||g_i|| ||r||),   r = mean_j r_j

(the mean of the raw embeddings, as the paper states; each embedding as the encoder gives it)."""

import numpy as np


def clip_distances(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """d_i for each generated embedding [N, D] against the reference embeddings [M, D]."""
    g = np.asarray(generated, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if g.ndim != 2 or r.ndim != 2 or g.shape[1] != r.shape[1] or len(g) < 1 or len(r) < 1:
        raise ValueError(f"need [N, D] and [M, D] embeddings, got {g.shape} and {r.shape}")
    centre = r.mean(axis=0)
    norms = np.linalg.norm(g, axis=1) * np.linalg.norm(centre)
    if np.any(norms == 0):
        raise ValueError("a zero embedding has no direction: the cosine distance is undefined")
    return 1.0 - (g @ centre) / norms
