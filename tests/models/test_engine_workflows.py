"""Editing as musicians do it, at the engine: a time range edits only the windows that cover it
(continuing the input's own codes before it), and a chain of instructions edits each step's
codes in turn with no decode and re-encode in between."""
from __future__ import annotations

import pytest
import torch
from engine_helpers import ADD, NO, ONLY, SMALL, clip, input_codes, run_all

from models import codec
from models.engine import EditEngine, EditRequest, EngineConfig, JobCanceled
from models.engine.windows import plan_windows
from models.reference import generate_codes
from models.sampling import SamplingParams
from musicedit.jobs import step_seed


def _engine(model, **config) -> EditEngine:
    return EditEngine(model, EngineConfig(**{**SMALL, **config}))


def _reference_windows(model, codes, output, instruction, params, start, end, engine):
    """The reference edit of every window of `[start, end)`, each prompted with the codes the
    engine's output holds before it (the input's, for the first)."""
    for w in plan_windows(end, engine.window_frames, engine.prompt_frames, start=start):
        prompt = output[:, w.start:w.start + w.prompt].unsqueeze(0) if w.prompt else None
        yield w, generate_codes(model.lm, codes[..., w.start:w.end], instruction, params,
                                prompt=prompt, window=w.index)[0]


def test_plan_windows_over_a_range_starts_from_the_inputs_own_codes():
    windows = plan_windows(130, 50, 20, start=40)
    assert [(w.start, w.end, w.prompt) for w in windows] == [(20, 70, 20), (50, 100, 20),
                                                              (80, 130, 20)]
    assert sum(w.new_frames for w in windows) == 90  # every frame of the range once
    assert plan_windows(60, 50, 20, start=5)[0] == plan_windows(60, 50, 20, start=5)[0].__class__(
        0, 0, 50, 5)  # only 5 frames exist before the range
    with pytest.raises(ValueError, match="empty"):
        plan_windows(30, 50, 20, start=30)


def test_a_range_edit_decodes_only_the_windows_covering_it_and_keeps_the_rest(tiny):
    """3.3 s clip, frames [40, 130) edited across three windows with sampling: each window is
    the reference edit of its slice, prompted with what precedes it; outside the range the
    codes are the input's; only the range's frames are decoded and returned."""
    engine = _engine(tiny, max_batch_size=2)
    wav = clip(3.3, 5)
    params = SamplingParams(seed=11, top_k=20)
    steps = []
    engine.config.on_step = steps.append
    handle = engine.submit(EditRequest("range", wav, 32000, ADD, params, time_range=(0.8, 2.6)))
    run_all(engine)
    out = handle.result()
    codes = input_codes(tiny, wav)
    assert out.frame_range == (40, 130)
    assert torch.equal(out.codes[:, :40], codes[0, :, :40])
    assert torch.equal(out.codes[:, 130:], codes[0, :, 130:])
    for w, expected in _reference_windows(tiny, codes, out.codes, ADD, params, 40, 130, engine):
        assert torch.equal(out.codes[:, w.start:w.end], expected), f"window {w.index}"
    hop = codec.hop_length(tiny.codec)
    assert out.audio.shape == (1, 90 * hop)
    # 3 windows of (window + max_delay - prompt) steps: the range, not the clip
    assert len(steps) == 3 * (50 + 3 - 20)


def test_a_two_step_chain_is_two_jobs_the_second_editing_the_firsts_codes(tiny):
    """'remove the guitar, then add drums' in one job gives exactly what a job removing the
    guitar followed by a job adding drums to its result give, with the per-step seeds the job
    resource shows (a range, so that steps also keep the codes outside it)."""
    wav = clip(2.2, 6)
    params = SamplingParams(seed=3, top_k=15)
    time_range = (0.2, 2.0)  # frames [10, 100)
    engine = _engine(tiny, max_batch_size=2)
    progress = []
    chain = engine.submit(EditRequest("chain", wav, 32000, (NO, ADD), params,
                                      on_progress=lambda d, t: progress.append((d, t)),
                                      time_range=time_range))
    run_all(engine)
    chained = chain.result()
    first = _engine(tiny, max_batch_size=1)
    one = first.submit(EditRequest("one", wav, 32000, NO, params, time_range=time_range))
    run_all(first)
    second = _engine(tiny, max_batch_size=1)
    two = second.submit_codes(EditRequest("two", None, 32000, ADD,
                                          SamplingParams(seed=step_seed(3, 1), top_k=15),
                                          time_range=time_range), one.codes())
    run_all(second)
    assert torch.equal(chained.codes, two.codes())
    assert not torch.equal(one.codes(), two.codes())  # the second step did edit
    assert progress[-1] == (180, 180)  # frames over both steps
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert SamplingParams(seed=3).for_step(0).seed == 3


def test_steps_of_chains_share_batches_with_other_jobs(tiny):
    engine = _engine(tiny, max_batch_size=4)
    sizes = []
    engine.config.on_step = lambda info: sizes.append(info.batch_size)
    handles = [engine.submit(EditRequest(f"c{i}", clip(0.8, 20 + i), 32000, (ADD, ONLY, NO)[:i + 1],
                                         SamplingParams(seed=i)))
               for i in range(3)]
    run_all(engine)
    assert max(sizes) == 3
    assert all(h.result().codes.shape == (4, 40) for h in handles)


def test_a_chain_canceled_at_its_second_step_stops_there(tiny):
    engine = _engine(tiny, max_batch_size=2)
    chain = engine.submit(EditRequest("chain", clip(0.8, 30), 32000, (NO, ADD, ONLY),
                                      SamplingParams(seed=1)))
    other_wav = clip(1.0, 31)
    other = engine.submit(EditRequest("other", other_wav, 32000, ADD, SamplingParams(top_k=1)))
    job = chain._job
    while job.step < 1:
        engine.step()
    engine.step()
    chain.cancel()
    run_all(engine)
    with pytest.raises(JobCanceled):
        chain.result()
    assert job.step == 1 and engine.batch.size == 0 and engine.scheduler.waiting() == 0
    expected = generate_codes(tiny.lm, input_codes(tiny, other_wav), ADD, SamplingParams(top_k=1))
    assert torch.equal(other.codes(), expected[0])


def test_bad_steps_and_ranges_are_refused(tiny):
    engine = _engine(tiny, max_batch_size=1)
    with pytest.raises(ValueError, match="1 to 4 steps"):
        engine.submit(EditRequest("x", clip(0.5, 1), 32000, (ADD,) * 5))
    for bad in ((0.0, 0.0), (0.3, 0.1), (-1.0, -0.5), (0.6, 0.9)):
        with pytest.raises(ValueError, match="time range"):
            engine.submit(EditRequest("x", clip(0.5, 1), 32000, ADD, time_range=bad))
    assert engine.frames_of((0.3, 0.9), 25) == (15, 25)  # the end is clipped to the clip
