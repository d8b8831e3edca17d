"""The paper's metrics against oracles, and the pretrained metric models read from disk only."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from metric_models import write_tiny_audio_tagger, write_tiny_clap

from models.evaluation import metrics
from models.evaluation.pretrained import AudioTagger, ClapModelScorer, PretrainedModelError

RATE = metrics.METRIC_SAMPLE_RATE


def _tone(freq: float, phase: float = 0.0, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(seconds * RATE), dtype=torch.float64) / RATE
    return torch.sin(2 * math.pi * freq * t + phase)


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(0)
    target = (0.3 * rng.standard_normal((1, 32000 * 2))).astype(np.float32)
    other = (0.3 * rng.standard_normal((1, 32000 * 2))).astype(np.float32)
    return target, target + other


def test_returning_the_input_gives_si_sdri_of_exactly_zero(clip):
    target, mixture = clip
    ref, mix = metrics.to_metric_audio(target, 32000), metrics.to_metric_audio(mixture, 32000)
    estimate = metrics.to_metric_audio(mixture.copy(), 32000)
    assert metrics.si_sdr_improvement(estimate, ref, mix) == 0.0


def test_returning_the_target_scores_perfectly(clip):
    target, mixture = clip
    ref = metrics.to_metric_audio(target, 32000)
    estimate = metrics.to_metric_audio(target.copy(), 32000)
    assert metrics.si_sdr(estimate, ref) > 100.0
    assert metrics.mel_ssim(estimate, ref) == pytest.approx(1.0, abs=1e-9)
    assert metrics.si_sdr(0.5 * estimate, ref) > 100.0  # scale-invariant


def test_a_known_mixture_gives_the_hand_computed_values():
    """s = sin, n = cos of the same frequency over whole periods: <s, n> = 0, so the estimate
    s + 0.1 n has SI-SDR 10 log10(|s|^2 / |0.1 n|^2) = 20 dB, and the mixture s + n has 0 dB."""
    s, n = _tone(440.0), _tone(440.0, phase=math.pi / 2)
    assert metrics.si_sdr(s + 0.1 * n, s) == pytest.approx(20.0, abs=1e-6)
    assert metrics.si_sdr(s + n, s) == pytest.approx(0.0, abs=1e-6)
    assert metrics.si_sdr_improvement(s + 0.1 * n, s, s + n) == pytest.approx(20.0, abs=1e-6)


def test_ssim_falls_as_the_estimate_departs_from_the_target():
    s = _tone(440.0)
    near = metrics.mel_ssim(s + 0.01 * _tone(3000.0), s)
    far = metrics.mel_ssim(_tone(3000.0), s)
    assert 1.0 > near > far


def test_frechet_distance_oracles():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((64, 4))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, 2.0, 0.0, -2.0])  # same covariance: the distance is |shift|^2
    assert metrics.frechet_distance(a, a + shift) == pytest.approx(9.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(a[:1], a)


def test_kl_divergence_matches_the_hand_computed_value():
    target = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)  # softmax (3/4, 1/4)
    estimate = torch.tensor([[0.0, 0.0]], dtype=torch.float64)  # softmax (1/2, 1/2)
    expected = 0.75 * (math.log(0.75) - math.log(0.5 + 1e-6)) \
        + 0.25 * (math.log(0.25) - math.log(0.5 + 1e-6))
    assert float(metrics.kl_divergence(estimate, target)[0]) == pytest.approx(expected, rel=1e-9)
    assert float(metrics.kl_divergence(target, target)[0]) == pytest.approx(0.0, abs=1e-5)


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return write_tiny_clap(tmp_path_factory.mktemp("clap"))


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    return write_tiny_audio_tagger(tmp_path_factory.mktemp("tagger"))


def test_clap_model_is_read_from_its_directory(clap_dir, clip):
    from transformers import ClapModel, ClapProcessor
    scorer = ClapModelScorer(clap_dir)
    target, mixture = clip
    audio = scorer.audio_embeddings([(target, 32000), (mixture, 32000)])
    text = scorer.text_embeddings(["Drums music", "Drums Bass music"])
    assert audio.shape == text.shape == (2, 16)
    # the same numbers as the library's own model and processor read from the same files
    model = ClapModel.from_pretrained(clap_dir).eval()
    processor = ClapProcessor.from_pretrained(clap_dir)
    with torch.no_grad():
        direct = model.get_text_features(**processor(text=["Drums music"], return_tensors="pt"))
    torch.testing.assert_close(text[:1], getattr(direct, "pooler_output", direct))


def test_audio_tagger_is_read_from_its_directory(tagger_dir, clip):
    logits = AudioTagger(tagger_dir).logits([(clip[0], 32000), (clip[1], 32000)])
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("cls, option", [(ClapModelScorer, "--clap-model"),
                                         (AudioTagger, "--kl-model")])
def test_metric_models_are_never_downloaded(cls, option, tmp_path):
    with pytest.raises(PretrainedModelError, match=f"not a local directory: pass {option}"):
        cls("laion/larger_clap_music")
    with pytest.raises(PretrainedModelError, match="cannot load"):
        cls(tmp_path)  # a directory without a model
