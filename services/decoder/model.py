"""The GLM-4 decoder written for serving: Hugging Face's ``Glm4ForCausalLM``, and the text model
of ``Glm4vForConditionalGeneration`` (GLM-4.1V, AutoGLM-Phone-9B), which is the same stack with
3-D mRoPE (``rope.py``; shapes and names from ``text_config.py``).

Same maths and parameter names as transformers' implementation (our ``model.*`` is GLM-4.1V's
``model.language_model.*``), so checkpoints load as they are and quantized Linear layers can
replace ``model.layers.N.self_attn.o_proj`` and friends by name; q, k and v are joined at load
into one ``qkv_proj`` (one GEMM instead of three), as GLM's gate and up already are.
What differs is the calling convention: one forward takes the new tokens of every scheduled
request packed into one sequence (``[tokens]`` ids, positions ``[tokens]`` or ``[3, tokens]``
for mRoPE), writes their K/V into the paged cache and attends over each request's own cached
tokens (``kv_cache.ForwardBatch``, ``attention.py``).

GLM-4 specifics: rotary embedding on the first half of each head only (``partial_rotary_factor``)
with interleaved pairs, grouped-query attention with biased q/k/v, a fused gate/up SwiGLU, and
extra RMSNorms after attention and after the MLP (GLM-4.1V's text layers have them too).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from bundle.checkpoint import read_tensors
from services.decoder.attention import Glm4Attention
from services.decoder.kv_cache import ForwardBatch, KVCache
from services.decoder.rope import Rope, RotaryEmbedding
from services.decoder.text_config import TextModelConfig


def read_text_weights(folder: Path | str, config: TextModelConfig) -> dict[str, torch.Tensor]:
    """The text model's tensors of a checkpoint folder, read in place and named as in this
    module (``model.*``, ``lm_head.*``): a GLM-4.1V checkpoint's ``model.language_model.*``
    become ``model.*``, and its vision tower's tensors are never read."""
    tensors = {f"model.{k}": v for k, v in read_tensors(folder, config.weight_prefix).items()}
    if config.tie_word_embeddings:
        tensors.setdefault("lm_head.weight", tensors["model.embed_tokens.weight"])
    else:
        tensors.update({f"lm_head.{k}": v for k, v in read_tensors(folder, "lm_head.").items()})
    return tensors


QKV = ("q_proj", "k_proj", "v_proj")


def join_qkv(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's separate q, k and v projections (weights and biases) joined along the
    outputs into the model's one ``self_attn.qkv_proj``; quantized ones are left to quant.py."""
    for name in [n for n in tensors if n.endswith("self_attn.q_proj.weight")]:
        base = name.removesuffix("q_proj.weight")
        for part in ("weight", "bias"):
            keys = [f"{base}{proj}.{part}" for proj in QKV]
            if all(key in tensors for key in keys):
                tensors[f"{base}qkv_proj.{part}"] = torch.cat([tensors.pop(key) for key in keys])
    return tensors


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's rms_norm keeps fp32 statistics for 16-bit inputs and rounds the normalized x
        # to x's dtype before the weight is applied, bit for bit transformers' x.float() ... .to()
        weight: torch.Tensor = self.weight
        return weight * F.rms_norm(x, (x.shape[-1],), eps=self.eps)


class Glm4MLP(nn.Module):
    def __init__(self, config: TextModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * self.act(gate))


class Glm4DecoderLayer(nn.Module):
    def __init__(self, config: TextModelConfig, layer_idx: int) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.self_attn = Glm4Attention(config, layer_idx)
        self.mlp = Glm4MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps)
        self.post_self_attn_layernorm = RMSNorm(config.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps)
        self.post_mlp_layernorm = RMSNorm(config.hidden_size, eps)

    def forward(
        self, x: torch.Tensor, rope: Rope, batch: ForwardBatch, cache: KVCache
    ) -> torch.Tensor:
        attn = self.self_attn(self.input_layernorm(x), rope, batch, cache)
        x = x + self.post_self_attn_layernorm(attn)
        mlp = self.mlp(self.post_attention_layernorm(x))
        return x + self.post_mlp_layernorm(mlp)


class Glm4Model(nn.Module):
    def __init__(self, config: TextModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            Glm4DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.query_group = config.num_attention_heads // config.num_key_value_heads

    def forward(
        self, embeds: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch, cache: KVCache
    ) -> torch.Tensor:
        rope = self.rotary_emb(positions, embeds.dtype)  # both made once for all layers
        batch = batch.for_attention(embeds.dtype, self.query_group, cache.scratch_slot)
        x = embeds
        for layer in self.layers:
            x = layer(x, rope, batch, cache)
        return self.norm(x)


class Glm4ForCausalLM(nn.Module):
    def __init__(self, config: TextModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Glm4Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    # From the embeddings: the lm_head may be quantized (GPTQLinear has no ``weight``).
    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        batch: ForwardBatch,
        cache: KVCache,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states [tokens, hidden] of the packed tokens. positions: [tokens], or
        [3, tokens] (t, h, w) on an mRoPE model; ``inputs_embeds`` (e.g. with multimodal
        embeddings spliced in) replaces the embedding lookup of input_ids."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.embed(input_ids)
        return self.model(inputs_embeds, positions, batch, cache)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    @classmethod
    def from_pretrained(
        cls, path: Path | str, dtype: torch.dtype, device: torch.device
    ) -> Glm4ForCausalLM:
        """Load the text model of a Hugging Face checkpoint folder in place: a Glm4ForCausalLM,
        or the language model of a Glm4vForConditionalGeneration (its vision tower's weights
        are never read)."""
        config = TextModelConfig.from_pretrained(path)
        tensors = join_qkv(read_text_weights(path, config))
        # one tensor at a time: the checkpoint's copy is freed as the converted one is made
        state = {
            name: tensors.pop(name).to(device=device, dtype=dtype)
            for name in sorted(tensors)
            if "rotary_emb" not in name
        }
        with torch.device("meta"):  # no random init of weights that are overwritten anyway
            model = cls(config)
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(device).eval()
