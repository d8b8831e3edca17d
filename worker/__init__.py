"""The GPU worker: Celery app (`worker.app`), the per-job work (`worker.edit_job`), the one
converter of a job's sampling parameters to the engine's (`worker.sampling`), the process
runtime around the shared decoding engine (`worker.runtime`), background duties
(`worker.housekeeping`) and metrics (`worker.metrics`). Webhooks are sent with
`musicedit.webhooks.WebhookNotifier`, shared with the gateway.
"""
