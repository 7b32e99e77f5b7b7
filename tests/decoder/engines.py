"""Building engines over a model for the scheduler tests."""

from __future__ import annotations

from services.decoder.engine import Engine, EngineLimits
from services.decoder.kv_cache import KVCache
from services.decoder.model import Glm4ForCausalLM

EOS = (1, 2)


def make_engine(
    model: Glm4ForCausalLM,
    *,
    max_running: int = 16,
    total_tokens: int = 4096,
    max_model_len: int = 256,
    chunk: int = 64,
    block_size: int = 8,
    eos: tuple[int, ...] = EOS,
    prefix_caching: bool = True,  # the service's default
) -> Engine:
    config = model.config
    cache = KVCache(
        num_layers=config.num_hidden_layers, num_kv_heads=config.num_key_value_heads,
        head_dim=config.head_dim, num_blocks=total_tokens // block_size, block_size=block_size,
        dtype=model.dtype, device=model.device, prefix_caching=prefix_caching,
    )  # fmt: skip
    limits = EngineLimits(max_running, max_model_len, chunk)
    return Engine(model, cache, limits, eos_token_ids=eos)
