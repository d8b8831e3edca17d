"""Shared, torch-free package used by the gateway (`service/`) and the GPU workers (`worker/`).

Holds what both sides need: settings, the job schema and job store, object storage, audio
probing, instruction normalisation, the Celery app factory, webhooks and the Python client.
"""
