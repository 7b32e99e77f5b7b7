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
    # Encoders.
    "AUTOGLM_VISION_PORT": "vision encoder gRPC port (50051)",
    "AUTOGLM_VISION_DEVICE": "vision encoder device: cpu, cuda:N or auto",
    "AUTOGLM_VISION_QUANTIZATION": "vision tower weights: int8 (LLM.int8()) or none",
    "AUTOGLM_AUDIO_PORT": "audio encoder gRPC port (50052)",
    "AUTOGLM_AUDIO_DEVICE": "audio encoder device: cpu, cuda:N or auto",
    "AUTOGLM_AUDIO_QUANTIZATION": "audio tower weights: int8 (LLM.int8()) or none",
    # Decoder.
    "AUTOGLM_DECODER_PORT": "decoder gRPC port (50053)",
    "AUTOGLM_DECODER_DEVICE": "decoder device: cpu, cuda:N or auto",
    "AUTOGLM_DECODER_QUANT": "decoder weights: gptq, nf4, int8 or none",
    "AUTOGLM_DECODER_MAX_RUNNING_REQUESTS": "requests decoded together in one batch",
    "AUTOGLM_DECODER_MAX_TOTAL_TOKENS": "KV cache capacity in tokens, shared by all requests",
    # Gateway.
    "AUTOGLM_GATEWAY_PORT": "gateway HTTP port (8000)",
    "AUTOGLM_GATEWAY_API_KEY": "bearer key the gateway requires (empty: no auth)",
    "AUTOGLM_GATEWAY_VISION_TARGET": "gRPC target of the vision encoder(s), e.g. dns:///vision:50051",
    "AUTOGLM_GATEWAY_AUDIO_TARGET": "gRPC target of the audio encoder(s)",
    "AUTOGLM_GATEWAY_DECODER_TARGET": "gRPC target of the decoder",
    "AUTOGLM_GATEWAY_IMAGE_URL_ALLOWLIST": "hosts image_url may fetch from, comma-separated",
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
