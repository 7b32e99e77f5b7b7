"""The serving rotary embedding (one rotation of q and k together, cos/sin spread over the head)
against transformers' GLM-4 reference: the same bf16 results, bit for bit."""

from __future__ import annotations

import torch
from transformers import Glm4Config
from transformers.models.glm4.modeling_glm4 import Glm4RotaryEmbedding, apply_rotary_pos_emb

from services.decoder.rope import RotaryEmbedding, apply_rotary
from services.decoder.text_config import TextModelConfig


def test_rotating_q_and_k_together_equals_transformers_bit_for_bit() -> None:
    config = Glm4Config(  # GLM-4 rotates half of each head (partial_rotary_factor 0.5)
        hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        max_position_embeddings=4096,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(3)
    positions = torch.randint(0, 4000, (9,), generator=generator)
    q = torch.randn(9, 4, 64, generator=generator).bfloat16()
    k = torch.randn(9, 2, 64, generator=generator).bfloat16()

    cos, sin = RotaryEmbedding(TextModelConfig.from_hf(config))(positions, torch.bfloat16)
    rotated = apply_rotary(torch.cat((q, k), dim=1), cos, sin)

    hf_cos, hf_sin = Glm4RotaryEmbedding(config)(q, positions[None])
    # transformers' layout: [batch, heads, tokens, head_dim]
    hf_q, hf_k = apply_rotary_pos_emb(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], hf_cos, hf_sin
    )
    assert torch.equal(rotated[:, :4], hf_q[0].transpose(0, 1))
    assert torch.equal(rotated[:, 4:], hf_k[0].transpose(0, 1))
    assert torch.equal(rotated[..., 32:], torch.cat((q, k), dim=1)[..., 32:])  # not rotated


def test_rotating_in_place_equals_rotating_into_a_new_tensor() -> None:
    config = Glm4Config(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    generator = torch.Generator().manual_seed(5)
    positions = torch.randint(0, 4000, (7,), generator=generator)
    qkv = torch.randn(7, 8, 64, generator=generator).bfloat16()  # [q | k | v], as attention has
    cos, sin = RotaryEmbedding(TextModelConfig.from_hf(config))(positions, torch.bfloat16)
    expected = apply_rotary(qkv[:, :6], cos, sin)
    v = qkv[:, 6:].clone()
    apply_rotary(qkv[:, :6], cos, sin, out=qkv[:, :6])
    assert torch.equal(qkv[:, :6], expected)
    assert torch.equal(qkv[:, 6:], v)
