"""A job the model fails on: its `cfg_coef=inf` reaches the engine as if it had slipped past
every validation (the gateway and the engine both reject a non-finite cfg_coef, so only a bug
in both could let one through). The guided logits of that job's row of the batch, and only
that row, are then non-finite, and the engine fails the job with `NonFiniteLogits`. (Nothing
raises inside the forward here; a forward that raises for one job is covered in
tests/models/test_engine.py and tests/worker/test_edit_job.py.)

In-process, `ParamsSlippedPastValidation` wraps one engine. As a script it runs a real
`musicedit worker` (settings from `MUSICEDIT_*` as usual) whose engine does this to every job
submitted with seed `FAULT_SEED`:

    python tests/reliability/model_fault.py
"""

from __future__ import annotations

import dataclasses
import sys

from models.sampling import SamplingParams

FAULT_SEED = 666


@dataclasses.dataclass(frozen=True)
class UncheckedParams(SamplingParams):
    """Parameters whose validation was skipped."""

    def validate(self, card: int) -> None:
        return None


def with_infinite_cfg(request):
    """`request` (an `EditRequest`) with `cfg_coef=inf` and its validation skipped."""
    fields = dataclasses.asdict(request.params) | {"cfg_coef": float("inf")}
    return dataclasses.replace(request, params=UncheckedParams(**fields))


class ParamsSlippedPastValidation:
    """`engine`, except that job `job_id` reaches it with `cfg_coef=inf`."""

    def __init__(self, engine, job_id: str) -> None:
        self.engine = engine
        self.job_id = job_id

    def submit(self, request):
        return self.engine.submit(with_infinite_cfg(request) if request.job_id == self.job_id
                                  else request)

    def __getattr__(self, name: str):
        return getattr(self.engine, name)


def install(seed: int = FAULT_SEED) -> None:
    """Make every `EditEngine` of this process run jobs with seed `seed` at `cfg_coef=inf`."""
    from models.engine import EditEngine

    submit = EditEngine.submit

    def submit_with_fault(engine, request):
        return submit(engine, with_infinite_cfg(request) if request.params.seed == seed
                      else request)

    EditEngine.submit = submit_with_fault


if __name__ == "__main__":
    from cli.main import main

    install()
    sys.exit(main(["worker"]))
