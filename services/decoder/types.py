"""The decoder's requests, outputs and info (sampling and stopping settings: params.py). They own
their protobuf conversions, so the engine and the model work on these plain dataclasses and token
ids and never touch gRPC types.

Importing this module does not import torch (the scheduler, pure Python, uses these types):
only a multimodal segment holds a tensor, and its conversions load the tensor codec when called.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING

from autoglm.v1 import decoder_pb2
from services.common.errors import InvalidInput
from services.decoder.constraint_spec import Constraint
from services.decoder.params import SamplingParams, StoppingParams
from services.decoder.positions import PositionIds

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass(frozen=True)
class MultimodalSegment:
    """Embeddings [n_tokens, hidden] that replace input_ids[offset : offset + n_tokens]."""

    offset: int
    embeddings: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.embeddings.shape[0])

    def to_pb(self) -> decoder_pb2.MultimodalSegment:
        from services.common.tensors import tensor_to_pb  # torch, only where a tensor is

        return decoder_pb2.MultimodalSegment(
            offset=self.offset, embeddings=tensor_to_pb(self.embeddings)
        )

    @classmethod
    def from_pb(cls, pb: decoder_pb2.MultimodalSegment) -> MultimodalSegment:
        from services.common.tensors import tensor_from_pb  # torch, only where a tensor is

        embeddings = tensor_from_pb(pb.embeddings)
        if embeddings.dim() != 2:
            raise InvalidInput(
                f"segment embeddings must be 2-D, got shape {tuple(embeddings.shape)}"
            )
        return cls(offset=pb.offset, embeddings=embeddings)


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
    request_id: str
    input_ids: tuple[int, ...]
    sampling: SamplingParams = dataclasses.field(default_factory=SamplingParams)
    stopping: StoppingParams = dataclasses.field(default_factory=StoppingParams)
    segments: tuple[MultimodalSegment, ...] = ()
    positions: PositionIds | None = None  # None: 0..n-1 on every axis
    constraint: Constraint | None = None

    def __post_init__(self) -> None:
        if not self.input_ids:
            raise InvalidInput("input_ids must not be empty")
        if self.positions is not None and self.positions.length != len(self.input_ids):
            raise InvalidInput(
                f"position ids have {self.positions.length} per row, input_ids "
                f"{len(self.input_ids)}"
            )
        end = 0
        for segment in sorted(self.segments, key=lambda s: s.offset):
            if segment.offset < end:
                raise InvalidInput("multimodal segments overlap")
            end = segment.offset + segment.length
            if end > len(self.input_ids):
                raise InvalidInput("a multimodal segment runs past the end of input_ids")

    def to_pb(self) -> decoder_pb2.GenerateRequest:
        return decoder_pb2.GenerateRequest(
            request_id=self.request_id,
            input_ids=list(self.input_ids),
            segments=[s.to_pb() for s in self.segments],
            positions=self.positions.to_pb() if self.positions else None,
            sampling=self.sampling.to_pb(),
            stopping=self.stopping.to_pb(),
            constraint=self.constraint.to_pb() if self.constraint else None,
        )

    @classmethod
    def from_pb(cls, pb: decoder_pb2.GenerateRequest) -> GenerateRequest:
        return cls(
            request_id=pb.request_id,
            input_ids=tuple(pb.input_ids),
            sampling=SamplingParams.from_pb(pb.sampling),
            stopping=StoppingParams.from_pb(pb.stopping),
            segments=tuple(MultimodalSegment.from_pb(s) for s in pb.segments),
            positions=PositionIds.from_pb(pb.positions) if pb.HasField("positions") else None,
            constraint=(Constraint.from_pb(pb.constraint) if pb.HasField("constraint") else None),
        )


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"

    def to_pb(self) -> decoder_pb2.FinishReason:
        return _FINISH_TO_PB[self]

    @classmethod
    def from_pb(cls, pb: decoder_pb2.FinishReason) -> FinishReason | None:
        return _FINISH_FROM_PB.get(pb)


_FINISH_TO_PB = {
    FinishReason.STOP: decoder_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: decoder_pb2.FINISH_REASON_LENGTH,
}
_FINISH_FROM_PB = {v: k for k, v in _FINISH_TO_PB.items()}


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top_logprobs: tuple[tuple[int, float], ...] = ()

    def to_pb(self) -> decoder_pb2.TokenLogprob:
        return decoder_pb2.TokenLogprob(
            token_id=self.token_id,
            logprob=self.logprob,
            top_logprobs=[
                decoder_pb2.TopLogprob(token_id=t, logprob=lp) for t, lp in self.top_logprobs
            ],
        )

    @classmethod
    def from_pb(cls, pb: decoder_pb2.TokenLogprob) -> TokenLogprob:
        return cls(
            token_id=pb.token_id,
            logprob=pb.logprob,
            top_logprobs=tuple((t.token_id, t.logprob) for t in pb.top_logprobs),
        )


@dataclasses.dataclass(frozen=True)
class GenerateOutput:
    """What one engine step produced for one request; the last carries finish_reason."""

    request_id: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache, not computed

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @classmethod
    def joined(cls, outputs: Sequence[GenerateOutput]) -> GenerateOutput:
        """Consecutive outputs of one request as one: their tokens in order, the last one's
        finish reason and counts (the counts are running totals)."""
        if len(outputs) == 1:
            return outputs[0]
        return dataclasses.replace(
            outputs[-1],
            token_ids=tuple(t for o in outputs for t in o.token_ids),
            logprobs=tuple(lp for o in outputs for lp in o.logprobs),
        )

    def to_pb(self) -> decoder_pb2.GenerateResponse:
        return decoder_pb2.GenerateResponse(
            token_ids=list(self.token_ids),
            logprobs=[lp.to_pb() for lp in self.logprobs],
            finish_reason=(
                self.finish_reason.to_pb()
                if self.finish_reason
                else decoder_pb2.FINISH_REASON_UNSPECIFIED
            ),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
        )

    @classmethod
    def from_pb(cls, pb: decoder_pb2.GenerateResponse, request_id: str = "") -> GenerateOutput:
        return cls(
            request_id=request_id,
            token_ids=tuple(pb.token_ids),
            logprobs=tuple(TokenLogprob.from_pb(lp) for lp in pb.logprobs),
            finish_reason=FinishReason.from_pb(pb.finish_reason),
            prompt_tokens=pb.prompt_tokens,
            completion_tokens=pb.completion_tokens,
            cached_tokens=pb.cached_tokens,
        )


@dataclasses.dataclass(frozen=True)
class DecoderInfo:
    model: str
    device: str
    dtype: str
    quantization: str
    vocab_size: int
    hidden_size: int
    max_model_len: int
    max_running_requests: int
    total_cache_tokens: int
    free_cache_tokens: int
    running_requests: int
    waiting_requests: int
    eos_token_ids: tuple[int, ...]
    prefix_caching: bool
    cached_prefix_tokens: int  # tokens in cache blocks a later prompt may reuse
    preemptions: int  # requests preempted (and recomputed) for lack of cache, since start

    def to_pb(self) -> decoder_pb2.DecoderInfo:
        values = dataclasses.asdict(self)
        values["eos_token_ids"] = list(self.eos_token_ids)
        return decoder_pb2.DecoderInfo(**values)

    @classmethod
    def from_pb(cls, pb: decoder_pb2.DecoderInfo) -> DecoderInfo:
        values = {f.name: getattr(pb, f.name) for f in dataclasses.fields(cls)}
        values["eos_token_ids"] = tuple(pb.eos_token_ids)
        return cls(**values)
