"""LatentMix workers: the latent engine (`worker.engine`) and the RQ task adapters."""
