"""The one converter from a job's sampling parameters to the engine's.

A job carries the API's `musicedit.jobs.SamplingParams` (validated ranges, seed optional);
the engine takes `models.sampling.SamplingParams` (seed required). Nothing else converts
between them.
"""

from __future__ import annotations

from models.sampling import SamplingParams
from musicedit.jobs import EditJob, seed_for_job


def job_seed(job: EditJob) -> int:
    """The job's seed; without one, a seed derived from the job id (same on every attempt)."""
    if job.params.seed is not None:
        return job.params.seed
    return seed_for_job(job.id)  # a job queued before gateways filled the seed in


def engine_params(job: EditJob) -> SamplingParams:
    """The engine's sampling parameters for `job`."""
    params = job.params
    return SamplingParams(seed=job_seed(job), top_k=params.top_k, top_p=params.top_p,
                          temperature=params.temperature, cfg_coef=params.cfg_coef)
