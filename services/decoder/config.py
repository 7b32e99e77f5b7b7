"""Settings of the decoder service. Imports nothing heavy: the CLI builds its flags from it."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from services.common.config import ServiceConfig, limit, setting

QUANT_CHOICES = ("gptq", "nf4", "int8", "none")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class DecoderConfig(ServiceConfig):
    ENV_PREFIX: ClassVar[str] = "DECODER"

    port: int = 50053
    # users set it as --quant / AUTOGLM_DECODER_QUANT
    quantization: str = setting("gptq", "decoder weights: gptq, nf4, int8 or none", name="quant")
    dtype: str = setting(
        "auto",
        "activation dtype: auto (bfloat16 on CUDA; on CPU float32, or bfloat16 with quantized "
        "weights), float32, bfloat16 or float16",
    )
    max_running_requests: int = setting(16, "requests decoded together in one batch")
    max_total_tokens: int = setting(16384, "KV cache capacity in tokens, shared by all requests")
    max_model_len: int = setting(
        0, "longest prompt + completion; 0 = the model's context length, capped at max_total_tokens"
    )
    prefill_chunk_tokens: int = setting(
        512, "prompt tokens prefilled per engine step (chunked prefill)"
    )
    kv_block_size: int = setting(16, "tokens per KV cache block")
    cpu_prepack: bool = setting(
        True,
        "on the CPU, reorder the FP Linear weights once for oneDNN (1.2-3.7x faster GEMMs "
        "than plain torch)",
    )
    cpu_compile: bool = setting(
        True,
        "on an AMX CPU, run 4-bit GPTQ layers' calls of 12 rows or more (prefill, decode "
        "batches) on a fused int4 GEMM built from C++ at start-up (~15 s the first time, then "
        "cached on disk; 1.8-5x the int4 kernel at 16-272 rows); without it, or without a "
        "C++ compiler, they unpack the weights to bf16 from 192 rows",
    )
    cuda_graphs: bool = setting(
        False,
        "on a CUDA device, run decode steps as CUDA graphs captured per batch-size and KV-length "
        "bucket (fewer launches per step; captured on first use, memory per bucket)",
    )
    max_waiting_requests: int = setting(
        256,
        "requests queued for a batch row; beyond, new ones are refused (RESOURCE_EXHAUSTED, "
        "HTTP 429) until the queue drains",
    )
    heartbeat_s: float = limit(
        5.0,
        "a heartbeat on every open stream that produced nothing for this long (queued, "
        "preempted, long prefill), so callers can tell quiet from stalled",
    )
    step_timeout_s: float = limit(
        120.0,
        "an engine step (one batch's forward, a prefill chunk included) running longer than "
        "this is a hung engine: every open stream fails and the service turns NOT_SERVING",
    )
    enable_prefix_caching: bool = setting(
        True, "reuse the KV cache blocks of a prompt prefix seen before (automatic prefix caching)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quantization not in QUANT_CHOICES:
            raise ValueError(
                f"quantization (--quant) must be one of {QUANT_CHOICES}, got {self.quantization!r}"
            )
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {self.dtype!r}")
        if self.max_running_requests < 1:
            raise ValueError("max_running_requests must be at least 1")
        if self.kv_block_size < 1:
            raise ValueError("kv_block_size must be at least 1")
        if self.max_total_tokens < self.kv_block_size:
            raise ValueError("max_total_tokens must hold at least one KV block")
        if self.max_model_len < 0:
            raise ValueError("max_model_len must be >= 0 (0 = the model's context length)")
        if self.max_model_len > self.max_total_tokens:
            raise ValueError(
                f"max_model_len {self.max_model_len} exceeds the KV cache "
                f"(max_total_tokens {self.max_total_tokens})"
            )
        if self.prefill_chunk_tokens < 1:
            raise ValueError("prefill_chunk_tokens must be at least 1")
        if self.max_waiting_requests < 1:
            raise ValueError("max_waiting_requests must be at least 1")
