"""Builders of the offline test models (seeded random weights, a BPE tokenizer built from a
tiny vocabulary): `tiny`, `tiny-v`, `tiny-sdxl`, `tiny-sd3`, `sd15-random`.

They prove mechanics, not quality (the trained `shapes` model does that), and they ship only
so that `latentmix up` and CPU demos run offline. Production code reaches them through one
registry line in `worker/engine/models.py`; tests and the shapes training import them
directly (tests/test_layers.py keeps it so).
"""
