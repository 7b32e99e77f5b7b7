"""The text decoder's shape and rotary settings, read from a checkpoint through transformers'
own config classes, for the two layouts the decoder serves:

- ``Glm4ForCausalLM`` (the default bundle's decoder): weights ``model.*`` and ``lm_head.*``,
  1-D positions.
- ``Glm4vForConditionalGeneration`` (GLM-4.1V, AutoGLM-Phone-9B): the text model is
  ``text_config``, its weights ``model.language_model.*`` and ``lm_head.*`` in the same folder
  as the vision tower's, and its rotary embedding is 3-D mRoPE (``rope_parameters.mrope_section``:
  how many rotary frequencies follow the t, h and w position rows).

Both are the same GLM-4 decoder stack; only the names, the head size rule and the positions
differ, so the serving model takes this one dataclass.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from transformers import AutoConfig, Glm4Config, Glm4vConfig, PretrainedConfig

SUPPORTED = ("Glm4ForCausalLM", "Glm4vForConditionalGeneration")


@dataclasses.dataclass(frozen=True)
class TextModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    hidden_act: str
    rms_norm_eps: float
    attention_bias: bool
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope_theta: float
    rotary_dim: int  # leading features of each head that rotate (partial_rotary_factor)
    mrope_section: tuple[int, ...] = ()  # rotary frequencies per position row; () = 1-D
    weight_prefix: str = "model."  # checkpoint names of the decoder stack (embeddings ... norm)

    def __post_init__(self) -> None:
        if self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
            raise ValueError(f"rotary_dim {self.rotary_dim} does not fit head_dim {self.head_dim}")
        if self.mrope_section and sum(self.mrope_section) != self.rotary_dim // 2:
            raise ValueError(
                f"mrope_section {list(self.mrope_section)} must sum to rotary_dim / 2 = "
                f"{self.rotary_dim // 2}"
            )

    @property
    def position_axes(self) -> int:
        """Rows of position ids per token: 3 (t, h, w) for mRoPE, else 1."""
        return len(self.mrope_section) or 1

    @classmethod
    def from_hf(cls, config: PretrainedConfig) -> TextModelConfig:
        """From a Glm4Config, or a Glm4vConfig (its text_config)."""
        text: Any  # a Glm4Config or Glm4vTextConfig: transformers types the sub-config loosely
        if isinstance(config, Glm4vConfig):
            text, prefix = config.text_config, "model.language_model."
            # Glm4vTextAttention: head size is hidden / heads, q/k/v always biased
            head_dim, bias = text.hidden_size // text.num_attention_heads, True
            # transformers' Glm4vTextRotaryEmbedding falls back to [8, 12, 12] likewise
            section = tuple((text.rope_parameters or {}).get("mrope_section", (8, 12, 12)))
        elif isinstance(config, Glm4Config):
            text, prefix = config, "model."
            head_dim, bias, section = config.head_dim, bool(config.attention_bias), ()
        else:
            raise ValueError(
                f"unsupported decoder architecture {type(config).__name__}; "
                f"the decoder serves {', '.join(SUPPORTED)}"
            )
        rope = dict(text.rope_parameters or {})
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"unsupported rope_type {rope['rope_type']!r} (only 'default')")
        factor = float(rope.get("partial_rotary_factor", 1.0))
        return cls(
            vocab_size=int(text.vocab_size),
            hidden_size=int(text.hidden_size),
            intermediate_size=int(text.intermediate_size),
            num_hidden_layers=int(text.num_hidden_layers),
            num_attention_heads=int(text.num_attention_heads),
            num_key_value_heads=int(text.num_key_value_heads),
            head_dim=int(head_dim),
            hidden_act=str(text.hidden_act),
            rms_norm_eps=float(text.rms_norm_eps),
            attention_bias=bias,
            max_position_embeddings=int(text.max_position_embeddings),
            tie_word_embeddings=bool(config.tie_word_embeddings),
            rope_theta=float(rope.get("rope_theta", 10000.0)),
            rotary_dim=int(head_dim * factor),
            mrope_section=tuple(int(s) for s in section),
            weight_prefix=prefix,
        )

    @classmethod
    def from_pretrained(cls, folder: Path | str) -> TextModelConfig:
        return cls.from_hf(AutoConfig.from_pretrained(folder))
