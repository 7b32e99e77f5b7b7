"""Start-up: the decoder's weights, quantization, KV cache and engine, built from the config."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from bundle.layout import Bundle
from services.common.device import resolve_device
from services.decoder.config import DecoderConfig
from services.decoder.constraints import ConstraintCompiler
from services.decoder.engine import Engine, EngineLimits
from services.decoder.gptq_linear import use_fused_gemm, warm_up_unpacking
from services.decoder.kv_cache import KVCache
from services.decoder.model import Glm4ForCausalLM
from services.decoder.onednn import prepack_linears
from services.decoder.types import DecoderInfo

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class LoadedDecoder:
    engine: Engine
    model_name: str
    quantization: str

    def info(self) -> DecoderInfo:
        engine = self.engine
        stats = engine.stats()
        return DecoderInfo(
            model=self.model_name,
            device=str(engine.device),
            dtype=str(engine.model.dtype).removeprefix("torch."),
            quantization=self.quantization,
            vocab_size=engine.vocab_size,
            hidden_size=engine.hidden_size,
            max_model_len=engine.limits.max_model_len,
            max_running_requests=engine.limits.max_running_requests,
            total_cache_tokens=stats.total_cache_tokens,
            free_cache_tokens=stats.free_cache_tokens,
            running_requests=stats.running,
            waiting_requests=stats.waiting,
            eos_token_ids=tuple(sorted(engine.eos_token_ids)),
            prefix_caching=engine.cache.blocks.prefix_caching,
            cached_prefix_tokens=engine.cache.blocks.cached_blocks * engine.cache.block_size,
            preemptions=stats.preemptions,
        )


def resolve_dtype(name: str, device: torch.device, quantization: str = "none") -> torch.dtype:
    """auto: bfloat16 on a GPU that has it, else float16. On the CPU, float32 for FP weights
    (exact parity with transformers) but bfloat16 around quantized ones: the int4 and
    bitsandbytes kernels compute in 16 bits anyway, and the fp32 remainder would double the
    weight memory and the decode time (bench/quant.py)."""
    if name != "auto":
        return DTYPES[name]
    if device.type != "cuda":
        return torch.float32 if quantization == "none" else torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def eos_token_ids(folder: Path) -> tuple[int, ...]:
    """From generation_config.json, else config.json; an int or a list in either."""
    for name in ("generation_config.json", "config.json"):
        file = folder / name
        if file.is_file():
            value = json.loads(file.read_text()).get("eos_token_id")
            if value is not None:
                return tuple(value) if isinstance(value, list) else (int(value),)
    return ()


def load_constraints(
    folder: Path, vocab_size: int, eos: tuple[int, ...]
) -> ConstraintCompiler | None:
    """Constraints compile against the tokenizer beside the weights; without one (or without
    an EOS to end a grammar with) constrained requests are refused."""
    tokenizer = folder / "tokenizer.json"
    if not tokenizer.is_file() or not eos:
        log.warning("no tokenizer.json or EOS in %s: constrained decoding is off", folder)
        return None
    return ConstraintCompiler(tokenizer.read_text(), vocab_size, eos[0])


def load_decoder(config: DecoderConfig) -> LoadedDecoder:
    from services.decoder.quant import apply_quantization

    bundle = Bundle.load(config.bundle)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device, config.quantization)
    model = Glm4ForCausalLM.from_pretrained(bundle.decoder, dtype, device)
    label = apply_quantization(model, config.quantization, bundle, device)
    if device.type == "cpu":
        if config.cpu_prepack:
            log.info("%d Linear layers repacked for oneDNN", prepack_linears(model))
        if config.cpu_compile:
            log.info("%d GPTQ layers run the fused int4 GEMM for batches", use_fused_gemm(model))
        warm_up_unpacking(model, config.prefill_chunk_tokens + config.max_running_requests)
    model_config = model.config
    max_model_len = config.max_model_len or min(
        int(model_config.max_position_embeddings), config.max_total_tokens
    )
    cache = KVCache(
        num_layers=model_config.num_hidden_layers,
        num_kv_heads=model_config.num_key_value_heads,
        head_dim=model_config.head_dim,
        num_blocks=config.max_total_tokens // config.kv_block_size,
        block_size=config.kv_block_size,
        dtype=dtype,
        device=device,
        prefix_caching=config.enable_prefix_caching,
    )
    limits = EngineLimits(
        config.max_running_requests, max_model_len, config.prefill_chunk_tokens,
        config.max_waiting_requests,
    )  # fmt: skip
    eos = eos_token_ids(bundle.decoder)
    constraints = load_constraints(bundle.decoder, int(model_config.vocab_size), eos)
    engine = Engine(model, cache, limits, eos, constraints)
    if config.cuda_graphs and device.type == "cuda":
        engine.runner.use_cuda_graphs()
    log.info(
        "decoder on %s (%s, %s): %d cache tokens, max_model_len %d",
        device, dtype, label, cache.total_tokens, max_model_len,
    )  # fmt: skip
    return LoadedDecoder(engine=engine, model_name=bundle.served_model_name, quantization=label)
