"""Pretrained models the set-level metrics need, read from local directories only.

- `ClapModelScorer`: a `transformers` CLAP model (`ClapModel` + `ClapProcessor`
  `save_pretrained` directory, e.g. a local copy of `laion/larger_clap_music`, the
  conversion of the LAION-CLAP `music_audioset` checkpoint the release's evaluation used):
  audio and text embeddings for the CLAP score, audio embeddings for FAD.
- `AudioTagger`: a `transformers` audio classifier trained on AudioSet (e.g. a local
  copy of `MIT/ast-finetuned-audioset-10-10-0.4593`): class logits for KL.

Every load passes `local_files_only=True` and refuses anything but an existing directory:
nothing is downloaded at run time.
"""
from __future__ import annotations

import typing as tp
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .metrics import to_metric_audio

BATCH_SIZE = 8


class PretrainedModelError(ValueError):
    """A metric model path is not a local model directory, or does not load."""


def _local_dir(path: str | Path, what: str, option: str) -> Path:
    directory = Path(path)
    if not directory.is_dir():
        raise PretrainedModelError(
            f"{what} {str(path)!r} is not a local directory: pass {option} a directory written "
            "by save_pretrained (models are never downloaded)")
    return directory


class _PooledOutput(tp.Protocol):
    """A `transformers` model output with a pooled embedding."""

    pooler_output: torch.Tensor


def _features(output: torch.Tensor | _PooledOutput) -> torch.Tensor:
    """The embedding from a `get_*_features` call (a tensor, or an output's pooler)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _in_batches(clips: Sequence[tuple[np.ndarray, int]], sample_rate: int,
                run: Callable[[list[np.ndarray]], torch.Tensor]) -> torch.Tensor:
    """Resample `(audio [C, N], rate)` clips to mono `sample_rate` and `run` the model on
    `BATCH_SIZE` of them at a time; the rows, float32 on the CPU."""
    out = []
    for i in range(0, len(clips), BATCH_SIZE):
        audio = [to_metric_audio(a, r, sample_rate).float().numpy()
                 for a, r in clips[i:i + BATCH_SIZE]]
        out.append(run(audio).float().cpu())
    return torch.cat(out)


class ClapModelScorer:
    """CLAP audio and text embeddings (`[B, D]`) from a local `transformers` CLAP model."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        from transformers import ClapModel, ClapProcessor
        directory = _local_dir(path, "CLAP model", "--clap-model")
        try:
            self.model = ClapModel.from_pretrained(directory, local_files_only=True)
            self.processor = ClapProcessor.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise PretrainedModelError(f"cannot load a CLAP model from {directory}: {exc}") from exc
        self.device = torch.device(device)
        # nn.Module's own `to`: transformers' typed wrapper of it does not accept a device.
        torch.nn.Module.to(self.model, self.device).eval()
        self.sample_rate = int(self.processor.feature_extractor.sampling_rate)
        self.path = directory

    @torch.no_grad()
    def audio_embeddings(self, clips: Sequence[tuple[np.ndarray, int]]) -> torch.Tensor:
        """`(audio [C, N], rate)` clips -> `[B, D]` float32 on the CPU."""
        def embed(audio: list[np.ndarray]) -> torch.Tensor:
            inputs = self.processor(audio=audio, sampling_rate=self.sample_rate,
                                    return_tensors="pt").to(self.device)
            return _features(self.model.get_audio_features(**inputs))

        return _in_batches(clips, self.sample_rate, embed)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> `[B, D]` float32 on the CPU."""
        out = []
        for i in range(0, len(texts), BATCH_SIZE):
            inputs = self.processor(text=list(texts[i:i + BATCH_SIZE]), return_tensors="pt",
                                    padding=True).to(self.device)
            out.append(_features(self.model.get_text_features(**inputs)).float().cpu())
        return torch.cat(out)


class AudioTagger:
    """AudioSet class logits (`[B, classes]`) from a local `transformers` audio classifier."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification
        directory = _local_dir(path, "audio classifier", "--kl-model")
        try:
            self.model = AutoModelForAudioClassification.from_pretrained(
                directory, local_files_only=True)
            self.extractor = AutoFeatureExtractor.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise PretrainedModelError(
                f"cannot load an audio classifier from {directory}: {exc}") from exc
        self.device = torch.device(device)
        torch.nn.Module.to(self.model, self.device).eval()
        self.sample_rate = int(self.extractor.sampling_rate)
        self.path = directory

    @torch.no_grad()
    def logits(self, clips: Sequence[tuple[np.ndarray, int]]) -> torch.Tensor:
        """`(audio [C, N], rate)` clips -> `[B, classes]` float32 on the CPU."""
        def classify(audio: list[np.ndarray]) -> torch.Tensor:
            inputs = self.extractor(audio, sampling_rate=self.sample_rate,
                                    return_tensors="pt").to(self.device)
            return self.model(**inputs).logits

        return _in_batches(clips, self.sample_rate, classify)
