"""The torch-free ground floor both processes share: the job contract, ids, storage, jobs,
settings and the pure planning of mixes and morphs. Imports neither the API nor the worker."""
