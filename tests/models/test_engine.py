"""The engine batches many jobs and still gives each job exactly what it would get alone."""
from __future__ import annotations

import pytest
import torch
from engine_helpers import ADD, NO, ONLY, SMALL
from engine_helpers import clip as _clip
from engine_helpers import input_codes as _codes
from engine_helpers import run_all as _run

from models.engine import (
    CacheBudgetTooSmall,
    EditEngine,
    EditRequest,
    EngineConfig,
    InputTooLong,
    JobCanceled,
)
from models.engine.kv_cache import SlotGeometry
from models.engine.runner import batch_buckets
from models.engine.windows import plan_windows
from models.loader import load_model
from models.reference import generate_codes
from models.sampling import SamplingParams


def _reference(model, wav, instruction, params):
    return generate_codes(model.lm, _codes(model, wav), instruction, params)[0]


def test_mixed_greedy_batch_equals_reference(tiny):
    engine = EditEngine(tiny, EngineConfig(max_batch_size=4, **SMALL))
    jobs = [(_clip(1.0, 1), ADD, SamplingParams(top_k=1, cfg_coef=3.0)),
            (_clip(0.6, 2), ONLY, SamplingParams(top_k=1, cfg_coef=1.5)),
            (_clip(0.9, 3), NO, SamplingParams(temperature=0.0, cfg_coef=5.0))]
    handles = [engine.submit(EditRequest(f"j{i}", w, 32000, text, p))
               for i, (w, text, p) in enumerate(jobs)]
    _run(engine)
    for handle, (wav, text, params) in zip(handles, jobs, strict=True):
        out = handle.result()
        assert torch.equal(out.codes, _reference(tiny, wav, text, params))
        assert out.audio.shape == (1, wav.shape[-1])


def test_job_joining_mid_way_equals_reference(tiny):
    engine = EditEngine(tiny, EngineConfig(max_batch_size=4, **SMALL))
    first = engine.submit(EditRequest("a", _clip(1.0, 4), 32000, ADD, SamplingParams(top_k=1)))
    for _ in range(17):
        engine.step()
    late_wav = _clip(0.8, 5)
    late = engine.submit(EditRequest("b", late_wav, 32000, ONLY, SamplingParams(top_k=1)))
    engine.step()
    assert engine.stats().active_jobs == 2
    _run(engine)
    expected = _reference(tiny, late_wav, ONLY, SamplingParams(top_k=1))
    assert torch.equal(late.result().codes, expected)
    assert torch.equal(first.result().codes,
                       _reference(tiny, _clip(1.0, 4), ADD, SamplingParams(top_k=1)))


def test_same_seed_alone_or_in_a_batch_of_eight(tiny):
    """Sampling is per row: a job's codes do not depend on its neighbours."""
    params = SamplingParams(seed=1234, top_k=20, temperature=1.0, cfg_coef=3.0)
    wav = _clip(0.8, 6)
    alone = EditEngine(tiny, EngineConfig(max_batch_size=1, **SMALL))
    handle = alone.submit(EditRequest("alone", wav, 32000, ADD, params))
    _run(alone)
    expected = handle.result().codes
    batch = EditEngine(tiny, EngineConfig(max_batch_size=8, **SMALL))
    others = [batch.submit(EditRequest(f"o{i}", _clip(0.5 + 0.1 * i, 10 + i), 32000,
                                       (ADD, ONLY, NO)[i % 3],
                                       SamplingParams(seed=i, top_k=5 + i,
                                                      top_p=0.9 if i % 2 else 0.0,
                                                      temperature=0.7 + 0.1 * i, cfg_coef=1.0 + i)))
              for i in range(4)]
    mine = batch.submit(EditRequest("mine", wav, 32000, ADD, params))
    others += [batch.submit(EditRequest(f"p{i}", _clip(0.7, 20 + i), 32000, NO,
                                        SamplingParams(seed=100 + i)))
               for i in range(3)]
    steps = []
    batch.config.on_step = lambda info: steps.append(info.batch_size)
    _run(batch)
    assert max(steps) == 8
    assert torch.equal(mine.result().codes, expected)
    # and the reference path samples the same tokens for the same seed
    assert torch.equal(expected, _reference(tiny, wav, ADD, params))
    assert all(h.result().codes.shape[0] == 4 for h in others)


def test_long_input_windows_continue_each_other(tiny):
    """Each window equals the reference edit of its slice of the input, prompted with the
    previous window's generated tail; the whole output is as long as the input."""
    engine = EditEngine(tiny, EngineConfig(max_batch_size=3, **SMALL))
    wav = _clip(3.3, 7)
    params = SamplingParams(top_k=1)
    handle = engine.submit(EditRequest("long", wav, 32000, ADD, params))
    other = engine.submit(EditRequest("short", _clip(0.7, 8), 32000, NO, params))
    progress = []
    handle._job.request.on_progress = lambda done, total: progress.append((done, total))
    _run(engine)
    out = handle.result()
    assert out.audio.shape == (1, wav.shape[-1])
    codes_in = _codes(tiny, wav)
    windows = plan_windows(codes_in.shape[-1], engine.window_frames, engine.prompt_frames)
    assert len(windows) == 5
    for w in windows:
        prompt = out.codes[:, w.start:w.start + w.prompt].unsqueeze(0) if w.prompt else None
        ref = generate_codes(tiny.lm, codes_in[..., w.start:w.end], ADD, params, prompt=prompt)[0]
        assert torch.equal(out.codes[:, w.start:w.end], ref), f"window {w.index}"
    assert progress[-1] == (codes_in.shape[-1], codes_in.shape[-1])
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert other.result().codes.shape[-1] == 35


def test_plan_windows_covers_every_frame_once():
    windows = plan_windows(9000, 250, 100)
    assert windows[0].start == 0 and windows[-1].end == 9000
    new = sum(w.new_frames for w in windows)
    assert new == 9000
    for a, b in zip(windows, windows[1:], strict=False):
        assert b.start == a.end - 100 and b.prompt == 100
    assert plan_windows(100, 250, 100) == [plan_windows(100, 250, 100)[0]]
    with pytest.raises(ValueError):
        plan_windows(10, 50, 50)


def test_cancel_frees_the_slot_at_the_next_step(tiny):
    engine = EditEngine(tiny, EngineConfig(max_batch_size=1, **SMALL))
    running = engine.submit(EditRequest("r", _clip(1.0, 9), 32000, ADD, SamplingParams()))
    queued = engine.submit(EditRequest("q", _clip(0.5, 10), 32000, ADD, SamplingParams()))
    engine.step()
    assert engine.stats().slots_in_use == 1 and engine.stats().waiting_jobs == 1
    running.cancel()
    engine.step()  # the canceled job's slot goes to the queued one at this boundary
    assert engine.batch.infos[0].work.job.request.job_id == "q"
    with pytest.raises(JobCanceled):
        running.result()
    _run(engine)
    assert queued.result().codes.shape[-1] == 25


def test_background_loop_and_input_limits(tiny):
    engine = EditEngine(tiny, EngineConfig(max_batch_size=2, max_input_seconds=2.0, **SMALL))
    with pytest.raises(InputTooLong, match="at most 2 s"):
        engine.submit(EditRequest("x", _clip(2.5, 1), 32000, ADD))
    for bad in (dict(cfg_coef=float("inf")), dict(temperature=float("nan")), dict(top_k=-1)):
        with pytest.raises(ValueError, match="cfg_coef|temperature|top_k"):
            engine.submit(EditRequest("x", _clip(0.5, 1), 32000, ADD, SamplingParams(**bad)))
    engine.start()
    try:
        handles = [engine.submit(EditRequest(f"bg{i}", _clip(0.6, i), 44100, ADD,
                                             SamplingParams(seed=i))) for i in range(3)]
        outs = [h.result(timeout=120) for h in handles]
    finally:
        engine.stop()
    assert all(o.sample_rate == 32000 and torch.isfinite(o.audio).all() for o in outs)


def test_silence_threshold_comes_from_the_config(tiny):
    """The worker passes the gateway's MUSICEDIT_SILENCE_PEAK_THRESHOLD: both sides refuse
    the same clips."""
    from musicedit.errors import InvalidAudio

    quiet = _clip(0.5, 1) * 1e-3  # peak ~3e-4: audible by the default 1e-4
    strict = EditEngine(tiny, EngineConfig(max_batch_size=1, silence_peak_threshold=1e-3, **SMALL))
    with pytest.raises(InvalidAudio, match="silent"):
        strict.submit(EditRequest("q", quiet, 32000, ADD))
    default = EditEngine(tiny, EngineConfig(max_batch_size=1, **SMALL))
    handle = default.submit(EditRequest("q", quiet, 32000, ADD))
    _run(default)
    assert torch.isfinite(handle.result(timeout=1).audio).all()


def test_budget_and_buckets(tiny):
    geometry = SlotGeometry.for_model(tiny.lm, 250, 64)
    per_slot = geometry.bytes_per_slot(torch.float32)
    engine = EditEngine(tiny, EngineConfig(max_batch_size=16,
                                           kv_cache_budget_bytes=3 * per_slot + 1,
                                           max_text_tokens=64))
    assert engine.batch.num_slots == 3
    assert engine.runner.buckets == [1, 2, 3]
    assert [engine.runner.bucket_for(n) for n in (1, 2, 3)] == [1, 2, 3]
    assert batch_buckets(12, (1, 2, 4, 8, 16)) == [1, 2, 4, 8, 12]
    with pytest.raises(CacheBudgetTooSmall, match="one slot needs"):
        EditEngine(tiny, EngineConfig(kv_cache_budget_bytes=per_slot - 1, max_text_tokens=64))


def test_bfloat16_engine_runs_on_cpu(tiny_files):
    model = load_model(tiny_files, device="cpu", dtype=torch.bfloat16)
    engine = EditEngine(model, EngineConfig(max_batch_size=2, **SMALL))
    assert engine.buffers.self_kv.dtype == torch.bfloat16
    handle = engine.submit(EditRequest("bf16", _clip(0.5, 3), 32000, ADD, SamplingParams(seed=1)))
    _run(engine)
    out = handle.result()
    assert out.codes.shape == (4, 25) and torch.isfinite(out.audio).all()


def test_windows_admitted_together_share_one_condition_pass(tiny, monkeypatch):
    """Jobs admitted at the same step boundary run their condition paths in one forward
    (padded to the longest window); a window whose condition path raises fails alone (the
    batch is re-run on halves until the culprit is alone)."""
    engine = EditEngine(tiny, EngineConfig(max_batch_size=4, **SMALL))
    calls = []
    encode = tiny.lm.encode_condition

    def spy(codes, num_frames=None):
        calls.append(codes.shape[0])
        if num_frames is not None and 13 in num_frames.tolist():
            raise RuntimeError("this window's condition path failed")
        return encode(codes, num_frames)

    monkeypatch.setattr(tiny.lm, "encode_condition", spy)
    frames = int(round(tiny.frame_rate * 0.26))
    assert frames == 13
    jobs = [(_clip(0.8, 1), ADD), (_clip(0.26, 2), ONLY), (_clip(0.5, 3), NO)]
    params = SamplingParams(top_k=1, cfg_coef=3.0)
    handles = [engine.submit(EditRequest(f"j{i}", w, 32000, text, params))
               for i, (w, text) in enumerate(jobs)]
    _run(engine)
    # One batched call for the three; it raised: halves [j0] and [j1, j2]; the second raised:
    # [j1] alone (fails) and [j2].
    assert calls == [3, 1, 2, 1, 1]
    with pytest.raises(RuntimeError, match="condition path failed"):
        handles[1].result()
    for index in (0, 2):
        wav, text = jobs[index]
        assert torch.equal(handles[index].result().codes, _reference(tiny, wav, text, params))


def test_windows_started_together_share_one_prefill(tiny, monkeypatch):
    """Long jobs submitted together run their windows in lockstep: the prompts of windows
    started at the same step are prefilled in one forward, and every window still equals
    the reference edit of its slice, prompted with the previous window's tail."""
    engine = EditEngine(tiny, EngineConfig(max_batch_size=4, **SMALL))
    sizes = []
    prefill = engine._prefill

    def spy(slots, length):
        sizes.append(len(slots))
        return prefill(slots, length)

    monkeypatch.setattr(engine, "_prefill", spy)
    params = SamplingParams(top_k=1)
    jobs = [(_clip(2.2, 11), ADD), (_clip(2.2, 12), NO), (_clip(2.2, 13), ONLY)]
    handles = [engine.submit(EditRequest(f"long{i}", w, 32000, text, params))
               for i, (w, text) in enumerate(jobs)]
    _run(engine)
    assert sizes and all(size == 3 for size in sizes)  # windows 1.. of all three at once
    for handle, (wav, text) in zip(handles, jobs, strict=True):
        out = handle.result()
        codes_in = _codes(tiny, wav)
        for w in plan_windows(codes_in.shape[-1], engine.window_frames, engine.prompt_frames):
            prompt = out.codes[:, w.start:w.start + w.prompt].unsqueeze(0) if w.prompt else None
            ref = generate_codes(tiny.lm, codes_in[..., w.start:w.end], text, params,
                                 prompt=prompt)[0]
            assert torch.equal(out.codes[:, w.start:w.end], ref), f"window {w.index}"


def _raise_in_decode_steps(lm, monkeypatch, fault):
    """Make the LM's decode step raise `RuntimeError(fault(...))` whenever
    `fault(positions [R], condition frames [R / 2], rows)` returns a message; prefill and
    everything else run as usual."""
    decode_step = lm.decode_step

    def faulty(tokens, positions, state, weights):
        frames = ((state.cond_bias[:, 0, 0] == 0).sum(-1) - 1).tolist()
        message = fault(positions.tolist(), frames, tokens.shape[0])
        if message:
            raise RuntimeError(message)
        return decode_step(tokens, positions, state, weights)

    monkeypatch.setattr(lm, "decode_step", faulty)


def _decode_alone(model, jobs, head_start=0):
    """Codes of `jobs` (wav, instruction, params) decoded together by a fresh engine; the
    first job runs `head_start` steps before the others join."""
    engine = EditEngine(model, EngineConfig(max_batch_size=4, **SMALL))
    handles = []
    for i, (w, text, p) in enumerate(jobs):
        handles.append(engine.submit(EditRequest(f"again{i}", w, 32000, text, p)))
        for _ in range(head_start if i == 0 else 0):
            engine.step()
    _run(engine)
    return [h.result().codes for h in handles]


def test_a_job_the_model_raises_on_fails_alone_and_its_batch_decodes_as_without_it(
        tiny, monkeypatch, caplog):
    """The forward raises whenever one job's rows are in the batch (from its 6th step on):
    that job fails with the error, the three jobs it shared its first steps with (one of them
    7 steps ahead) finish with exactly the codes they get without it (same seeds: no random
    draw lost or repeated, no cache entry left wrong)."""
    culprit_frames = int(round(tiny.frame_rate * 0.26))  # no other job has a 13-frame window
    assert culprit_frames == 13

    def fault(positions, frames, rows):
        if culprit_frames in frames and positions[2 * frames.index(culprit_frames)] >= 5:
            return "the culprit's rows broke the forward"
        return None

    _raise_in_decode_steps(tiny.lm, monkeypatch, fault)
    good = [(_clip(0.8, 31), ADD, SamplingParams(seed=5, top_k=20)),
            (_clip(0.5, 32), NO, SamplingParams(seed=6, top_p=0.9, temperature=0.8)),
            (_clip(0.7, 33), ONLY, SamplingParams(seed=7, top_k=50, cfg_coef=1.5))]
    culprit = EditRequest("culprit", _clip(0.26, 34), 32000, ADD, SamplingParams(seed=8))
    engine = EditEngine(tiny, EngineConfig(max_batch_size=4, **SMALL))
    steps = []
    engine.config.on_step = steps.append
    first = engine.submit(EditRequest("good0", good[0][0], 32000, good[0][1], good[0][2]))
    for _ in range(7):
        engine.step()
    failing = engine.submit(culprit)  # slot 1, between the good jobs
    rest = [engine.submit(EditRequest(f"good{i}", w, 32000, text, p))
            for i, (w, text, p) in enumerate(good[1:], start=1)]
    with caplog.at_level("WARNING", logger="models.engine.engine"):
        _run(engine)

    with pytest.raises(RuntimeError, match="the culprit's rows broke the forward"):
        failing.result()
    # The four shared five steps; the sixth raised, was isolated and decoded the other three.
    assert [(s.batch_size, s.frames, s.isolated) for s in steps[:14]] == (
        [(1, 1, False)] * 7 + [(4, 4, False)] * 5 + [(4, 3, True), (3, 3, False)])
    assert [s.isolated for s in steps].count(True) == 1
    assert engine.stats().isolated_steps_total == 1 and engine.stats().active_jobs == 0
    [event] = [r.getMessage() for r in caplog.records if "decode_step_isolated" in r.getMessage()]
    assert '"failed_job_ids": ["culprit"]' in event and "RuntimeError" in event
    decoded = [h.result().codes for h in (first, *rest)]
    for got, expected in zip(decoded, _decode_alone(tiny, good, head_start=7), strict=True):
        assert torch.equal(got, expected)


def test_a_fault_only_the_whole_batch_hits_fails_no_job(tiny, monkeypatch):
    """A forward over more than two slots raises (as running out of memory would): every
    step is re-run on halves of the batch and every job ends with the codes it gets when
    nothing raises."""
    jobs = [(_clip(0.5 + 0.1 * i, 40 + i), (ADD, NO, ONLY)[i % 3],
             SamplingParams(seed=i, top_k=10 + i)) for i in range(4)]
    expected = _decode_alone(tiny, jobs)
    _raise_in_decode_steps(tiny.lm, monkeypatch,
                           lambda positions, frames, rows: "out of memory" if rows > 4 else None)
    engine = EditEngine(tiny, EngineConfig(max_batch_size=4, **SMALL))
    steps = []
    engine.config.on_step = steps.append
    handles = [engine.submit(EditRequest(f"j{i}", w, 32000, text, p))
               for i, (w, text, p) in enumerate(jobs)]
    _run(engine)
    assert steps[0].batch_size == 4 and steps[0].isolated and steps[0].frames == 4
    for handle, codes in zip(handles, expected, strict=True):
        assert torch.equal(handle.result().codes, codes)


def test_a_fault_that_hits_every_job_fails_them_all_and_the_engine_serves_on(tiny, monkeypatch):
    """Every part of the batch raises (a broken device): every job fails with the error, the
    background loop survives and decodes the next jobs normally."""
    broken = [True]
    _raise_in_decode_steps(tiny.lm, monkeypatch, lambda positions, frames, rows: (
        "device fault" if broken[0] and max(positions) >= 3 else None))
    engine = EditEngine(tiny, EngineConfig(max_batch_size=4, **SMALL))
    steps = []
    engine.config.on_step = steps.append
    params = SamplingParams(top_k=1)
    doomed = [engine.submit(EditRequest(f"d{i}", _clip(0.4 + 0.1 * i, 50 + i), 32000, ADD, params))
              for i in range(3)]
    engine.start()
    try:
        for handle in doomed:
            with pytest.raises(RuntimeError, match="device fault"):
                handle.result(timeout=60)
        broken[0] = False
        wavs = [_clip(0.5, 60), _clip(0.3, 61)]
        later = [engine.submit(EditRequest(f"n{i}", w, 32000, NO, params))
                 for i, w in enumerate(wavs)]
        outs = [h.result(timeout=60) for h in later]
    finally:
        engine.stop()
    assert [(s.batch_size, s.frames, s.isolated) for s in steps[:4]] == (
        [(3, 3, False)] * 3 + [(3, 0, True)])
    assert engine.stats().isolated_steps_total == 1
    for out, wav in zip(outs, wavs, strict=True):
        assert torch.equal(out.codes, _reference(tiny, wav, NO, params))


def test_a_step_re_run_on_part_of_the_batch_is_the_batched_computation(tiny):
    """What isolation relies on: re-running a step for single slots (rows at different
    positions, from the same state) gives every slot the logits and cache entries the batched
    step gives it. Equal up to float rounding: a matrix product over a different number of
    rows may round differently on the CPU, as whenever a job joins or leaves a batch."""
    engine = EditEngine(tiny, EngineConfig(max_batch_size=4, **SMALL))
    params = SamplingParams(seed=3)
    engine.submit(EditRequest("ahead", _clip(0.8, 70), 32000, ADD, params))
    for _ in range(9):
        engine.step()
    for i in range(2):
        engine.submit(EditRequest(f"behind{i}", _clip(0.5 + 0.1 * i, 71 + i), 32000, NO, params))
    for _ in range(3):
        engine.step()
    batch, buffers, runner = engine.batch, engine.buffers, engine.runner
    assert [info.position for info in batch.infos] == [12, 3, 3]
    assert batch.positions[:3].tolist() == [12, 3, 3]
    before = buffers.self_kv.clone()
    rows = batch.slot_index[:3]
    logits, shape = runner.step(batch.current_tokens(rows), batch.positions[:3], 13, 41)
    batched = logits.clone(), buffers.self_kv[:, :6].clone()  # the 3 slots' rows
    buffers.self_kv.copy_(before)
    parts = []
    for slot in range(3):
        index = torch.tensor([slot])
        parts.append(runner.step_slots(index, batch.current_tokens(index), batch.positions[index],
                                       shape))
    close = dict(rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat(parts), batched[0], **close)
    torch.testing.assert_close(buffers.self_kv[:, :6], batched[1], **close)
    assert not torch.equal(buffers.self_kv[:, :6], before[:, :6])  # the step wrote its K/V
