"""What the engine promises a GPU host, proved where a CPU can prove it: shapes captured before
serving and never later, dense slots, steady-state steps that never read the device, a lean
decode step, and a sticky device error that stops the engine instead of failing every job.

Real CUDA graphs, fp16 and device memory are checked by `bench/gpu_check.py` on a GPU.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_helpers import ADD, NO, ONLY, SMALL, clip, input_codes, run_all

from models.attention import ConcatKVCache
from models.engine import (
    DeviceFailed,
    EditEngine,
    EditRequest,
    EngineConfig,
    is_fatal_device_error,
)
from models.engine.inspection import count_dispatch
from models.reference import generate_codes
from models.sampling import SamplingParams
from musicedit.instructions import TEMPLATES

MAX_ATEN_CALLS_PER_LAYER = 40


class RecordingGraphs:
    """A graph backend for the CPU: "captures" a step by running it once and replays it by
    running it again, eagerly. It records every capture, and raises for the captures whose
    numbers are in `fail`. What it exercises is the runner's capture *policy* (which shapes,
    when, in what order, what happens on failure); the real CUDA capture is exercised by
    `bench/gpu_check.py`."""

    def __init__(self, fail: tuple[int, ...] = ()):
        self.fail = set(fail)
        self.captures = 0

    def capture(self, run):
        self.captures += 1
        if self.captures in self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        run()
        return run


def _engine(model, **config) -> EditEngine:
    return EditEngine(model, EngineConfig(**{**SMALL, **config}))


def test_every_shape_is_captured_when_the_engine_is_built_and_none_later(tiny):
    graphs = RecordingGraphs()
    engine = _engine(tiny, max_batch_size=4, batch_buckets=(1, 2, 4), graph_backend=graphs)
    runner = engine.runner
    shapes = runner.all_shapes()
    assert runner.prepared == shapes == sorted(shapes, reverse=True)  # largest first
    assert [s[0] for s in shapes[:1]] == [4] and set(runner.graphs) == set(shapes)
    assert graphs.captures == len(shapes) == 3  # slots 4, 2, 1; one length bucket each
    seen = []
    engine.config.on_step = seen.append
    jobs = [(clip(0.3 + 0.2 * i, i), (ADD, NO, ONLY)[i % 3], SamplingParams(seed=i))
            for i in range(6)]
    handles = [engine.submit(EditRequest(f"j{i}", w, 32000, t, p))
               for i, (w, t, p) in enumerate(jobs)]
    run_all(engine)
    assert all(h.result().codes.shape[0] == 4 for h in handles)
    assert graphs.captures == len(shapes)  # serving captured nothing
    assert {s.bucket for s in seen} <= {1, 2, 4}


def test_a_failed_capture_runs_that_shape_eagerly_logged_and_counted_once(tiny, caplog):
    graphs = RecordingGraphs(fail=(2,))  # the second capture: the 2-slot shape
    with caplog.at_level(logging.WARNING, logger="models.engine.runner"):
        engine = _engine(tiny, max_batch_size=4, batch_buckets=(1, 2, 4), graph_backend=graphs)
    runner = engine.runner
    failed = runner.all_shapes()[1]
    assert runner.eager_shapes == {failed} and failed not in runner.graphs
    assert engine.stats().graph_capture_failures == 1
    params = SamplingParams(top_k=1)
    jobs = [(clip(0.5, 1), ADD), (clip(0.4, 2), NO)]  # two slots: the failed shape, every step
    handles = [engine.submit(EditRequest(f"j{i}", w, 32000, t, params))
               for i, (w, t) in enumerate(jobs)]
    run_all(engine)
    for handle, (wav, text) in zip(handles, jobs, strict=True):
        expected = generate_codes(tiny.lm, input_codes(tiny, wav), text, params)[0]
        assert torch.equal(handle.result().codes, expected)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cuda_graph_capture_failed" in m for m in messages) == 1
    assert not any("decode_shape_not_prepared" in m for m in messages)
    assert graphs.captures == len(runner.all_shapes())  # never retried


def test_slots_stay_dense_so_each_step_runs_the_smallest_bucket(tiny):
    """Jobs finish out of order; the last slot moves into each freed one, so every step runs
    over the smallest bucket that holds its jobs, and every job still gets the reference's
    codes (padded shapes, as on a GPU)."""
    engine = _engine(tiny, max_batch_size=8, batch_buckets=(1, 2, 4, 8),
                     graph_backend=RecordingGraphs())
    params = SamplingParams(top_k=1)
    lengths = [0.9, 0.3, 0.6, 0.2, 0.8, 0.4, 1.0, 0.5]
    jobs = [(clip(s, 20 + i), (ADD, NO, ONLY)[i % 3]) for i, s in enumerate(lengths)]
    handles = [engine.submit(EditRequest(f"d{i}", w, 32000, t, params))
               for i, (w, t) in enumerate(jobs)]
    steps = []
    engine.config.on_step = steps.append
    sizes = []
    while engine.step():
        sizes.append(engine.batch.size)
        assert [info.work.job.request.job_id for info in engine.batch.infos] == [
            info.work.job.request.job_id for info in engine.batch.infos[:engine.batch.size]]
    assert len({s.batch_size for s in steps}) > 4  # jobs really left one by one
    for step in steps:
        assert step.bucket == engine.runner.bucket_for(step.batch_size)
    for handle, (wav, text) in zip(handles, jobs, strict=True):
        expected = generate_codes(tiny.lm, input_codes(tiny, wav), text, params)[0]
        assert torch.equal(handle.result().codes, expected)


def test_a_steady_state_step_never_reads_the_device_or_builds_tensors_from_lists(tiny):
    engine = _engine(tiny, max_batch_size=4)
    for i in range(3):
        engine.submit(EditRequest(f"s{i}", clip(1.0, 30 + i), 32000, (ADD, NO, ONLY)[i],
                                  SamplingParams(seed=i, top_k=10 * (i + 1),
                                                 top_p=0.9 if i == 2 else 0.0)))
    for _ in range(4):  # admission and prefill happen here
        engine.step()
    assert engine.batch.size == 3
    for _ in range(3):
        with count_dispatch(tiny.lm) as counts:
            assert engine.step()
        assert counts.host_reads == 0
        assert counts.from_python == 0
        assert engine.batch.size == 3  # nothing finished or joined: steady state


def test_an_eager_decode_step_makes_at_most_40_aten_calls_per_layer(tiny):
    engine = _engine(tiny, max_batch_size=4)
    for i in range(4):
        engine.submit(EditRequest(f"c{i}", clip(1.0, 40 + i), 32000, ADD, SamplingParams(seed=i)))
    for _ in range(3):
        engine.step()
    with count_dispatch(tiny.lm) as counts:
        engine.step()
    assert 0 < counts.per_layer <= MAX_ATEN_CALLS_PER_LAYER, counts.in_layers


def test_the_decode_step_is_the_whole_sequence_forward(tiny):
    """`decode_step` (transposed residual, fused heads, batched caches) gives the logits the
    readable `forward` gives for the same tokens, position by position."""
    lm = tiny.lm
    engine = _engine(tiny, max_batch_size=2)
    params = SamplingParams(top_k=1)
    wav = clip(0.6, 50)
    engine.submit(EditRequest("f", wav, 32000, ADD, params))
    steps = 12
    logits = []
    original = engine.runner.step

    def keep(*args, **kwargs):
        out, shape = original(*args, **kwargs)
        logits.append(out[:2].clone())
        return out, shape

    engine.runner.step = keep
    for _ in range(steps):
        engine.step()
    sequence = engine.batch.sequences[0, :, :steps + 1].unsqueeze(0).expand(2, -1, -1)
    condition = lm.encode_condition(input_codes(tiny, wav))
    condition.rows_per_condition = 2
    text = lm.encode_text(lm.text_embeddings([ADD, None]))
    positions = torch.arange(steps, device=sequence.device).expand(2, -1)
    with torch.no_grad():
        full = lm(sequence[..., :steps], positions, text, condition, ConcatKVCache())
    for step, got in enumerate(logits):
        torch.testing.assert_close(got, full[:, :, step], rtol=1e-4, atol=1e-4)


def test_max_text_tokens_is_sized_to_the_instruction_templates(tiny):
    engine = _engine(tiny, max_batch_size=1)
    texts = [t.format(stem=s) for t in TEMPLATES.values() for s in tiny.stems]
    longest = max(e.shape[0] for e in tiny.lm.text_embeddings(texts))
    assert engine.geometry.max_text_tokens == 8 * -(-longest // 8) < 64
    with pytest.raises(ValueError, match="tokens; at most"):
        engine.submit(EditRequest("long", clip(0.3, 1), 32000, " ".join([ADD] * 20)))


def test_codes_on_another_device_or_dtype_are_taken(tiny):
    """`submit_codes` moves the codes to the engine's device (a GPU engine gets CPU codes
    from callers); int32 codes are taken as they are."""
    engine = _engine(tiny, max_batch_size=1)
    codes = input_codes(tiny, clip(0.4, 3))[0]
    handle = engine.submit_codes(EditRequest("c", None, 32000, ADD, SamplingParams(top_k=1)),
                                 codes.to(torch.int32))
    run_all(engine)
    expected = generate_codes(tiny.lm, codes.unsqueeze(0), ADD, SamplingParams(top_k=1))[0]
    assert torch.equal(handle.codes(), expected)


@pytest.mark.parametrize("message", [
    "CUDA error: an illegal memory access was encountered",
    "CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA`",
])
def test_a_sticky_device_error_stops_the_engine_and_hands_every_job_back(tiny, monkeypatch,
                                                                        message):
    fatal = []
    engine = _engine(tiny, max_batch_size=2, on_fatal=fatal.append)
    decode_step = tiny.lm.decode_step
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError(message)
        return decode_step(*args, **kwargs)

    monkeypatch.setattr(tiny.lm, "decode_step", broken)
    handles = [engine.submit(EditRequest(f"h{i}", clip(0.8, 60 + i), 32000, ADD)) for i in range(3)]
    engine.start()
    try:
        for handle in handles:  # two decoding, one waiting: none is failed as its own fault
            with pytest.raises(DeviceFailed, match="can run on another worker"):
                handle.result(timeout=60)
    finally:
        engine.stop()
    assert len(calls) == 4  # not narrowed down to single slots: every re-run would fail
    assert len(fatal) == 1 and message.splitlines()[0] in str(fatal[0])
    assert engine.stats().failed
    assert not engine.step()
    with pytest.raises(DeviceFailed):
        engine.submit(EditRequest("late", clip(0.3, 1), 32000, ADD))


def test_which_errors_are_fatal():
    assert is_fatal_device_error(RuntimeError("CUDA error: unspecified launch failure"))
    assert is_fatal_device_error(RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling x"))
    assert not is_fatal_device_error(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_fatal_device_error(RuntimeError("shape mismatch"))
    assert not is_fatal_device_error(ValueError("CUDA error: an illegal memory access"))


def test_padding_rows_of_a_bucket_are_reset(tiny):
    """The bookkeeping graph replay relies on: inputs land in static buffers, rows of the
    bucket past the active slots hold the special token at position 0."""
    engine = _engine(tiny, max_batch_size=4, batch_buckets=(1, 2, 4),
                     graph_backend=RecordingGraphs())
    runner = engine.runner
    runner.tokens.fill_(7)
    runner.positions.fill_(9)
    tokens = torch.full((3, tiny.lm.num_codebooks), 3, dtype=torch.long)
    positions = torch.tensor([5, 2, 0])
    logits, shape = runner.step(tokens, positions, 6, 21)
    assert shape[0] == 4 and logits.shape == (6, tiny.lm.num_codebooks, tiny.lm.card)
    assert (runner.tokens[:6] == 3).all()
    assert runner.positions[:6].tolist() == [5, 5, 2, 2, 0, 0]
    assert (runner.tokens[6:8] == tiny.lm.special_token_id).all()
    assert (runner.positions[6:8] == 0).all()
    with pytest.raises(ValueError, match="do not fit"):
        runner.bucket_for(5)


def test_a_job_with_non_finite_logits_fails_a_step_late_and_leaves_no_nan_behind(tiny,
                                                                                monkeypatch):
    """The flag is read from the host copy of the previous step (no device read), the job
    fails, its slot is zeroed, and the job that takes the slot next is unaffected."""
    from models.engine import NonFiniteLogits

    decode_step = tiny.lm.decode_step

    def poisoned(tokens, positions, state, weights):  # NaN for the 8-frame window's rows
        logits = decode_step(tokens, positions, state, weights)
        frames = (state.cond_bias[:, 0, 0] == 0).sum(-1) - 1
        return torch.where((frames == 8).repeat_interleave(2).view(-1, 1, 1), float("nan"),
                           logits)

    monkeypatch.setattr(tiny.lm, "decode_step", poisoned)
    engine = _engine(tiny, max_batch_size=1)
    bad = engine.submit(EditRequest("bad", clip(0.16, 70), 32000, ADD, SamplingParams(top_k=1)))
    wav = clip(0.5, 71)
    good = engine.submit(EditRequest("good", wav, 32000, NO, SamplingParams(top_k=1)))
    engine.step()
    assert not bad.done()  # its first step's flag is read at the next one
    engine.step()
    with pytest.raises(NonFiniteLogits):
        bad.result()
    assert torch.isfinite(engine.buffers.self_kv).all()
    run_all(engine)
    expected = generate_codes(tiny.lm, input_codes(tiny, wav), NO, SamplingParams(top_k=1))[0]
    assert torch.equal(good.result().codes, expected)


def test_bucketed_lengths_attend_exactly_like_exact_lengths(tiny):
    """On a GPU a step attends over lengths rounded up to 64; masked positions weigh nothing,
    so the logits are the exact-length ones (padded shapes here through the recording
    backend, with a small length multiple so that buckets are really padded)."""
    params = SamplingParams(top_k=1)
    wav = clip(1.0, 80)
    exact = _engine(tiny, max_batch_size=1)
    padded = _engine(tiny, max_batch_size=1, length_multiple=16, graph_backend=RecordingGraphs())
    assert any(s[1] != padded.geometry.max_sequence for s in padded.runner.all_shapes())
    out = []
    for engine in (exact, padded):
        handle = engine.submit(EditRequest("b", wav, 32000, ONLY, params))
        run_all(engine)
        out.append(handle.codes())
    assert torch.equal(out[0], out[1])


def test_sdpa_takes_the_fused_cpu_kernel_in_the_decode_step():
    """The op count above depends on attention staying one kernel call: the CPU flash kernel
    needs a contiguous head dimension and a mask in the query's dtype."""
    q = torch.randn(4, 2, 1, 8)
    k = torch.randn(4, 2, 10, 8)
    bias = torch.zeros(4, 1, 1, 10)
    with count_dispatch(_FakeLayers()) as counts:
        F.scaled_dot_product_attention(q, k, k, attn_mask=bias)
    assert sum(counts.total.values()) == 1


class _FakeLayers:
    """The attribute `count_dispatch` attributes layer calls through (no layers here)."""

    num_layers = 0

    def _decode_layer(self):
        return None


def test_counter_based_streams_make_clips_reproducible(tiny):
    """The same seed gives the same codes from a fresh engine; another seed does not."""
    wav = clip(0.6, 90)
    runs = []
    for seed in (5, 5, 6):
        engine = _engine(tiny, max_batch_size=1)
        handle = engine.submit(EditRequest("r", wav, 32000, ADD, SamplingParams(seed=seed)))
        run_all(engine)
        runs.append(handle.codes())
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert np.isfinite(runs[0].numpy()).all()
