"""The serving forward computes the logits of GLM-4.1V's language model, as transformers'
Glm4vForConditionalGeneration does, with the same 3-D (t, h, w) positions (fp32).

The checkpoint is the tiny random one in the real layout (weights std 0.1, so positions
matter); the serving model reads only ``model.language_model.*`` and ``lm_head.*`` from it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DynamicCache, Glm4vConfig, Glm4vForConditionalGeneration
from transformers.models.glm4v.modeling_glm4v import Glm4vTextRotaryEmbedding

from services.decoder.model import Glm4ForCausalLM as ServingGlm4
from services.decoder.rope import RotaryEmbedding
from services.decoder.text_config import TextModelConfig
from tests.decoder.test_model_parity import TOLERANCE, decode, new_cache, prefill

GRID_THW = (1, 6, 8)  # one image of 6 x 8 patches: 12 tokens after the 2 x 2 merge


@pytest.fixture(scope="module")
def reference(glm4v_checkpoint: Path) -> Glm4vForConditionalGeneration:
    return Glm4vForConditionalGeneration.from_pretrained(
        glm4v_checkpoint, dtype=torch.float32
    ).eval()


@pytest.fixture(scope="module")
def serving(glm4v_checkpoint: Path) -> ServingGlm4:
    return ServingGlm4.from_pretrained(glm4v_checkpoint, torch.float32, torch.device("cpu"))


def image_prompt(reference: Glm4vForConditionalGeneration) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids (text, image placeholders, text) and their 3-D positions from transformers'
    own get_rope_index."""
    config = reference.config
    merge = config.vision_config.spatial_merge_size
    n_image = GRID_THW[0] * GRID_THW[1] * GRID_THW[2] // merge**2
    generator = torch.Generator().manual_seed(5)
    text = torch.randint(3, 100, (11,), generator=generator)
    image = torch.full((n_image,), config.image_token_id)
    ids = torch.cat([text[:5], image, text[5:]])
    positions, _ = reference.model.get_rope_index(
        ids[None],
        mm_token_type_ids=(ids == config.image_token_id).int()[None],
        image_grid_thw=torch.tensor([GRID_THW]),
    )
    return ids, positions[:, 0]  # [3, n]


def test_the_config_is_read_from_text_config(glm4v_checkpoint: Path) -> None:
    config = TextModelConfig.from_pretrained(glm4v_checkpoint)
    assert config.weight_prefix == "model.language_model."
    assert config.position_axes == 3
    assert sum(config.mrope_section) * 2 == config.rotary_dim == config.head_dim // 2


def test_the_real_checkpoint_config_gives_the_real_rotary_layout() -> None:
    """AutoGLM-Phone-9B's text_config as its config.json writes it (rotary settings in the
    transformers 4 style, which transformers 5 moves into rope_parameters): head_dim 128, half
    of it rotated, its 32 frequencies split 8 / 12 / 12 over t, h, w; cos/sin as transformers'
    Glm4vTextRotaryEmbedding computes them."""
    config = Glm4vConfig(
        text_config=dict(
            hidden_size=4096, num_attention_heads=32, num_key_value_heads=2,
            partial_rotary_factor=0.5, rope_theta=10000,
            rope_scaling={"type": "default", "mrope_section": [8, 12, 12]},
        )
    )  # fmt: skip
    ours = TextModelConfig.from_hf(config)
    assert (ours.head_dim, ours.rotary_dim, ours.mrope_section) == (128, 64, (8, 12, 12))
    positions = torch.randint(0, 5000, (3, 40), generator=torch.Generator().manual_seed(8))
    cos, sin = RotaryEmbedding(ours)(positions, torch.float32)
    hf_cos, hf_sin = Glm4vTextRotaryEmbedding(config.text_config)(
        torch.zeros(1), positions[:, None]
    )
    # transformers repeats each frequency for its pair, so do we, with the sign of the pair's
    # first feature in sin and the unrotated half of the head as cos 1, sin 0
    torch.testing.assert_close(cos[:, 0, :64], hf_cos[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[:, 0, 1:64:2], hf_sin[0, :, 1::2], atol=1e-6, rtol=0)
    torch.testing.assert_close(-sin[:, 0, :64:2], hf_sin[0, :, ::2], atol=1e-6, rtol=0)
    assert bool((cos[:, 0, 64:] == 1).all()) and bool((sin[:, 0, 64:] == 0).all())


def test_prefill_and_cached_decode_with_3d_positions_match_transformers(
    reference: Glm4vForConditionalGeneration, serving: ServingGlm4
) -> None:
    ids, positions = image_prompt(reference)
    assert not torch.equal(positions[0], positions[1]), "the image must spread over h and w"
    generator = torch.Generator().manual_seed(6)
    # the image's rows stand for the projector's output: any embeddings, the same for both
    embeds = serving.embed(ids).detach()
    image = ids == reference.config.image_token_id
    embeds[image] = torch.randn(int(image.sum()), embeds.shape[1], generator=generator)

    cache = new_cache(serving, 1)
    ours = torch.cat(  # two prefill chunks, split inside the image
        [
            prefill(serving, cache, [(0, a, ids[a:b])], positions[:, a:b], embeds[a:b])
            for a, b in ((0, 9), (9, len(ids)))
        ]
    )
    language_model = reference.model.language_model
    hf_cache = DynamicCache(config=reference.config.text_config)
    with torch.no_grad():
        hidden = language_model(
            inputs_embeds=embeds[None], position_ids=positions[:, None], cache=hf_cache,
            use_cache=True,
        ).last_hidden_state  # fmt: skip
        torch.testing.assert_close(ours, reference.lm_head(hidden)[0], atol=TOLERANCE, rtol=0)

        # decoding continues from max(position) + 1 on every axis (transformers' rope_deltas)
        next_position = int(positions.max()) + 1
        for step in range(6):
            token = torch.randint(3, 100, (1,), generator=generator)
            position = torch.full((3, 1), next_position + step)
            ours = decode(serving, cache, token, [len(ids) + step], position)
            hidden = language_model(
                input_ids=token[None], position_ids=position[:, None], cache=hf_cache,
                use_cache=True,
            ).last_hidden_state  # fmt: skip
            torch.testing.assert_close(ours, reference.lm_head(hidden)[0], atol=TOLERANCE, rtol=0)


def test_1d_positions_give_other_logits(
    reference: Glm4vForConditionalGeneration, serving: ServingGlm4
) -> None:
    """The tiny model is sensitive enough to positions that a 1-D shortcut would be caught."""
    ids, positions = image_prompt(reference)
    three_d = prefill(serving, new_cache(serving, 1), [(0, 0, ids)], positions)
    one_d = prefill(serving, new_cache(serving, 1), [(0, 0, ids)], torch.arange(len(ids)))
    # the text before the image has equal rows: the same logits either way
    torch.testing.assert_close(one_d[:5], three_d[:5], atol=TOLERANCE, rtol=0)
    assert (one_d[5:] - three_d[5:]).abs().max() > 100 * TOLERANCE
