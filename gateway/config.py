"""The gateway's settings. Light on purpose: the CLI imports it to build `autoglm serve gateway`
flags, so nothing heavy (no torch, no fastapi) may be imported here."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from services.common.config import ServiceConfig, limit, setting

MIB = 1024 * 1024
FUSION_DTYPES = ("float16", "float32")


@dataclasses.dataclass(frozen=True)
class GatewayConfig(ServiceConfig):
    ENV_PREFIX: ClassVar[str] = "GATEWAY"

    port: int = 8000
    # gRPC targets: "host:port", or "dns:///name:port" to balance over every address (round_robin).
    vision_target: str = setting("127.0.0.1:50051", "gRPC target of the vision encoder(s)")
    audio_target: str = setting("127.0.0.1:50052", "gRPC target of the audio encoder(s)")
    decoder_target: str = setting("127.0.0.1:50053", "gRPC target of the decoder")
    api_key: str = setting("", "bearer key clients must send; empty: no authentication")
    metrics_api_key: str = setting(
        "", "bearer key GET /metrics requires (a scraper's own); empty: /metrics is open"
    )
    request_timeout_s: float = limit(
        600.0, "deadline of one request, encoders and decoder together"
    )
    max_in_flight_requests: int = limit(
        256, "completion requests served at once; past it 429 with Retry-After (TGI's way)"
    )
    stream_idle_timeout_s: float = limit(
        30.0,
        "a decoder stream that sends nothing, not even its heartbeat, for this long is ended with "
        "an error event (a stalled service); keep it above the decoder's --heartbeat-s",
    )
    encode_timeout_s: float = limit(
        120.0,
        "an encoder call unanswered this long is a stalled encoder: the request fails with 503 "
        "(a phone screenshot takes ~30 s to encode on a CPU)",
    )
    default_max_tokens: int = limit(1024, "completion length when a request sets no max_tokens")
    max_body_mb: int = limit(64, "largest request body")
    max_messages: int = limit(256, "most messages in one chat request")
    max_text_chars: int = limit(
        400_000, "most characters of text in one request (every message, or the prompt)"
    )
    max_tool_bytes: int = limit(
        256 * 1024, "largest JSON of a request's tools and tool-call arguments together"
    )
    max_images_per_request: int = limit(16, "most images in one request", zero_ok=True)
    max_audios_per_request: int = limit(4, "most audio clips in one request", zero_ok=True)
    max_image_mb: int = limit(20, "largest image file")
    max_image_pixels: int = limit(40_000_000, "largest image width*height, read from its header")
    # Read as AUTOGLM_VISION_MAX_PIXELS, the vision service's variable: both must resize alike.
    vision_max_pixels: int = limit(
        0,
        "GLM-4.1V images resized to at most this area (0: the checkpoint's preprocessor)",
        zero_ok=True,
    )
    max_audio_mb: int = limit(25, "largest audio file")
    max_audio_seconds: float = limit(600.0, "longest audio clip, read from its header")
    max_request_image_pixels: int = limit(
        64_000_000, "most image pixels (width*height, from headers) in one request"
    )
    max_request_audio_seconds: float = limit(
        1200.0, "most seconds of audio (from headers) in one request"
    )
    max_request_audio_samples: int = limit(
        64_000_000,
        "most samples a request's clips decode to (channels x rate x duration, from headers)",
    )
    image_url_allowlist: tuple[str, ...] = setting(
        (), "hosts http(s) image_url may be fetched from (empty: none)"
    )
    image_fetch_timeout_s: float = limit(10.0, "time limit for fetching one allowlisted image URL")
    keep_reasoning_inline: bool = setting(
        False, "keep <think>...</think> inline in content unless a request says otherwise"
    )
    embedding_cache_mb: int = limit(
        256, "encoder outputs kept by content hash (0: no cache)", zero_ok=True
    )
    fusion_dtype: str = setting(
        "float16", "fusion stage dtype: float16, or float32 for parity checks"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("vision_target", "audio_target", "decoder_target"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        if self.fusion_dtype not in FUSION_DTYPES:
            raise ValueError(
                f"fusion_dtype must be one of {FUSION_DTYPES}, got {self.fusion_dtype!r}"
            )

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_mb * MIB

    @property
    def max_image_bytes(self) -> int:
        return self.max_image_mb * MIB

    @property
    def max_audio_bytes(self) -> int:
        return self.max_audio_mb * MIB

    @property
    def embedding_cache_bytes(self) -> int:
        return self.embedding_cache_mb * MIB
