"""The gateway's fusion stage: per-item embeddings (never dependent on the request's other
items), memory linear in the media tokens, and the GLM-4.1V projector from its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from bundle.glm4v_projector import Glm4vProjector
from bundle.layout import GLM4, Bundle
from gateway.fusion import FusionStage
from services.encoder.types import Embedding
from tests.gateway.fusion_growth import FUSION_WIDTH, fusion_peak_growth, items
from tests.memory import in_fresh_process

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def default_stage(bundle: Bundle) -> FusionStage:
    return FusionStage.load(bundle.fusion, CPU, "float16")


def test_default_fusion_keeps_row_counts_and_returns_decoder_width_fp16(
    bundle: Bundle, default_stage: FusionStage
) -> None:
    decoder_width = AutoConfig.from_pretrained(bundle.decoder).hidden_size
    vision, audio = default_stage.fuse(items((64, 128), (64, 128)), items((49, 128)))
    assert [v.shape for v in vision] == [(64, decoder_width)] * 2
    assert [a.shape for a in audio] == [(49, decoder_width)]
    assert vision[0].dtype == torch.float16 and torch.isfinite(vision[0]).all()


def test_an_items_embeddings_do_not_depend_on_the_other_items(
    default_stage: FusionStage,
) -> None:
    image, other_image = items((64, 128), (64, 128), seed=1)
    clip = items((49, 128), seed=2)
    [alone], _ = default_stage.fuse([image], [])
    with_others, [clip_out] = default_stage.fuse([other_image, image], clip)
    assert torch.equal(with_others[1], alone)
    _, [clip_alone] = default_stage.fuse([], clip)
    assert torch.equal(clip_out, clip_alone)


def test_default_fusion_memory_grows_linearly_with_an_items_tokens() -> None:
    growth = {n: in_fresh_process(fusion_peak_growth, n) for n in (6144, 12288)}
    dense = FUSION_WIDTH.num_attention_heads * 12288**2 * 4  # fp32 [heads, n, n]: 1.2 GB
    assert growth[12288] < dense / 10
    assert growth[12288] < 2.5 * growth[6144] + (8 << 20)


def test_a_glm4v_bundle_fuses_with_the_checkpoints_projector(glm4v_checkpoint: Path) -> None:
    stage = FusionStage.load(glm4v_checkpoint, CPU, "float16")
    assert isinstance(stage.model, Glm4vProjector)
    states = items((4 * 6, 64), (10 * 4, 64), seed=3)
    grids = [(1, 4, 6), (1, 10, 4)]
    images = [Embedding(s.tensor, grid) for s, grid in zip(states, grids, strict=True)]
    fused, _ = stage.fuse(images, [])
    # 2x2 groups of patches -> one token each, at the text width
    assert [f.shape for f in fused] == [(6, 128), (10, 128)]
    assert all(f.dtype == torch.float16 for f in fused)
    [alone], _ = stage.fuse(images[1:], [])
    assert torch.equal(fused[1], alone)


def test_glm4v_fusion_refuses_states_that_do_not_fit_their_grid(glm4v_checkpoint: Path) -> None:
    stage = FusionStage.load(glm4v_checkpoint, CPU, "float32")
    [states] = items((24, 64))
    with pytest.raises(ValueError, match="do not fit the grid"):
        stage.fuse([Embedding(states.tensor, (1, 4, 4))], [])
    with pytest.raises(ValueError, match="needs each image's grid_thw"):
        stage.fuse([states], [])
    with pytest.raises(ValueError, match="no audio projector"):
        stage.fuse([], items((8, 64)))


def test_an_unknown_fusion_dtype_is_refused(glm4v_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="unknown fusion dtype"):
        FusionStage.load(glm4v_checkpoint, CPU, "int8")


def test_a_text_only_bundle_has_no_fusion_and_takes_no_media(tmp_path: Path) -> None:
    text_only = Bundle(tmp_path, "m", {"decoder": "."}, architecture=GLM4)
    stage = FusionStage.for_bundle(text_only, CPU, "float16")
    assert stage.fuse([], []) == ([], [])
    with pytest.raises(ValueError, match="takes text only"):
        stage.fuse(items((4, 64)), [])
