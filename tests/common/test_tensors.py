"""The tensor wire format: raw little-endian bytes, every supported dtype, bad input rejected."""

from __future__ import annotations

import pytest
import torch

from autoglm.v1 import tensor_pb2
from services.common.errors import InvalidInput
from services.common.tensors import tensor_from_pb, tensor_to_pb


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32, torch.int32, torch.int64]
)
def test_round_trip_is_exact(dtype: torch.dtype) -> None:
    tensor = (torch.randn(3, 5) * 100).to(dtype)
    decoded = tensor_from_pb(tensor_to_pb(tensor))
    assert decoded.dtype == dtype and torch.equal(decoded, tensor)


def test_bytes_are_raw_little_endian_without_per_element_fields() -> None:
    message = tensor_to_pb(torch.tensor([1.0, -2.0], dtype=torch.float16))
    assert message.data == b"\x00\x3c\x00\xc0"
    assert list(message.shape) == [2] and message.dtype == tensor_pb2.DTYPE_FLOAT16


def test_empty_and_non_contiguous_tensors() -> None:
    assert tensor_from_pb(tensor_to_pb(torch.empty(0, 4))).shape == (0, 4)
    strided = torch.arange(12, dtype=torch.float32).view(3, 4).t()
    assert torch.equal(tensor_from_pb(tensor_to_pb(strided)), strided)


def test_size_mismatch_is_invalid_input() -> None:
    message = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT16, shape=[4], data=b"\x00" * 6)
    with pytest.raises(InvalidInput, match="needs 8 bytes"):
        tensor_from_pb(message)


def test_unknown_dtype_and_negative_shape_are_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        tensor_from_pb(tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_UNSPECIFIED, shape=[0]))
    with pytest.raises(InvalidInput):
        tensor_from_pb(tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[-1]))
