"""The audio tower in-process: windows for long clips, batching rules, the output RMSNorm."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import Wav2Vec2Config, Wav2Vec2Model

from services.audio.model import OUTPUT_NORM_FILE, AudioTower, load_output_norm
from services.encoder.tower import load_tower

CPU = torch.device("cpu")
RATE = 16000


def save_tower(folder: Path, norm: str) -> Path:
    """A tiny Wav2Vec2: "group" is the base models' front-end, whose GroupNorm sees padding."""
    config = Wav2Vec2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm=norm, do_stable_layer_norm=norm == "layer",
    )  # fmt: skip
    torch.manual_seed(0)
    Wav2Vec2Model(config).save_pretrained(folder)
    return folder


def load(folder: Path, *, window_s: float = 30.0, mask: bool, batch_size: int = 8) -> AudioTower:
    model = load_tower(folder, CPU, "int8", 6.0)
    return AudioTower(
        model, load_output_norm(folder, model),
        batch_size=batch_size, window_samples=int(window_s * RATE), use_attention_mask=mask,
    )  # fmt: skip


def clips(*seconds: float) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(int(s * RATE), generator=generator) for s in seconds]


@pytest.fixture(scope="module")
def group_norm_tower(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tower(tmp_path_factory.mktemp("group"), "group")


def test_unmasked_towers_batch_only_equal_lengths(group_norm_tower: Path) -> None:
    tower = load(group_norm_tower, mask=False)
    inputs = clips(0.5, 1.0, 0.5, 0.8)
    together = tower.encode(inputs)
    alone = [tower.encode([clip])[0] for clip in inputs]
    for batched, single in zip(together, alone, strict=True):
        torch.testing.assert_close(batched, single, atol=1e-3, rtol=1e-3)


def test_padding_is_what_that_rule_avoids(group_norm_tower: Path) -> None:
    # The same clips padded into one batch without a mask: a group-norm front-end drifts.
    tower = load(group_norm_tower, mask=True)  # pads unequal lengths together
    inputs = clips(0.5, 1.0)
    together = tower.encode(inputs)
    alone = tower.encode(inputs[:1])[0]
    assert (together[0].float() - alone.float()).abs().max() > 1e-2


def test_long_clips_are_encoded_in_windows_and_joined(group_norm_tower: Path) -> None:
    tower = load(group_norm_tower, window_s=1.0, mask=False)
    (clip,) = clips(2.5)
    (joined,) = tower.encode([clip])
    pieces = torch.tensor_split(clip, 3)  # ceil(2.5 s / 1 s) equal windows
    expected = torch.cat([tower.encode([piece])[0] for piece in pieces])
    torch.testing.assert_close(joined, expected)
    assert joined.shape == (3 * 41, 32)  # windows of 13333 samples: (13333 - 400) // 320 + 1


def test_windows_must_fit_the_receptive_field(group_norm_tower: Path) -> None:
    with pytest.raises(ValueError, match="too short"):
        load(group_norm_tower, window_s=0.04, mask=False)  # 640 samples < 2 x 400


def test_the_output_norm_weight_comes_from_the_bundle(tmp_path: Path) -> None:
    folder = save_tower(tmp_path, "layer")
    inputs = clips(0.7)
    neutral = load(folder, mask=True).encode(inputs)[0].float()
    torch.testing.assert_close(
        neutral.pow(2).mean(-1).sqrt(), torch.ones(len(neutral)), atol=1e-2, rtol=0
    )

    save_file({"weight": torch.full((32,), 3.0)}, folder / OUTPUT_NORM_FILE)
    scaled = load(folder, mask=True).encode(inputs)[0].float()
    torch.testing.assert_close(scaled, 3 * neutral, atol=2e-2, rtol=1e-2)
