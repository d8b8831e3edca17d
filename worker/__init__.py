"""The GPU worker: Celery app (`worker.app`), the per-job work (`worker.edit_job`), the
process runtime around the shared decoding engine (`worker.runtime`), background duties
(`worker.housekeeping`), webhooks (`worker.notifications`) and metrics (`worker.metrics`).
"""
