"""Domain types shared by the two encoder services (vision, audio) and their gateway clients."""

from __future__ import annotations

import dataclasses

import torch

from autoglm.v1 import encoder_pb2
from services.common.tensors import tensor_from_pb, tensor_to_pb


@dataclasses.dataclass(frozen=True)
class MediaItem:
    data: bytes
    mime_type: str = ""

    def to_pb(self) -> encoder_pb2.MediaItem:
        return encoder_pb2.MediaItem(data=self.data, mime_type=self.mime_type)

    @classmethod
    def from_pb(cls, pb: encoder_pb2.MediaItem) -> MediaItem:
        return cls(data=pb.data, mime_type=pb.mime_type)


def encode_request_to_pb(items: list[MediaItem]) -> encoder_pb2.EncodeRequest:
    return encoder_pb2.EncodeRequest(items=[item.to_pb() for item in items])


def encode_request_from_pb(pb: encoder_pb2.EncodeRequest) -> list[MediaItem]:
    return [MediaItem.from_pb(item) for item in pb.items]


@dataclasses.dataclass(frozen=True)
class EncoderInfo:
    model: str
    device: str
    dtype: str
    quantization: str
    hidden_size: int
    max_items: int

    def to_pb(self) -> encoder_pb2.EncoderInfo:
        return encoder_pb2.EncoderInfo(**dataclasses.asdict(self))

    @classmethod
    def from_pb(cls, pb: encoder_pb2.EncoderInfo) -> EncoderInfo:
        return cls(**{f.name: getattr(pb, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class Embedding:
    """One item's encoder output: [rows, hidden] and, from a tower at dynamic resolution
    (GLM-4.1V), the (t, h, w) patch grid the rows come from."""

    tensor: torch.Tensor
    grid_thw: tuple[int, int, int] | None = None
    projected: bool = False  # already text-width tokens (the projector ran in the encoder)


def encode_response_to_pb(embeddings: list[Embedding]) -> encoder_pb2.EncodeResponse:
    grids = [e.grid_thw for e in embeddings]
    if any(grid is None for grid in grids) and any(grid is not None for grid in grids):
        raise ValueError("either every embedding has a grid_thw or none has")
    projected = {e.projected for e in embeddings}
    if len(projected) > 1:
        raise ValueError("either every embedding is projected or none is")
    return encoder_pb2.EncodeResponse(
        projected=projected == {True},
        embeddings=[tensor_to_pb(e.tensor) for e in embeddings],
        grid_thw=[encoder_pb2.GridTHW(t=g[0], h=g[1], w=g[2]) for g in grids if g is not None],
    )


def encode_response_from_pb(pb: encoder_pb2.EncodeResponse) -> list[Embedding]:
    tensors = [tensor_from_pb(t) for t in pb.embeddings]
    if not pb.grid_thw:
        return [Embedding(t, projected=pb.projected) for t in tensors]
    if len(pb.grid_thw) != len(tensors):
        raise ValueError(f"{len(pb.grid_thw)} grids for {len(tensors)} embeddings")
    return [
        Embedding(t, (g.t, g.h, g.w), pb.projected)
        for t, g in zip(tensors, pb.grid_thw, strict=True)
    ]
