"""The `latentmix` command and the launcher of the whole service on one machine
(`latentmix up`: Redis, S3 or a local store, workers, the API)."""
