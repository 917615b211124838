"""The `shapes` model: a small Stable-Diffusion-shaped model trained on a synthetic world.

- `world.py`: the deterministic world (64 px shapes in colours on backgrounds, captions).
- `classifier.py`: the shape/colour/background classifier, the offline stand-in for CLIP and
  Inception features on this world.
- `model.py`: where the shipped weights live (`weights/`), loaded by `models.load_model("shapes")`.

The training code is in `latentmix.worker.training` and is never imported from here.
"""
