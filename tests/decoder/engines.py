"""Building engines over a model, and driving them, for the engine tests."""

from __future__ import annotations

import torch

from services.decoder.constraints import ConstraintCompiler
from services.decoder.engine import Engine, EngineLimits
from services.decoder.kv_cache import KVCache
from services.decoder.model import Glm4ForCausalLM
from services.decoder.params import SamplingParams, StoppingParams
from services.decoder.types import GenerateOutput, GenerateRequest

EOS = (1, 2)


def make_engine(
    model: Glm4ForCausalLM,
    *,
    max_running: int = 16,
    total_tokens: int = 4096,
    max_model_len: int = 256,
    chunk: int = 64,
    max_waiting: int = 256,
    block_size: int = 8,
    eos: tuple[int, ...] = EOS,
    prefix_caching: bool = True,  # the service's default
    constraints: ConstraintCompiler | None = None,
) -> Engine:
    config = model.config
    cache = KVCache(
        num_layers=config.num_hidden_layers, num_kv_heads=config.num_key_value_heads,
        head_dim=config.head_dim, num_blocks=total_tokens // block_size, block_size=block_size,
        dtype=model.dtype, device=model.device, prefix_caching=prefix_caching,
    )  # fmt: skip
    limits = EngineLimits(max_running, max_model_len, chunk, max_waiting)
    return Engine(model, cache, limits, eos_token_ids=eos, constraints=constraints)


def request(
    rid: str,
    prompt_len: int,
    max_tokens: int = 8,
    seed: int = 0,
    sampling: SamplingParams | None = None,
    **stopping,
) -> GenerateRequest:
    """Random prompt ids fixed by ``seed``; EOS ignored unless the stopping fields say so."""
    ids = torch.randint(3, 128, (prompt_len,), generator=torch.Generator().manual_seed(seed))
    return GenerateRequest(
        rid,
        tuple(ids.tolist()),
        sampling=sampling or SamplingParams(),
        stopping=StoppingParams(max_tokens, ignore_eos=True, **stopping),
    )


def run_all(engine: Engine) -> dict[str, list[GenerateOutput]]:
    outputs: dict[str, list[GenerateOutput]] = {}
    for _ in range(10_000):
        if not engine.has_work():
            return outputs
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    raise AssertionError("the engine never finished")


def tokens(outputs: list[GenerateOutput]) -> list[int]:
    return [t for out in outputs for t in out.token_ids]
