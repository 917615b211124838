"""Training code (not imported by the service or by the serving engine)."""
