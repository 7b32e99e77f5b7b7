"""The audio tower: a Hugging Face speech encoder (Wav2Vec2Model in the default bundle), its
Linear layers in LLM.int8(), then an RMSNorm over the output features (this project's own
stabilisation), returning one [n_frames, hidden] fp16 embedding per clip.

Long clips are cut into equal windows no longer than ``window_samples`` (attention cost grows
with the square of the length) and their frames concatenated. Windows are batched by length;
padding is masked when the feature extractor says the tower supports it (``return_attention_mask``,
true for layer-norm Wav2Vec2 variants), otherwise only windows of equal length share a batch,
since group-norm towers see the padding.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoFeatureExtractor, PreTrainedModel

from bundle.layout import Bundle
from services.audio.config import AudioConfig
from services.audio.preprocess import AudioLimits, AudioPreprocessor
from services.common.device import resolve_device
from services.encoder.pipeline import MediaEncoder, RequestBudget
from services.encoder.tower import COMPUTE_DTYPE, load_tower, ready_encoder

# The RMSNorm's weight, a [hidden] tensor under "weight", saved in the bundle's audio folder;
# a bundle without it gets the neutral weight (ones).
OUTPUT_NORM_FILE = "output_norm.safetensors"


def load_output_norm(folder: Path, model: PreTrainedModel) -> nn.RMSNorm:
    """The RMSNorm over ``model``'s output features, with the bundle's weight if it has one."""
    config = model.config
    norm = nn.RMSNorm(config.hidden_size, eps=config.layer_norm_eps, dtype=COMPUTE_DTYPE)
    path = folder / OUTPUT_NORM_FILE
    if path.is_file():
        norm.load_state_dict(load_file(path))
    return norm.eval()


class AudioTower:
    def __init__(
        self,
        model: PreTrainedModel,
        norm: nn.RMSNorm,
        *,
        batch_size: int,
        window_samples: int,
        use_attention_mask: bool,
    ) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.norm = norm.to(self.device)
        self.batch_size = batch_size
        self.use_attention_mask = use_attention_mask
        # Cut points fall where windows are at least half this long, so none is too short.
        if window_samples < 2 * self.min_samples:
            raise ValueError(f"windows of {window_samples} samples are too short for this tower")
        self.window_samples = window_samples

    @property
    def min_samples(self) -> int:
        """The convolutional front-end's receptive field: the shortest input giving one frame."""
        kernels, strides = self.model.config.conv_kernel, self.model.config.conv_stride
        samples = 1
        for kernel, stride in zip(kernels[::-1], strides[::-1], strict=True):
            samples = (samples - 1) * stride + kernel
        return samples

    def frames(self, samples: torch.Tensor) -> torch.Tensor:
        """Output frames for each input length."""
        lengths = self.model._get_feat_extract_output_lengths(samples)  # type: ignore[operator]
        return lengths.clamp(min=0)

    def warm_up(self) -> None:
        """One full batch of silent windows."""
        self.encode([torch.zeros(self.window_samples)] * self.batch_size)

    @torch.inference_mode()
    def encode(self, clips: list[torch.Tensor]) -> list[torch.Tensor]:
        """1-D input values (each at least ``min_samples`` long) -> [n_frames, hidden] fp16."""
        per_clip = [torch.tensor_split(c, math.ceil(len(c) / self.window_samples)) for c in clips]
        windows = [window for pieces in per_clip for window in pieces]
        encoded: dict[int, torch.Tensor] = {}
        for batch in self._batches([len(w) for w in windows]):
            encoded.update(zip(batch, self._forward([windows[j] for j in batch]), strict=True))
        # The windows are numbered clip after clip: join each clip's frames back up.
        out, start = [], 0
        for pieces in per_clip:
            out.append(torch.cat([encoded[j] for j in range(start, start + len(pieces))]))
            start += len(pieces)
        return out

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Window indices per forward pass: similar lengths together, equal ones if unmasked."""
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        groups = (
            [order]
            if self.use_attention_mask
            else [list(g) for _, g in itertools.groupby(order, key=lengths.__getitem__)]
        )
        return [
            group[start : start + self.batch_size]
            for group in groups
            for start in range(0, len(group), self.batch_size)
        ]

    def _forward(self, windows: list[torch.Tensor]) -> list[torch.Tensor]:
        lengths = torch.tensor([len(w) for w in windows])
        values = pad_sequence(windows, batch_first=True).to(self.device, COMPUTE_DTYPE)
        mask = None
        if self.use_attention_mask:
            mask = (torch.arange(values.shape[1]) < lengths[:, None]).long().to(self.device)
        hidden = self.norm(self.model(values, attention_mask=mask).last_hidden_state)
        frames = self.frames(lengths).tolist()
        return [h[:n].to("cpu", torch.float16) for h, n in zip(hidden, frames, strict=True)]


def load_encoder(config: AudioConfig) -> MediaEncoder[torch.Tensor]:
    """The bundle's audio tower, its feature extractor and output RMSNorm, on the device."""
    folder = Bundle.load(config.bundle).audio
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    model = load_tower(
        folder, resolve_device(config.device), config.quantization, config.int8_threshold
    )
    tower = AudioTower(
        model,
        load_output_norm(folder, model),
        batch_size=config.batch_size,
        window_samples=round(config.window_seconds * extractor.sampling_rate),
        use_attention_mask=bool(extractor.return_attention_mask),
    )
    limits = AudioLimits(
        max_bytes=config.max_audio_bytes,
        max_seconds=config.max_audio_seconds,
        min_samples=tower.min_samples,
    )
    preprocess = AudioPreprocessor(extractor, limits)
    budget = RequestBudget(
        preprocess.samples, config.max_request_audio_samples, "samples (channels x frames)"
    )
    return ready_encoder(tower, preprocess, config, budget)
