"""Every AUTOGLM_* environment variable, declared in one place.

Config fields take their value from the command line first, then from the variable named here,
then from the dataclass default (see ``services.common.config``). A field ``port`` of a config
whose ``ENV_PREFIX`` is ``"VISION"`` reads ``AUTOGLM_VISION_PORT`` if declared, else
``AUTOGLM_PORT`` if declared. Nothing here reads the environment at import time.
"""

from __future__ import annotations

from collections.abc import Mapping

VARIABLES: dict[str, str] = {
    # Shared by every process.
    "AUTOGLM_BUNDLE": "model bundle directory (default models/default)",
    "AUTOGLM_HOST": "address every server binds (default 127.0.0.1)",
    "AUTOGLM_LOG_LEVEL": "debug, info, warning or error",
    "AUTOGLM_MAX_MESSAGE_MB": "gRPC send/receive message limit in MiB",
    "AUTOGLM_DEVICE": "device of every process whose own *_DEVICE is unset: cpu, cuda:N or auto",
    # Between the gateway and the model services (services/common/auth.py).
    "AUTOGLM_INTERNAL_TOKEN_FILE": "file holding the shared gRPC token (unset: no check)",
    "AUTOGLM_INTERNAL_TLS_CERT": "PEM certificate for internal gRPC TLS",
    "AUTOGLM_INTERNAL_TLS_KEY": "PEM private key of that certificate",
    "AUTOGLM_INTERNAL_TLS_CA": "PEM CA: servers require client certificates it signed (mTLS)",
    "AUTOGLM_ENABLE_REFLECTION": "gRPC server reflection on the model services (default off)",
    # Encoders.
    "AUTOGLM_VISION_PORT": "vision encoder gRPC port (50051)",
    "AUTOGLM_VISION_DEVICE": "vision encoder device: cpu, cuda:N or auto",
    "AUTOGLM_VISION_QUANTIZATION": "vision tower weights: int8 (LLM.int8()) or none",
    "AUTOGLM_VISION_MAX_PIXELS": "GLM-4.1V: images resized to at most this area, in the vision "
    "service and the gateway alike (vLLM's mm_processor_kwargs; 0: the checkpoint's)",
    "AUTOGLM_VISION_MAX_BATCH_PATCHES": "GLM-4.1V: most patches per forward pass of the tower",
    "AUTOGLM_VISION_PROJECT_IN_SERVICE": "GLM-4.1V: run the projector in the vision service",
    "AUTOGLM_VISION_OUTPUT_DTYPE": "vision embeddings on the wire: float16 or float32 (parity)",
    "AUTOGLM_VISION_MAX_WAITING_CALLS": "vision Encode calls queued for the tower (429 past it)",
    "AUTOGLM_AUDIO_PORT": "audio encoder gRPC port (50052)",
    "AUTOGLM_AUDIO_DEVICE": "audio encoder device: cpu, cuda:N or auto",
    "AUTOGLM_AUDIO_QUANTIZATION": "audio tower weights: int8 (LLM.int8()) or none",
    "AUTOGLM_AUDIO_MAX_WAITING_CALLS": "audio Encode calls queued for the tower (429 past it)",
    # Decoder.
    "AUTOGLM_DECODER_PORT": "decoder gRPC port (50053)",
    "AUTOGLM_DECODER_DEVICE": "decoder device: cpu, cuda:N or auto",
    "AUTOGLM_DECODER_QUANT": "decoder weights: gptq, nf4, int8 or none",
    "AUTOGLM_DECODER_MAX_RUNNING_REQUESTS": "requests decoded together in one batch",
    "AUTOGLM_DECODER_MAX_TOTAL_TOKENS": "KV cache capacity in tokens, shared by all requests",
    "AUTOGLM_DECODER_DTYPE": "decoder activation dtype: auto, float32, bfloat16 or float16",
    "AUTOGLM_DECODER_MAX_MODEL_LEN": "longest prompt + completion (0: the model's context length)",
    "AUTOGLM_DECODER_PREFILL_CHUNK_TOKENS": "prompt tokens prefilled per engine step",
    "AUTOGLM_DECODER_MAX_WAITING_REQUESTS": "requests queued for a batch row; more are refused",
    "AUTOGLM_DECODER_HEARTBEAT_S": "seconds of silence after which an open stream gets a heartbeat",
    "AUTOGLM_DECODER_STEP_TIMEOUT_S": "one engine step running this long is a hung engine: "
    "open streams fail, NOT_SERVING",
    "AUTOGLM_DECODER_KV_BLOCK_SIZE": "tokens per KV cache block",
    "AUTOGLM_DECODER_CPU_PREPACK": "on the CPU, reorder FP Linear weights for oneDNN (true/false)",
    "AUTOGLM_DECODER_ENABLE_PREFIX_CACHING": "reuse the KV of prompt prefixes seen before",
    "AUTOGLM_DECODER_CPU_COMPILE": "on AMX, build the fused int4 GEMM at start-up (true/false)",
    "AUTOGLM_DECODER_CUDA_GRAPHS": "on CUDA, decode steps as CUDA graphs per batch bucket",
    # Gateway.
    "AUTOGLM_GATEWAY_PORT": "gateway HTTP port (8000)",
    "AUTOGLM_GATEWAY_DEVICE": "gateway device (FP16 fusion): cpu, cuda:N or auto",
    "AUTOGLM_GATEWAY_API_KEY": "bearer key the gateway requires (empty: no auth)",
    "AUTOGLM_GATEWAY_METRICS_API_KEY": "bearer key GET /metrics requires (empty: open)",
    "AUTOGLM_GATEWAY_VISION_TARGET": "gRPC target of the vision encoder(s), e.g. dns:///vision:50051",
    "AUTOGLM_GATEWAY_AUDIO_TARGET": "gRPC target of the audio encoder(s)",
    "AUTOGLM_GATEWAY_DECODER_TARGET": "gRPC target of the decoder",
    "AUTOGLM_GATEWAY_IMAGE_URL_ALLOWLIST": "hosts image_url may fetch from, comma-separated",
    "AUTOGLM_GATEWAY_REQUEST_TIMEOUT_S": "deadline of one request through encoders and decoder",
    "AUTOGLM_GATEWAY_MAX_IN_FLIGHT_REQUESTS": "completion requests served at once (429 past it)",
    "AUTOGLM_GATEWAY_ENCODE_TIMEOUT_S": "an encoder call unanswered this long fails its "
    "request with 503 (a stalled encoder)",
    "AUTOGLM_GATEWAY_STREAM_IDLE_TIMEOUT_S": "a decoder stream silent this long (no heartbeat) "
    "is ended with an error (a stalled service)",
    "AUTOGLM_GATEWAY_MAX_BODY_MB": "largest request body the gateway accepts (413 above)",
    "AUTOGLM_GATEWAY_KEEP_REASONING_INLINE": "keep <think>...</think> in content by default",
    "AUTOGLM_GATEWAY_EMBEDDING_CACHE_MB": "encoder outputs cached by content hash (0: off)",
    "AUTOGLM_GATEWAY_FUSION_DTYPE": "fusion stage dtype: float16 (default) or float32 (parity)",
    # `autoglm up` (the launcher) also reads the per-service variables above.
    "AUTOGLM_UP_STARTUP_TIMEOUT_S": "seconds `autoglm up` waits for the stack to be ready (600)",
}


def lookup(prefix: str, field: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The declared variable for a config field and its value, if it is set."""
    for name in (f"AUTOGLM_{prefix}_{field.upper()}", f"AUTOGLM_{field.upper()}"):
        if name in VARIABLES and name in environ:
            return name, environ[name]
    return None


def declared_name(prefix: str, field: str) -> str | None:
    """The variable that would configure this field, for --help texts."""
    for name in (f"AUTOGLM_{prefix}_{field.upper()}", f"AUTOGLM_{field.upper()}"):
        if name in VARIABLES:
            return name
    return None
