"""A request's sampling and stopping settings: checked on construction, with their protobuf
conversions. Pure Python (the scheduler and the gateway's OpenAI types use them)."""

from __future__ import annotations

import dataclasses

from autoglm.v1 import decoder_pb2
from services.common.errors import InvalidInput

MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0  # |bias| is clamped to this, as OpenAI and vLLM do


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    min_p: float = 0.0  # 0 = disabled
    repetition_penalty: float = 1.0  # 1 = disabled
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), ids in increasing order

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise InvalidInput("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise InvalidInput("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise InvalidInput("top_k must be >= 0")
        if not -2 <= self.presence_penalty <= 2 or not -2 <= self.frequency_penalty <= 2:
            raise InvalidInput("presence and frequency penalties must be in [-2, 2]")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidInput(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]")
        if not 0 <= self.min_p <= 1:
            raise InvalidInput("min_p must be in [0, 1]")
        if not 0 < self.repetition_penalty <= 2:
            raise InvalidInput("repetition_penalty must be in (0, 2]")
        limit = MAX_LOGIT_BIAS
        bias = {int(t): max(-limit, min(limit, float(b))) for t, b in self.logit_bias}
        if any(t < 0 for t in bias):
            raise InvalidInput("logit_bias token ids must be >= 0")
        object.__setattr__(self, "logit_bias", tuple(sorted(bias.items())))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_pb(self) -> decoder_pb2.SamplingParams:
        return decoder_pb2.SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            logit_bias=dict(self.logit_bias),
        )

    @classmethod
    def from_pb(cls, pb: decoder_pb2.SamplingParams) -> SamplingParams:
        return cls(
            temperature=pb.temperature,
            top_p=pb.top_p if pb.top_p > 0 else 1.0,
            top_k=pb.top_k,
            seed=pb.seed if pb.HasField("seed") else None,
            presence_penalty=pb.presence_penalty,
            frequency_penalty=pb.frequency_penalty,
            logprobs=pb.logprobs,
            top_logprobs=pb.top_logprobs,
            min_p=pb.min_p,
            repetition_penalty=pb.repetition_penalty or 1.0,
            logit_bias=tuple(pb.logit_bias.items()),
        )


@dataclasses.dataclass(frozen=True)
class StoppingParams:
    max_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InvalidInput("max_tokens must be at least 1")

    def to_pb(self) -> decoder_pb2.StoppingParams:
        return decoder_pb2.StoppingParams(
            max_tokens=self.max_tokens,
            stop_token_ids=list(self.stop_token_ids),
            ignore_eos=self.ignore_eos,
        )

    @classmethod
    def from_pb(cls, pb: decoder_pb2.StoppingParams) -> StoppingParams:
        return cls(
            max_tokens=pb.max_tokens,
            stop_token_ids=tuple(pb.stop_token_ids),
            ignore_eos=pb.ignore_eos,
        )
