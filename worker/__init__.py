"""The GPU worker: Celery app (`worker.app`), the per-job work (`worker.edit_job`), the
process runtime around the shared decoding engine (`worker.runtime`), background duties
(`worker.housekeeping`), webhooks (`musicedit.webhooks.WebhookNotifier`, shared with the gateway) and metrics (`worker.metrics`).
"""
