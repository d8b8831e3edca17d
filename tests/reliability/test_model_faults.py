"""One job that makes the model itself raise fails alone; the jobs decoding in the same batch
complete. The worker path (`run_edit_job`) on the real engine with the `tiny` model."""

from __future__ import annotations

import dataclasses
import threading

from models.sampling import SamplingParams
from musicedit.jobs import JobState
from worker.edit_job import JobOutcome, run_edit_job


@dataclasses.dataclass(frozen=True)
class UncheckedParams(SamplingParams):
    """Parameters whose validation was skipped: both the gateway and the engine reject a
    non-finite cfg_coef, so only a bug in both could let one through."""

    def validate(self, card: int) -> None:
        return None


class ParamsSlippedPastValidation:
    """The worker's real engine, except that job `job_id` reaches it with `cfg_coef=inf`, as if
    that value had slipped past every validation: the model then produces non-finite logits
    for that row of the batch, and only that row."""

    def __init__(self, engine, job_id: str) -> None:
        self.engine = engine
        self.job_id = job_id

    def submit(self, request):
        if request.job_id == self.job_id:
            fields = dataclasses.asdict(request.params) | {"cfg_coef": float("inf")}
            request = dataclasses.replace(request, params=UncheckedParams(**fields))
        return self.engine.submit(request)

    def __getattr__(self, name: str):
        return getattr(self.engine, name)


def test_a_job_the_model_raises_on_fails_alone_and_is_dead_lettered(harness, audio_factory,
                                                                    shared):
    h = harness()
    good = [h.submit(audio_factory(seconds=15.0, sample_rate=16000, channels=1), seed=i)
            for i in range(2)]
    bad = h.submit(audio_factory(seconds=4.0, sample_rate=16000, channels=1), seed=9)
    deps = dataclasses.replace(h.deps, engine=ParamsSlippedPastValidation(h.deps.engine, bad.id))
    outcomes: dict[str, JobOutcome] = {}

    def run(job_id: str) -> None:
        outcomes[job_id] = run_edit_job(job_id, deps)

    threads = {job.id: threading.Thread(target=run, args=(job.id,)) for job in (*good, bad)}
    for job in good:
        threads[job.id].start()
    shared.wait_until(lambda: all(h.store.get(j.id).progress.frames_done > 0 for j in good), 60,
                      "the good jobs decoding")
    threads[bad.id].start()  # joins the running batch
    threads[bad.id].join(timeout=60)
    # it failed while its batch mates were still decoding next to it
    assert [h.store.get(j.id).state for j in good] == [JobState.running, JobState.running]
    for thread in threads.values():
        thread.join(timeout=120)

    assert outcomes == {**{j.id: JobOutcome.succeeded for j in good}, bad.id: JobOutcome.failed}
    failed = h.store.get(bad.id)
    assert failed.state is JobState.failed and failed.dead_lettered
    assert "The model failed on this input (NonFiniteLogits)" in failed.error
    assert [j.id for j in h.store.dead_letters()] == [bad.id]
    for job in good:
        done = h.store.get(job.id)
        assert done.state is JobState.succeeded and done.attempts == 1
        assert done.progress.frames_done == done.progress.frames_total > 0
    assert h.storage.list_keys("results/") == sorted(f"results/{j.id}.wav" for j in good)
    assert h.deps.engine.stats().active_jobs == 0
