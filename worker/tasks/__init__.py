"""RQ task adapters, one module per job type: the request (service/core/contract.py) in, the
result out; storage and Redis at the edges, the engine in the middle. Shared job reporting
(progress, cancel, partial results, the job's end, batch publishing) is in `reporting`;
what the mix and morph jobs share (inputs, mixed latents stored, images streamed) in
`streaming`.

A new job type: a request and result model and a `JobType` row in service/core/contract.py, a
module here with its task, a route in service/api/routes/.
"""
