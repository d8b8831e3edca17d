"""HTTP routes, one module per resource; thin: the work lives in `service.submissions`,
`service.cancellation` and the shared `musicedit` package.

- `edits`: submit, list, read and cancel jobs (`/v1/edits`, `/v1/edits/{job_id}`).
- `audio`: a job's result (`/v1/edits/{job_id}/audio`).
- `events`: a job's Server-Sent Events and stream tokens (`/v1/edits/{job_id}/events`).
- `capabilities`: what an edit may ask for (`/v1/capabilities`).
- `page`: the edit page (`/`) and its assets (`/page/...`).
- `operations`: `/healthz`, `/readyz`, `/metrics`.
- `webhooks`: the events musicedit sends, for the schema only.
- `examples`: example bodies of the OpenAPI schema.
"""
