"""The model is Instruct-MusicGen as the paper and the facts file define it."""
from __future__ import annotations

import copy

import torch
from audiocraft.modules.conditioners import ConditioningAttributes
from omegaconf import OmegaConf

from models import configs
from models.attention import ConcatKVCache, NoCache
from models.instruct_musicgen import (
    AdapterConfig,
    InstructMusicGen,
    condition_query_index,
    count_adapter_parameters,
)
from models.loader import build_lm

TEXTS = ["Music piece. Instruct: Add Drums.", "Music piece. Instruct: Only Bass."]


def _random_codes(model, batch, frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.card, (batch, model.num_codebooks, frames), generator=g)


def _pattern_sequence(model, codes):
    pattern = model.lm.pattern_provider.get_pattern(codes.shape[-1])
    seq, _, _ = pattern.build_pattern_sequence(codes, model.special_token_id,
                                               keep_only_valid_steps=True)
    return seq


def _neutral_copy(model: InstructMusicGen) -> InstructMusicGen:
    """The same weights with the adapter switched off: gates = 0 and LoRA B = 0."""
    neutral = copy.deepcopy(model)
    with torch.no_grad():
        neutral.audio_fusion.gates.zero_()
        for lora in neutral.text_lora:
            lora.q_B.zero_()
            lora.v_B.zero_()
    return neutral


def test_neutral_adapter_gives_audiocraft_logits(tiny_unmerged):
    model = _neutral_copy(tiny_unmerged.lm)
    lm = model.lm
    codes = _random_codes(model, 2, 12)
    seq = _pattern_sequence(model, codes)
    attrs = [ConditioningAttributes(text={"description": t}) for t in TEXTS]
    tensors = lm.condition_provider(lm.condition_provider.tokenize(attrs))
    with torch.no_grad():
        expected = lm(seq, conditions=[], condition_tensors=tensors)
        # Same cross-attention source as audiocraft (padded rows, nothing masked).
        embeds = tensors["description"][0]
        text = model.encode_text(list(embeds))
        cond = model.encode_condition(_random_codes(model, 2, 12, seed=1))
        positions = torch.arange(seq.shape[-1]).expand(2, -1)
        got = model(seq, positions, text, cond, NoCache())
    assert got.shape == expected.shape == (2, model.num_codebooks, seq.shape[-1], model.card)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_every_condition_frame_reaches_every_position(tiny_unmerged):
    """With gates != 0 the output at a position depends on the whole condition clip,
    frames after it included (no mask over the condition)."""
    model = tiny_unmerged.lm
    assert model.audio_fusion.gates.abs().min() > 0
    frames = 10
    codes = _random_codes(model, 1, frames)
    seq = _pattern_sequence(model, codes)
    cond_codes = _random_codes(model, 1, frames, seed=3)
    text = model.encode_text(model.text_embeddings([TEXTS[0]]))
    positions = torch.arange(seq.shape[-1]).view(1, -1)
    probe = 2  # an early position: most condition frames lie in its future
    with torch.no_grad():
        base = model(seq, positions, text, model.encode_condition(cond_codes), NoCache())
        for frame in range(frames):
            changed = cond_codes.clone()
            changed[0, :, frame] = (changed[0, :, frame] + 1) % model.card
            out = model(seq, positions, text, model.encode_condition(changed), NoCache())
            diff = (out[:, :, probe] - base[:, :, probe]).abs().max()
            assert diff > 1e-4, f"condition frame {frame} does not reach position {probe}"


def test_condition_query_alignment(tiny_unmerged):
    """Sequence position p uses the query of the condition frame whose codebook-0 token p
    predicts, clamped to the last real frame. Which frame that is comes from audiocraft's
    own pattern (how it aligns model outputs with frames), not from our formula."""
    model = tiny_unmerged.lm
    for frames in (1, 5, 12):
        pattern = model.lm.pattern_provider.get_pattern(frames)
        steps = len(pattern.layout)  # the LM's input sequence for `frames` frames
        # logits [B, card, K, S] whose value is their own sequence position, reverted the
        # way audiocraft reverts model outputs: by_frame[.., k, t] = position predicting (k, t)
        logits = torch.arange(steps, dtype=torch.float).view(1, 1, 1, -1).expand(
            1, 1, model.num_codebooks, -1).contiguous()
        by_frame, _, mask = pattern.revert_pattern_logits(logits, float("nan"))
        predicts = {int(by_frame[0, 0, 0, t]): t for t in range(frames) if mask[0, t]}
        assert sorted(predicts.values()) == list(range(frames))
        expected = [min(predicts.get(p, frames - 1), frames - 1) for p in range(steps)]
        got = condition_query_index(torch.arange(steps).view(1, -1), torch.tensor([frames]))
        assert got[0].tolist() == expected
    # rows of a batch clamp to their own length
    idx = condition_query_index(torch.arange(8).view(1, -1).expand(2, -1), torch.tensor([5, 3]))
    assert idx[1].tolist() == [0, 1, 2, 2, 2, 2, 2, 2]


def test_step_by_step_decoding_equals_full_sequence(tiny_unmerged):
    """Incremental decoding with a KV cache (generation) sees the same condition frames at the
    same positions as the whole-sequence forward (training)."""
    model = tiny_unmerged.lm
    frames = 8
    seq = _pattern_sequence(model, _random_codes(model, 1, frames))
    cond = model.encode_condition(_random_codes(model, 1, frames, seed=5))
    text = model.encode_text(model.text_embeddings([TEXTS[1]]))
    s = seq.shape[-1]
    with torch.no_grad():
        full = model(seq, torch.arange(s).view(1, -1), text, cond, NoCache())
        cache = ConcatKVCache()
        steps = [model(seq[..., :3], torch.arange(3).view(1, -1), text, cond, cache)]
        for p in range(3, s):
            steps.append(model(seq[..., p:p + 1], torch.tensor([[p]]), text, cond, cache))
    torch.testing.assert_close(torch.cat(steps, dim=2), full, rtol=1e-5, atol=1e-5)


def test_merged_lora_gives_unmerged_logits(tiny_unmerged):
    model = tiny_unmerged.lm
    assert any(lora.q_B.abs().sum() > 0 for lora in model.text_lora)
    merged = copy.deepcopy(model)
    merged.merge_lora()
    seq = _pattern_sequence(model, _random_codes(model, 1, 6))
    cond_codes = _random_codes(model, 1, 6, seed=2)
    positions = torch.arange(seq.shape[-1]).view(1, -1)
    with torch.no_grad():
        outs = []
        for m in (model, merged):
            text = m.encode_text(m.text_embeddings([TEXTS[0]]))
            outs.append(m(seq, positions, text, m.encode_condition(cond_codes), NoCache()))
    assert (outs[0] - _neutral_logits(model, seq, cond_codes, positions)).abs().max() > 1e-4
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)


def _neutral_logits(model, seq, cond_codes, positions):
    neutral = copy.deepcopy(model)
    with torch.no_grad():
        for lora in neutral.text_lora:
            lora.q_B.zero_()
            lora.v_B.zero_()
        text = neutral.encode_text(neutral.text_embeddings([TEXTS[0]]))
        return neutral(seq, positions, text, neutral.encode_condition(cond_codes), NoCache())


def test_large_adapter_size_matches_paper():
    """MusicGen-large built on the meta device: the additions are ~8% of the 3.3B model."""
    cfg = OmegaConf.create(configs.lm_xp_cfg(configs.MUSICGEN_LARGE))
    with torch.device("meta"):
        lm = build_lm(cfg, device="meta")
        model = InstructMusicGen(lm, AdapterConfig())
    counts = count_adapter_parameters(model)
    assert model.audio_fusion.pos_emb.shape == (49, 501, 2048)
    assert len(model.audio_fusion.merge_linear) == 48
    assert counts["audio_fusion"] == 49 * 501 * 2048 + 48 * 2048 * 2048 + 48 == 251_602_992
    assert counts["text_lora"] == 48 * 2 * 32 * (2048 + 2048) == 12_582_912
    # The LM without its T5 output projection (768 x 2048 + bias, counted with the
    # conditioner); with it, the README's figures exactly.
    assert counts["base_lm"] == 3_255_382_016
    with_projection = counts["base_lm"] + 768 * 2048 + 2048
    new = counts["audio_fusion"] + counts["text_lora"]
    assert (new, with_projection) == (264_185_904, 3_256_956_928)
    assert round(100 * new / with_projection, 1) == 8.1  # the paper's "about 8 %"


def test_decode_step_linear_equals_f_linear():
    """The CPU decode-step projection (W @ x^T for 2-128 rows) is F.linear's math for every
    row count and input rank the model feeds it, with and without bias."""
    import torch.nn.functional as F

    from models.instruct_musicgen import linear

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 32, generator=g)
    bias = torch.randn(48, generator=g)
    for shape in [(1, 32), (2, 32), (16, 1, 32), (8, 2, 32), (128, 32), (129, 32), (3, 0, 32)]:
        x = torch.randn(*shape, generator=g)
        for b in (bias, None):
            out = linear(x, weight, b)
            assert out.shape == (*shape[:-1], 48)
            torch.testing.assert_close(out, F.linear(x, weight, b), rtol=1e-5, atol=1e-5)


def test_reference_decoding_equals_audiocraft_generate(tiny_unmerged):
    """With the adapter switched off, the reference decode loop (delay pattern, KV cache,
    classifier-free guidance on the text, the engine's ground truth) produces exactly what
    audiocraft's own `LMModel.generate` produces (greedy, so no sampler is involved)."""
    from models.reference import generate_codes
    from models.sampling import SamplingParams

    model = _neutral_copy(tiny_unmerged.lm)
    frames = 12
    for text, cfg in ((TEXTS[0], 3.0), (TEXTS[1], 1.0)):
        ours = generate_codes(model, _random_codes(model, 1, frames, seed=2), text,
                              SamplingParams(seed=0, top_k=1, cfg_coef=cfg))
        with torch.no_grad():
            theirs = model.lm.generate(
                None, [ConditioningAttributes(text={"description": text})], num_samples=1,
                max_gen_len=frames, use_sampling=False, cfg_coef=cfg)
        assert ours.shape == theirs.shape == (1, model.num_codebooks, frames)
        assert torch.equal(ours, theirs)
