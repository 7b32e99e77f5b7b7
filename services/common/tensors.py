"""Tensor <-> protobuf: raw little-endian bytes plus dtype and shape, no per-element fields."""

from __future__ import annotations

import sys

import torch

from autoglm.v1 import tensor_pb2
from services.common.errors import InvalidInput

_TO_PB = {
    torch.float16: tensor_pb2.DTYPE_FLOAT16,
    torch.bfloat16: tensor_pb2.DTYPE_BFLOAT16,
    torch.float32: tensor_pb2.DTYPE_FLOAT32,
    torch.int32: tensor_pb2.DTYPE_INT32,
    torch.int64: tensor_pb2.DTYPE_INT64,
}
_FROM_PB = {v: k for k, v in _TO_PB.items()}

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("the tensor wire format is little-endian; big-endian hosts are unsupported")


def tensor_to_pb(tensor: torch.Tensor) -> tensor_pb2.Tensor:
    if tensor.dtype not in _TO_PB:
        raise TypeError(f"dtype {tensor.dtype} has no wire encoding")
    flat = tensor.detach().to("cpu").contiguous()
    # view as bytes through uint8 so bfloat16 (which numpy lacks) takes the same path
    data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    return tensor_pb2.Tensor(dtype=_TO_PB[tensor.dtype], shape=list(flat.shape), data=data)


def tensor_from_pb(message: tensor_pb2.Tensor) -> torch.Tensor:
    """Decode a wire tensor; malformed ones raise InvalidInput (a client error, not a crash)."""
    dtype = _FROM_PB.get(message.dtype)
    if dtype is None:
        raise InvalidInput(f"unsupported tensor dtype {message.dtype}")
    shape = tuple(int(d) for d in message.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"negative dimension in tensor shape {shape}")
    numel = 1
    for d in shape:
        numel *= d
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(message.data) != numel * itemsize:
        raise InvalidInput(
            f"tensor of shape {shape} and {dtype} needs {numel * itemsize} bytes, "
            f"got {len(message.data)}"
        )
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    # bytearray: frombuffer wants a writable buffer, and the copy detaches us from the message
    return torch.frombuffer(bytearray(message.data), dtype=dtype).reshape(shape)
