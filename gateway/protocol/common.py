"""What every OpenAI request shares: the bounds, the ``Request`` base (unknown fields ignored),
the bounded text, name and token-id types, and ``GenerationParams`` (model, sampling, stopping,
streaming; chat and text completions alike), which makes the decoder's ``SamplingParams`` and
``StoppingParams``."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.decoder.params import MAX_LOGIT_BIAS, SamplingParams, StoppingParams

MAX_PARTS = 256
MAX_TEXT_CHARS = 1_000_000
MAX_STOP = 16
MAX_STOP_CHARS = 256
MAX_TOKENS = 1 << 20
MAX_N = 8
MAX_LOGIT_BIAS_TOKENS = 1024
MAX_NAME_CHARS = 256
INT32_MAX = (1 << 31) - 1  # top_k and token ids travel as protobuf int32


class Request(BaseModel):
    """Unknown fields are accepted and ignored, as OpenAI and vLLM do; known fields the server
    does not honour are refused by name (``gateway.unhonoured``)."""

    model_config = ConfigDict(extra="ignore")


Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]


class StreamOptions(Request):
    include_usage: bool = False


class GenerationParams(Request):
    """What chat and text completions share: model, sampling, stopping, streaming."""

    model: Name
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(
        None, ge=-1, le=INT32_MAX, description="vLLM extension; 0 or -1 disables it"
    )
    seed: int | None = Field(None, ge=-(1 << 63), lt=1 << 64)
    stop: (
        Annotated[str, Field(max_length=MAX_STOP_CHARS)]
        | Annotated[
            list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOP)
        ]
        | None
    ) = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP)] | None = None
    ignore_eos: bool = False
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: (
        Annotated[
            dict[str, Annotated[float, Field(ge=-MAX_LOGIT_BIAS, le=MAX_LOGIT_BIAS)]],
            Field(max_length=MAX_LOGIT_BIAS_TOKENS),
        ]
        | None
    ) = Field(None, description="token id (as a string) -> bias added to its logit")
    min_p: float = Field(0.0, ge=0, le=1, description="vLLM extension; 0 disables it")
    repetition_penalty: float = Field(
        1.0, gt=0, le=2, description="vLLM extension (its semantics); 1 disables it"
    )
    n: int = Field(1, ge=1, le=MAX_N)
    user: Name | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key in bias or {}:
            if not key.isdigit() or int(key) > INT32_MAX:
                raise ValueError(f"keys must be token ids, got {key[:20]!r}")
        return bias

    @property
    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def wants_logprobs(self) -> tuple[bool, int]:
        return False, 0

    def to_sampling_params(self, choice: int = 0) -> SamplingParams:
        """Choice i of n gets seed + i, so the n choices differ yet stay reproducible."""
        logprobs, top = self.wants_logprobs()
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(self.top_k or 0, 0),
            seed=None if self.seed is None else (self.seed + choice) % (1 << 64),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logprobs=logprobs,
            top_logprobs=top,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            logit_bias=tuple((int(t), b) for t, b in (self.logit_bias or {}).items()),
        )

    def to_stopping_params(self, default_max_tokens: int) -> StoppingParams:
        return StoppingParams(
            max_tokens=self.requested_max_tokens() or default_max_tokens,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
        )
