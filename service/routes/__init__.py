"""HTTP routes, one module per resource; thin: the work lives in `service.submissions`,
`service.cancellation` and the shared `musicedit` package.

- `edits`: submit, list, read and cancel jobs (`/v1/edits`, `/v1/edits/{job_id}`).
- `audio`: a job's result (`/v1/edits/{job_id}/audio`).
- `operations`: `/healthz`, `/readyz`, `/metrics`.
- `webhooks`: the events musicedit sends, for the schema only.
- `examples`: example bodies of the OpenAPI schema.
"""
