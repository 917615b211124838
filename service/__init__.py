"""LatentMix service: the torch-free HTTP API and the contract it shares with the workers."""
