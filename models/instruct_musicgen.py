"""Instruct-MusicGen: audiocraft's MusicGen LM plus the audio-fusion adapter and text-fusion LoRA.

The paper (sections 3.2.1, 3.2.2) and `shared/reference/instruct-musicgen-facts.md` define the
model. We wrap an untouched audiocraft `LMModel` and compute its layers with the LM's own
modules (norms, projections, feed-forward), adding:

- audio fusion: a condition path that runs the condition clip's codes through every layer's
  frozen norm/self-attention/feed-forward with a per-layer `merge_linear` and `pos_emb`, and a
  gated attention from the music stream to that path's keys/values inside each self-attention,
  before the frozen output projection: `x + g_m * SDPA(q + q', K', V')`;
- text fusion: LoRA (rank 32, alpha 64 for the release) on the query and value projections of
  every text cross-attention.

All sizes come from the wrapped LM and `AdapterConfig`: the same code builds a 2-layer
test model and MusicGen-large. This module only defines math: how self-attention keys and values
are cached is the caller's business (see `SelfAttentionKV`).
"""
from __future__ import annotations

import math
import typing as tp
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from audiocraft.models.lm import LMModel
from audiocraft.modules.codebooks_patterns import DelayedPatternProvider
from audiocraft.modules.transformer import (
    StreamingMultiheadAttention,
    StreamingTransformerLayer,
    create_sin_embedding,
)
from torch import nn

from .attention import ConditionKV, SelfAttentionKV, TextKV, attention, attention_bias
from .decode_state import DecodeLayerWeights, DecodeStepState, DecodeWeights

# Positions the sinusoidal table covers: the engine's windows need at most the adapter's
# `max_frames` + the delay pattern (~504); whole-sequence forwards (reference, training) of up
# to ~40 s of frames fit too.
SIN_TABLE_POSITIONS = 2048


@dataclass(frozen=True)
class AdapterConfig:
    """Sizes of the Instruct-MusicGen additions (the release: 500 frames, rank 32, alpha 64)."""

    max_frames: int = 500
    lora_rank: int = 32
    lora_alpha: float = 64.0


class AudioFusion(nn.Module):
    """Parameters of the audio-fusion module (paper eqs. 4-8).

    Attributes:
        pos_emb: `[L + 1, max_frames + 1, D]`; row 0 is the learned start state z_cond^0,
            row m >= 1 the position embedding e_m of layer m.
        merge_linear: L bias-free `Linear(D, D)` (Linear_cond of each layer).
        gates: `[L]` zero-initialised scalars, used without tanh.
    """

    def __init__(self, num_layers: int, dim: int, max_frames: int):
        super().__init__()
        self.pos_emb = nn.Parameter(torch.randn(num_layers + 1, max_frames + 1, dim) * 0.02)
        self.merge_linear = nn.ModuleList(nn.Linear(dim, dim, bias=False)
                                          for _ in range(num_layers))
        self.gates = nn.Parameter(torch.zeros(num_layers))

    @property
    def max_condition_frames(self) -> int:
        """Longest condition clip in frames (its +1 appended frame must fit `pos_emb`)."""
        return self.pos_emb.shape[1] - 1


class CrossAttentionLoRA(nn.Module):
    """LoRA factors on the query and value projections of one text cross-attention (eqs. 10-11).

    `W' = W + (alpha / rank) * B @ A` with `A: [rank, D]` and `B: [D, rank]`; B starts at 0.
    """

    def __init__(self, dim: int, rank: int, alpha: float):
        super().__init__()
        self.scale = alpha / rank
        self.q_A = nn.Parameter(torch.empty(rank, dim))
        self.q_B = nn.Parameter(torch.zeros(dim, rank))
        self.v_A = nn.Parameter(torch.empty(rank, dim))
        self.v_B = nn.Parameter(torch.zeros(dim, rank))
        nn.init.kaiming_uniform_(self.q_A, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.v_A, a=math.sqrt(5))
        self.merged = False

    def delta_q(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.q_A), self.q_B) * self.scale

    def delta_v(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.v_A), self.v_B) * self.scale


# Decode steps on the CPU (a few rows) compute projections as W @ x^T: MKL's kernel for a
# narrow right-hand side ran 1.2-2.8x faster than F.linear's short left-hand side for 2-128
# rows on our 2-core AMD EPYC (bench/gemm.py). On an Intel Xeon (AMX) F.linear wins at 2-4 rows
# and W @ x^T from 8 up (docs/benchmarks.md, 2026-12-05); one fixed rule keeps results
# independent of timing. Single rows, prefill chunks and CUDA keep F.linear.
_NARROW_ROWS = range(2, 129)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x [..., D_in] @ weight[D_out, D_in]^T + bias` -> `[..., D_out]`, same math as
    `F.linear` (summation order may differ in the last bits)."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if x.device.type != "cpu" or rows not in _NARROW_ROWS:
        return F.linear(x, weight, bias)
    out = torch.mm(weight, x.reshape(rows, x.shape[-1]).t()).t()
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def feed_forward(layer: StreamingTransformerLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's frozen feed-forward block (audiocraft `_ff_block` at inference) through
    `linear`. `[..., D]` -> `[..., D]`."""
    hidden = layer.activation(linear(x, layer.linear1.weight, layer.linear1.bias))
    return linear(hidden, layer.linear2.weight, layer.linear2.bias)


def condition_query_index(positions: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
    """Which condition frame's query q' serves each LM sequence position.

    Sequence position p (the input that predicts codebook 0 of frame p in the delay pattern) uses
    condition frame p, clamped to the last real condition frame (facts file: min(t, T-1)).

    Args:
        positions: `[B, S]` long, sequence positions.
        num_frames: `[B]` long, condition frames per row.
    Returns:
        `[B, S]` long indices into the condition path's `Tc + 1` positions.
    """
    return torch.minimum(positions, (num_frames - 1).clamp(min=0).view(-1, 1))


def cross_attention(layer: StreamingTransformerLayer) -> StreamingMultiheadAttention:
    """The layer's text cross-attention (MusicGen's layers all have one)."""
    attn = layer.cross_attention
    if not isinstance(attn, StreamingMultiheadAttention):
        raise ValueError("expected a MusicGen layer with text cross-attention")
    return attn


class InstructMusicGen(nn.Module):
    """audiocraft `LMModel` + audio fusion + text-fusion LoRA.

    Args:
        lm: an audiocraft LMModel built by audiocraft's builders (any size). Its weights are
            frozen and used as they are.
        adapter: sizes of the additions.
    """

    sin_table: torch.Tensor

    def __init__(self, lm: LMModel, adapter: AdapterConfig = AdapterConfig(),
                 adapter_device: str | torch.device | None = None):
        super().__init__()
        transformer = lm.transformer
        if transformer.positional_embedding != "sin":
            raise ValueError("Instruct-MusicGen is defined on MusicGen's sinusoidal positions, "
                             f"got positional_embedding={transformer.positional_embedding!r}")
        first = tp.cast(StreamingTransformerLayer, transformer.layers[0])
        if not first.norm_first or first.cross_attention is None:
            raise ValueError("expected a pre-norm MusicGen LM with text cross-attention")
        if first.self_attn.kv_repeat != 1 or not first.self_attn.custom:
            raise ValueError("expected audiocraft's custom attention with kv_repeat=1")
        self.lm = lm
        self.adapter_config = adapter
        self.num_layers = len(transformer.layers)
        self.dim = lm.dim
        self.num_heads = first.self_attn.num_heads
        self.head_dim = self.dim // self.num_heads
        # `adapter_device="meta"` skips allocating and randomly initialising the additions
        # (~1 GB float32 for large) when a checkpoint will overwrite all of them anyway.
        with torch.device(adapter_device) if adapter_device is not None else nullcontext():
            self.audio_fusion = AudioFusion(self.num_layers, self.dim, adapter.max_frames)
            self.text_lora = nn.ModuleList(
                CrossAttentionLoRA(self.dim, adapter.lora_rank, adapter.lora_alpha)
                for _ in range(self.num_layers))
        # Computed in float32 once (MusicGen's own fp16 computation errs by up to 0.15), then
        # only cast with the model: fp16 keeps it within 5e-4.
        device = next(lm.parameters()).device
        positions = torch.arange(SIN_TABLE_POSITIONS, device=device).view(1, -1, 1)
        table = create_sin_embedding(positions,
                                     self.dim, max_period=transformer.max_period)
        self.register_buffer("sin_table", table[0] * transformer.positional_scale, persistent=False)

    # ----------------------------------------------------------------- helpers
    @property
    def dtype(self) -> torch.dtype:
        """The LM's parameter dtype."""
        return tp.cast(nn.Embedding, self.lm.emb[0]).weight.dtype

    @property
    def heads(self) -> tp.Sequence[nn.Linear]:
        """The per-codebook output projections."""
        return tp.cast(tp.Sequence[nn.Linear], self.lm.linears)

    @property
    def delays(self) -> list[int]:
        """Codebook delays of the LM's "delay" interleaving pattern."""
        provider = self.lm.pattern_provider
        if not isinstance(provider, DelayedPatternProvider):
            raise ValueError(f"expected MusicGen's delay pattern, got {type(provider).__name__}")
        return list(provider.delays)

    @property
    def layers(self) -> tp.Sequence[StreamingTransformerLayer]:
        return tp.cast(tp.Sequence[StreamingTransformerLayer], self.lm.transformer.layers)

    @property
    def num_codebooks(self) -> int:
        return self.lm.num_codebooks

    @property
    def card(self) -> int:
        return self.lm.card

    @property
    def special_token_id(self) -> int:
        return self.lm.special_token_id

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, S, D]` -> `[B, H, S, Dh]`."""
        b, s, _ = x.shape
        return x.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, H, S, Dh]` -> `[B, S, D]`."""
        b, _, s, _ = x.shape
        return x.transpose(1, 2).reshape(b, s, self.dim)

    def _self_qkv(self, layer: StreamingTransformerLayer, h: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        proj = linear(h, layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias)
        q, k, v = proj.chunk(3, dim=-1)
        return self._heads(q), self._heads(k), self._heads(v)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the frozen per-codebook embeddings. `codes [B, K, S]` long -> `[B, S, D]`."""
        embedded = [self.lm.emb[k](codes[:, k]) for k in range(codes.shape[1])]
        return torch.stack(embedded).sum(0) if len(embedded) > 1 else embedded[0]

    # ----------------------------------------------------------- per-job state
    def encode_condition(self, codes: torch.Tensor,
                         num_frames: torch.Tensor | None = None) -> ConditionKV:
        """Run the audio-fusion condition path once for a job's condition clip.

        Args:
            codes: `[B, K, Tc]` long EnCodec codes of the condition audio (raw, no delay
                pattern). Rows shorter than Tc are right-padded (any value) and described by
                `num_frames`.
            num_frames: `[B]` long real frames per row (default: all Tc).
        Returns:
            q', K', V' for every layer over `Tc + 1` positions (the appended special-token
            frame makes the condition as long as the training pattern sequence).
        """
        b, k, tc = codes.shape
        if tc < 1:
            raise ValueError("the condition clip has no frames")
        if tc > self.audio_fusion.max_condition_frames:
            raise ValueError(f"condition clip of {tc} frames exceeds the adapter's "
                             f"{self.audio_fusion.max_condition_frames} frames")
        device = codes.device
        if num_frames is None:
            num_frames = torch.full((b,), tc, dtype=torch.long, device=device)
        positions = torch.arange(tc + 1, device=device)
        # The appended frame sits right after each row's last real frame.
        is_special = positions.view(1, -1) >= num_frames.view(-1, 1)
        padded = torch.cat([codes, codes.new_zeros(b, k, 1)], dim=2)
        padded = torch.where(is_special.unsqueeze(1), self.special_token_id, padded)
        valid = positions.view(1, -1) <= num_frames.view(-1, 1)  # real frames + the appended one
        mask = None if bool(valid.all()) else valid

        dtype = self.dtype
        cond_emb = self.embed_codes(padded)
        o = self.audio_fusion.pos_emb[0, : tc + 1].to(dtype).unsqueeze(0).expand(b, -1, -1)
        causal = positions.view(-1, 1) >= positions.view(1, -1)
        attn_mask = causal if mask is None else causal.unsqueeze(0) & mask.view(b, 1, -1)
        if attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(1)
        qs, ks, vs = [], [], []
        for m, layer in enumerate(self.layers):
            h = (layer.norm1(o) + self.audio_fusion.merge_linear[m](cond_emb)
                 + self.audio_fusion.pos_emb[m + 1, : tc + 1].to(dtype))
            q, kk, v = self._self_qkv(layer, h)
            qs.append(q)
            ks.append(kk)
            vs.append(v)
            if m == self.num_layers - 1:
                break  # the last layer's output feeds nothing: only its q'/K'/V' are used
            a = F.scaled_dot_product_attention(q, kk, v, attn_mask=attn_mask)
            out_proj = layer.self_attn.out_proj
            attended = linear(self._merge_heads(a), out_proj.weight, out_proj.bias)
            o = o + layer.layer_scale_1(attended)
            o = o + layer.layer_scale_2(feed_forward(layer, layer.norm2(o)))
        return ConditionKV(qs, ks, vs, num_frames, mask)

    def text_embeddings(self, texts: tp.Sequence[str | None]) -> list[torch.Tensor]:
        """Encode instructions with the LM's text conditioner, one tensor per text.

        Each text is cut to its own tokens, so a job's embedding does not depend on which other
        texts were encoded with it. `None` or `""` is the null condition of classifier-free
        guidance: one all-zero position, as audiocraft produces it.

        Returns:
            per text, `[Lt_i, D]` in the LM's dtype.
        """
        from audiocraft.modules.conditioners import ConditioningAttributes
        attrs = [ConditioningAttributes(text={"description": t or None}) for t in texts]
        provider = self.lm.condition_provider
        embeds, mask = provider(provider.tokenize(attrs))["description"]
        out = []
        for row, row_mask in zip(embeds, mask, strict=True):
            length = int(row_mask.sum())
            out.append(row[: max(length, 1)].to(self.lm.emb[0].weight.dtype))
        return out

    def encode_text(self, embeddings: tp.Sequence[torch.Tensor]) -> TextKV:
        """Project text embeddings to cross-attention keys/values of every layer, once per job.

        Args:
            embeddings: per row, `[Lt_i, D]` (from `text_embeddings`).
        Returns:
            K, V `[B, H, Lmax, Dh]` per layer and a padding mask when lengths differ.
        """
        lengths = [e.shape[0] for e in embeddings]
        lmax = max(lengths)
        src = torch.stack([F.pad(e, (0, 0, 0, lmax - e.shape[0])) for e in embeddings])
        mask = None
        if min(lengths) != lmax:
            mask = torch.arange(lmax, device=src.device).view(1, -1) < torch.tensor(
                lengths, device=src.device).view(-1, 1)
        ks, vs = [], []
        for m, layer in enumerate(self.layers):
            attn = cross_attention(layer)
            w, bias = attn.in_proj_weight, attn.in_proj_bias
            d = self.dim
            k = F.linear(src, w[d: 2 * d], None if bias is None else bias[d: 2 * d])
            v = F.linear(src, w[2 * d:], None if bias is None else bias[2 * d:])
            lora = tp.cast(CrossAttentionLoRA, self.text_lora[m])
            if not lora.merged:
                v = v + lora.delta_v(src)
            ks.append(self._heads(k))
            vs.append(self._heads(v))
        return TextKV(ks, vs, mask)

    # ----------------------------------------------------------------- forward
    def forward(self, codes: torch.Tensor, positions: torch.Tensor, text: TextKV,
                condition: ConditionKV | None, cache: SelfAttentionKV) -> torch.Tensor:
        """Logits for a chunk of the delay-pattern sequence.

        Args:
            codes: `[B, K, S]` long, sequence tokens (special token where the pattern is empty).
            positions: `[B, S]` long, each token's position in its row's sequence (rows of a
                batch may be at different positions).
            text: cross-attention K/V of the rows.
            condition: audio-fusion state of the rows, or None for plain MusicGen.
            cache: self-attention K/V storage; receives this chunk's keys/values.
        Returns:
            `[B, K, S, card]` logits in the LM's dtype.
        """
        lm = self.lm
        x = self.embed_codes(codes) + F.embedding(positions, self.sin_table)
        b, s = positions.shape
        if condition is not None:
            # Rows sharing a condition are attended together: [N, H, g * S, Dh] queries.
            g = condition.rows_per_condition
            n = b // g
            idx = condition_query_index(positions, condition.num_frames.repeat_interleave(g))
            fusion_index = idx.reshape(n, 1, g * s, 1).expand(-1, self.num_heads, -1, self.head_dim)
            cond_mask = None if condition.mask is None else attention_bias(
                condition.mask.view(n, 1, 1, -1), x.dtype)
        text_mask = (None if text.mask is None
                     else attention_bias(text.mask.view(b, 1, 1, -1), x.dtype))
        for m, layer in enumerate(self.layers):
            # Self-attention with the audio fusion added before the frozen output projection.
            q, k, v = self._self_qkv(layer, layer.norm1(x))
            a = cache.attend(m, q, k, v)
            if condition is not None:
                q_rows = q.reshape(n, g, self.num_heads, s, self.head_dim).transpose(1, 2)
                q_rows = q_rows.reshape(n, self.num_heads, g * s, self.head_dim)
                q_cond = torch.gather(condition.q[m], 2, fusion_index)
                fused = attention(q_rows + q_cond, condition.k[m], condition.v[m], cond_mask)
                fused = fused.reshape(n, self.num_heads, g, s, self.head_dim).transpose(1, 2)
                gate = self.audio_fusion.gates[m].to(a.dtype)
                a = a + gate * fused.reshape(b, self.num_heads, s, self.head_dim)
            out_proj = layer.self_attn.out_proj
            attended = linear(self._merge_heads(a), out_proj.weight, out_proj.bias)
            x = x + layer.layer_scale_1(attended)
            # Text cross-attention with LoRA on the query (value LoRA is inside text.v).
            attn = cross_attention(layer)
            h = layer.norm_cross(x)
            bias = attn.in_proj_bias
            qc = linear(h, attn.in_proj_weight[: self.dim],
                        None if bias is None else bias[: self.dim])
            lora = tp.cast(CrossAttentionLoRA, self.text_lora[m])
            if not lora.merged:
                qc = qc + lora.delta_q(h)
            c = attention(self._heads(qc), text.k[m], text.v[m], text_mask)
            x = x + layer.layer_scale_cross(
                linear(self._merge_heads(c), attn.out_proj.weight, attn.out_proj.bias))
            x = x + layer.layer_scale_2(feed_forward(layer, layer.norm2(x)))
        if lm.out_norm is not None:
            x = lm.out_norm(x)
        return torch.stack([linear(x, head.weight, head.bias) for head in self.heads], dim=1)

    # ------------------------------------------------------------ decode step
    @torch.no_grad()
    def decode_weights(self) -> DecodeWeights:
        """Prepare the weights for `decode_step` (once, after loading and merging)."""
        d = self.dim
        layers = []
        gates = self.audio_fusion.gates.detach().float().cpu().tolist()
        for m, layer in enumerate(self.layers):
            if not tp.cast(CrossAttentionLoRA, self.text_lora[m]).merged:
                raise ValueError("decode_step needs the LoRA merged (call merge_lora first)")
            for name in ("layer_scale_1", "layer_scale_2", "layer_scale_cross"):
                if not isinstance(getattr(layer, name), nn.Identity):
                    raise ValueError(f"decode_step expects MusicGen's layers without {name}")
            attn = cross_attention(layer)
            bias = attn.in_proj_bias
            layers.append(DecodeLayerWeights(attn.in_proj_weight[:d],
                                             None if bias is None else bias[:d], gates[m]))
        weights: list[torch.Tensor] = [head.weight for head in self.heads]
        heads = torch.cat(weights).detach()
        biases: list[torch.Tensor] = [head.bias for head in self.heads if head.bias is not None]
        heads_bias = torch.cat(biases).detach() if biases else None
        return DecodeWeights(tuple(layers), heads, heads_bias)

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor,
                    state: DecodeStepState, weights: DecodeWeights) -> torch.Tensor:
        """Logits for one new position per row: what `forward` computes for a chunk of
        one token, with the cached keys/values in `state` (same math, up to rounding).

        The residual stream is kept transposed (`[D, R]`), so every projection is one
        `W @ h^T` product (`mm`/`addmm`: MKL's fast kernel for a narrow right-hand side on the
        CPU, the same GEMM for cuBLAS) and a layer is ~37 ATen calls. Nothing here reads a
        value back to the host, allocates from a Python list or depends on data for its
        shapes: the step can be captured in a CUDA graph.

        Args:
            tokens: `[R, K]` long input tokens (special token where the pattern is empty).
            positions: `[R]` long sequence position of each row's token.
            state: the caches (see `DecodeStepState`).
            weights: from `decode_weights`.
        Returns:
            `[R, K, card]` logits in the LM's dtype (a view).
        """
        lm = self.lm
        x = sum(lm.emb[k](tokens[:, k]) for k in range(tokens.shape[1]))
        x = x + F.embedding(positions, self.sin_table)
        xt = x.t()  # [D, R]
        for m, layer in enumerate(self.layers):
            xt = self._decode_layer(m, layer, weights.layers[m], xt, state)
        h = xt.t() if lm.out_norm is None else lm.out_norm(xt.t())
        logits = torch.mm(weights.heads, h.t())
        if weights.heads_bias is not None:
            logits = logits + weights.heads_bias.view(-1, 1)
        return logits.t().view(x.shape[0], self.num_codebooks, self.card)

    def _decode_layer(self, m: int, layer: StreamingTransformerLayer, w: DecodeLayerWeights,
                      xt: torch.Tensor, s: DecodeStepState) -> torch.Tensor:
        """One layer of `decode_step`: `xt [D, R]` -> `[D, R]`."""
        heads, dh = self.num_heads, self.head_dim
        rows = xt.shape[1]
        attn = layer.self_attn
        # Self-attention: q, k, v of every row; k, v go into the cache at the row's position.
        # (attention kernels want the head dim contiguous: one small transposing copy)
        qkv = _project(attn.in_proj_weight, attn.in_proj_bias, layer.norm1(xt.t()))
        qkv = qkv.t().contiguous().view(rows, 3, heads, dh)
        s.write_kv(m, qkv[:, 1:])
        q = qkv[:, 0]  # [R, H, Dh]
        a = F.scaled_dot_product_attention(q.unsqueeze(2), s.self_k[m], s.self_v[m],
                                           attn_mask=s.self_bias)  # [R, H, 1, Dh]
        if s.cond_q is not None:
            # Audio fusion: rows sharing a condition query it together:
            # x + g * SDPA(q + q', K', V').
            assert s.cond_k is not None and s.cond_v is not None
            g = s.rows_per_condition
            n = rows // g
            q_rows = q.view(n, g, heads, dh).transpose(1, 2)  # [N, H, g, Dh]
            fused = F.scaled_dot_product_attention(q_rows + s.cond_q[m], s.cond_k[m], s.cond_v[m],
                                                   attn_mask=s.cond_bias)
            a.view(n, g, heads, dh).transpose(1, 2).add_(fused, alpha=w.gate)
        out = attn.out_proj
        xt = _project(out.weight, out.bias, a.view(rows, self.dim), residual=xt)
        # Text cross-attention (the LoRA is merged into its query/value weights).
        qc = _project(w.cross_q, w.cross_q_bias, layer.norm_cross(xt.t()))  # [D, R]
        c = F.scaled_dot_product_attention(qc.t().contiguous().view(rows, heads, 1, dh),
                                           s.text_k[m], s.text_v[m], attn_mask=s.text_bias)
        out = cross_attention(layer).out_proj
        xt = _project(out.weight, out.bias, c.view(rows, self.dim), residual=xt)
        # Feed-forward.
        hidden = layer.activation(_project(layer.linear1.weight, layer.linear1.bias,
                                           layer.norm2(xt.t())))
        return _project(layer.linear2.weight, layer.linear2.bias, hidden, residual=xt,
                        transposed_input=True)

    # ---------------------------------------------------------------- serving
    @torch.no_grad()
    def merge_lora(self) -> None:
        """Fold the LoRA factors into the cross-attention q/v weights (once, at load time)."""
        d = self.dim
        for layer, lora in zip(self.layers, self.text_lora, strict=True):
            lora = tp.cast(CrossAttentionLoRA, lora)
            if lora.merged:
                continue
            w = cross_attention(layer).in_proj_weight
            w[:d] += (lora.q_B.float() @ lora.q_A.float() * lora.scale).to(w.dtype)
            w[2 * d:] += (lora.v_B.float() @ lora.v_A.float() * lora.scale).to(w.dtype)
            lora.merged = True


def _project(weight: torch.Tensor, bias: torch.Tensor | None, h: torch.Tensor,
             residual: torch.Tensor | None = None, transposed_input: bool = False) -> torch.Tensor:
    """`W @ h^T (+ bias) (+ residual)` -> `[D_out, R]` for `h [R, D_in]` (or `h^T [D_in, R]`
    with `transposed_input`): one `mm`/`addmm` of the decode step."""
    ht = h if transposed_input else h.t()
    if residual is not None and bias is None:
        return torch.addmm(residual, weight, ht)
    out = torch.mm(weight, ht)
    if bias is not None:
        out = out + bias.view(-1, 1)
    return out if residual is None else residual + out


def count_adapter_parameters(model: InstructMusicGen) -> dict[str, int]:
    """New parameters Instruct-MusicGen adds to MusicGen, by part."""
    fusion = sum(p.numel() for p in model.audio_fusion.parameters())
    lora = sum(p.numel() for p in model.text_lora.parameters())
    base = sum(p.numel() for p in model.lm.parameters())
    return {"audio_fusion": fusion, "text_lora": lora, "base_lm": base}
