"""The paper's edit-quality metrics (Table 2), computed as the release's `evaluation/main.py`.

Audio is compared at `METRIC_SAMPLE_RATE` (16 kHz, mono), as the release resamples to it:

- SI-SDR: torchmetrics' scale-invariant SDR (`zero_mean=False`, its default, as the release
  calls it), in float64 so that a perfect estimate scores far above 100 dB;
- SI-SDRi: SI-SDR of the estimate minus SI-SDR of the unedited input, against the same target;
- SSIM: torchmetrics' SSIM (`data_range=1.0`) between torchaudio mel power spectrograms with
  the transform's defaults (n_fft 400, 128 mels), as the release computes it;
- FAD: Fréchet distance between the embedding sets of the estimates and the targets;
- KL: KL(target || estimate) of an audio tagger's class distributions (softmax over logits,
  1e-6 added to the estimate's probabilities), averaged over pairs, as `audioldm_eval` does;
- CLAP: cosine similarity of an audio embedding with its caption's text embedding.

FAD, KL and CLAP take embeddings or logits from pretrained models
(`models.evaluation.pretrained`); the functions here are the arithmetic only.
"""
from __future__ import annotations

import typing as tp
import warnings
from functools import lru_cache

import numpy as np
import torch

METRIC_SAMPLE_RATE = 16000
KL_EPS = 1e-6


def to_metric_audio(wav: np.ndarray | torch.Tensor, sample_rate: int,
                    target_rate: int = METRIC_SAMPLE_RATE) -> torch.Tensor:
    """`[C, N]` (or `[N]`) at `sample_rate` -> `[N']` float64 mono at `target_rate`."""
    import julius
    x = torch.as_tensor(np.asarray(wav), dtype=torch.float64)
    x = x.reshape(-1, x.shape[-1]).mean(dim=0)
    if sample_rate != target_rate:
        x = julius.resample_frac(x, sample_rate, target_rate)
    return x


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """Scale-invariant SDR in dB of `estimate` against `reference` (`[N]` each; the
    estimate is cut to the reference's length, as the release does)."""
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio
    n = reference.shape[-1]
    estimate = torch.nn.functional.pad(estimate[:n], (0, max(0, n - estimate.shape[-1])))
    return float(scale_invariant_signal_distortion_ratio(estimate.double(), reference.double()))


def si_sdr_improvement(estimate: torch.Tensor, reference: torch.Tensor,
                       mixture: torch.Tensor) -> float:
    """SI-SDRi in dB: how much closer to `reference` the estimate is than the input
    `mixture` (0 for an estimate that is the input)."""
    return si_sdr(estimate, reference) - si_sdr(mixture, reference)


@lru_cache(maxsize=4)
def _mel_transform(sample_rate: int) -> torch.nn.Module:
    import torchaudio
    with warnings.catch_warnings():
        # 128 mels over n_fft 400 leaves empty filters; the release used exactly these defaults.
        warnings.simplefilter("ignore", UserWarning)
        return torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate).double()


def mel_ssim(estimate: torch.Tensor, reference: torch.Tensor,
             sample_rate: int = METRIC_SAMPLE_RATE) -> float:
    """SSIM of the mel power spectrograms of two `[N]` signals (1 for identical signals)."""
    from torchmetrics.functional.image import structural_similarity_index_measure
    mel = _mel_transform(sample_rate)
    a = mel(estimate.double()).unsqueeze(0).unsqueeze(0)
    b = mel(reference.double()).unsqueeze(0).unsqueeze(0)
    frames = min(a.shape[-1], b.shape[-1])
    # A tensor: the function returns a tuple only when asked for the full SSIM image.
    return float(tp.cast(torch.Tensor, structural_similarity_index_measure(
        a[..., :frames], b[..., :frames], data_range=1.0)))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets `[N, D]`, `[M, D]`:
    `|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`.

    Raises:
        ValueError: a set has fewer than 2 embeddings (no covariance).
    """
    from scipy import linalg
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least 2 embeddings in each set")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(covmean).all():
        # Singular products (fewer embeddings than dimensions): regularise, as the FAD and FID
        # reference implementations do.
        offset = np.eye(cov_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def kl_divergence(estimate_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Per pair, `KL(softmax(target) || softmax(estimate) + 1e-6)` over classes.

    Args:
        estimate_logits, target_logits: `[B, classes]`.
    Returns:
        `[B]` float64.
    """
    p = torch.softmax(target_logits.double(), dim=-1)
    log_q = torch.log(torch.softmax(estimate_logits.double(), dim=-1) + KL_EPS)
    return torch.nn.functional.kl_div(log_q, p, reduction="none").sum(dim=-1)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of `[B, D]` and `[B, D]` -> `[B]`."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
