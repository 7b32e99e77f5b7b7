"""Settings of the decoder service. Imports nothing heavy: the CLI builds its flags from it."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from services.common.config import ServiceConfig

QUANT_CHOICES = ("gptq", "nf4", "int8", "none")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class DecoderConfig(ServiceConfig):
    ENV_PREFIX: ClassVar[str] = "DECODER"

    port: int = 50053
    quant: str = dataclasses.field(
        default="gptq", metadata={"help": "decoder weights: gptq, nf4, int8 or none"}
    )
    dtype: str = dataclasses.field(
        default="auto",
        metadata={"help": "activation dtype: auto (bfloat16 on CUDA; on CPU float32, or bfloat16 "
                  "with quantized weights), float32, bfloat16 or float16"},
    )  # fmt: skip
    max_running_requests: int = dataclasses.field(
        default=16, metadata={"help": "requests decoded together in one batch"}
    )
    max_total_tokens: int = dataclasses.field(
        default=16384, metadata={"help": "KV cache capacity in tokens, shared by all requests"}
    )
    max_model_len: int = dataclasses.field(
        default=0,
        metadata={"help": "longest prompt + completion; 0 = the model's context length, "
                  "capped at max_total_tokens"},
    )  # fmt: skip
    prefill_chunk_tokens: int = dataclasses.field(
        default=512, metadata={"help": "prompt tokens prefilled per engine step (chunked prefill)"}
    )
    kv_block_size: int = dataclasses.field(
        default=16, metadata={"help": "tokens per KV cache block"}
    )
    cpu_prepack: bool = dataclasses.field(
        default=True,
        metadata={"help": "on the CPU, reorder the FP Linear weights once for oneDNN "
                  "(1.2-3.7x faster GEMMs than plain torch)"},
    )  # fmt: skip
    enable_prefix_caching: bool = dataclasses.field(
        default=True,
        metadata={"help": "reuse the KV cache blocks of a prompt prefix seen before "
                  "(automatic prefix caching)"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quant not in QUANT_CHOICES:
            raise ValueError(f"quant must be one of {QUANT_CHOICES}, got {self.quant!r}")
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
