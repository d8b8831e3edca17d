"""audiocraft experiment configs (`xp.cfg`) for the model sizes we build from config.

The real `facebook/musicgen-*` files carry their own `xp.cfg`; these are only for the
random-weight presets (`tiny`, `small-random`), written into `state_dict.bin` /
`compression_state_dict.bin` exactly as audiocraft stores them, so that the same loader reads
them. Values follow audiocraft's `musicgen_lm.yaml` / `encodec` defaults; sizes vary.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LMSize:
    dim: int
    num_heads: int
    num_layers: int
    card: int = 2048
    n_q: int = 4


@dataclass(frozen=True)
class CodecSize:
    n_filters: int
    dimension: int
    lstm: int
    bins: int = 2048
    n_q: int = 4
    ratios: tuple[int, ...] = (8, 5, 4, 4)  # hop 640 at 32 kHz = 50 frames/s, as MusicGen


MUSICGEN_SMALL = LMSize(dim=1024, num_heads=16, num_layers=24)
MUSICGEN_LARGE = LMSize(dim=2048, num_heads=32, num_layers=48)
TINY_LM = LMSize(dim=64, num_heads=4, num_layers=2, card=64)
ENCODEC_32KHZ = CodecSize(n_filters=64, dimension=128, lstm=2)
TINY_CODEC = CodecSize(n_filters=4, dimension=16, lstm=0, bins=64)
SAMPLE_RATE = 32000


def lm_xp_cfg(size: LMSize, t5_name: str = "t5-base") -> dict:
    """MusicGen LM experiment config in audiocraft's layout, at the given size."""
    return {
        "lm_model": "transformer_lm",
        "device": "cpu",
        "dtype": "float32",
        "sample_rate": SAMPLE_RATE,
        "channels": 1,
        "dataset": {"segment_duration": 30},
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {"delays": list(range(size.n_q)), "flatten_first": 0, "empty_initial": 0},
        },
        "transformer_lm": {
            "dim": size.dim, "num_heads": size.num_heads, "num_layers": size.num_layers,
            "hidden_scale": 4, "n_q": size.n_q, "card": size.card, "dropout": 0.0,
            "emb_lr": None, "activation": "gelu", "norm_first": True, "bias_ff": False,
            "bias_attn": False, "bias_proj": False, "past_context": None, "causal": True,
            "custom": False, "memory_efficient": True, "attention_as_float32": False,
            "layer_scale": None, "positional_embedding": "sin", "xpos": False,
            "checkpointing": "none", "weight_init": "gaussian", "depthwise_init": "current",
            "zero_bias_init": True, "norm": "layer_norm", "cross_attention": False,
            "qk_layer_norm": False, "qk_layer_norm_cross": False, "attention_dropout": None,
            "kv_repeat": 1, "two_step_cfg": False,
        },
        "classifier_free_guidance": {"training_dropout": 0.3, "inference_coef": 3.0},
        "attribute_dropout": {},
        "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1,
                  "sum": [], "prepend": [], "cross": ["description"], "input_interpolate": []},
        "conditioners": {"description": {"model": "t5", "t5": {
            "name": t5_name, "finetune": False, "word_dropout": 0.3, "normalize_text": False}}},
    }


def codec_xp_cfg(size: CodecSize) -> dict:
    """EnCodec experiment config in audiocraft's layout (32 kHz mono)."""
    return {
        "device": "cpu",
        "dtype": "float32",
        "sample_rate": SAMPLE_RATE,
        "channels": 1,
        "compression_model": "encodec",
        "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": SAMPLE_RATE,
                    "channels": 1, "causal": False, "renormalize": False},
        "seanet": {
            "dimension": size.dimension, "channels": 1, "causal": False,
            "n_filters": size.n_filters, "n_residual_layers": 1, "ratios": list(size.ratios),
            "activation": "ELU", "activation_params": {"alpha": 1.0}, "norm": "weight_norm",
            "norm_params": {}, "kernel_size": 7, "residual_kernel_size": 3,
            "last_kernel_size": 7, "dilation_base": 2, "pad_mode": "constant",
            "true_skip": True, "compress": 2, "lstm": size.lstm,
            "disable_norm_outer_blocks": 0,
            "decoder": {"trim_right_ratio": 1.0, "final_activation": None,
                        "final_activation_params": None},
            "encoder": {},
        },
        "rvq": {"n_q": size.n_q, "q_dropout": False, "bins": size.bins, "decay": 0.99,
                "kmeans_init": False, "kmeans_iters": 50, "threshold_ema_dead_code": 2,
                "orthogonal_reg_weight": 0.0, "orthogonal_reg_active_codes_only": False},
    }
