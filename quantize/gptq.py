"""GPTQ (Frantar et al., 2022): quantize a Linear's weight column by column, pushing each
column's rounding error onto the columns not yet quantized, weighted by the inverse Hessian of
the layer's reconstruction loss ``||W X - W_q X||^2``, whose Hessian is ``H = 2 X X^T``.

Follows the reference implementation: dampening of H, the upper Cholesky factor of H^-1
(so each step reads one row of it), lazy batch updates over blocks of 128 columns, group-wise
asymmetric grids found as the sweep reaches each group, and act-order (columns by decreasing
diag(H)), which yields a non-monotonic ``g_idx``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from quantize.checkpoint import QuantizedWeight
from quantize.rtn import grid_params, group_size_for, quantize_column

DEFAULT_DAMP = 0.01
DEFAULT_BLOCK = 128


class Hessian:
    """Accumulates ``2/n * sum(x x^T)`` over the inputs a Linear sees during calibration."""

    def __init__(self, in_features: int) -> None:
        self.matrix = torch.zeros(in_features, in_features, dtype=torch.float32)
        self.samples = 0

    def add(self, inputs: torch.Tensor) -> None:
        """Add a batch of inputs [..., in_features] (every token is one sample)."""
        x = inputs.detach().reshape(-1, inputs.shape[-1]).to("cpu", torch.float32)
        total = self.samples + x.shape[0]
        # A running mean keeps the magnitude independent of how much text was used.
        self.matrix *= self.samples / total
        self.matrix += (2.0 / total) * (x.T @ x)
        self.samples = total


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int,
    act_order: bool = False,
    damp_percent: float = DEFAULT_DAMP,
    block_size: int = DEFAULT_BLOCK,
) -> QuantizedWeight:
    """Quantize ``weight`` [out, in] given the Hessian [in, in] of its inputs."""
    out_features, columns = weight.shape
    size = group_size_for(columns, group_size)
    W = weight.detach().to("cpu", torch.float32).clone()
    H = hessian.to(torch.float32).clone()

    # Inputs that were always zero carry no information: fix their weight at 0.
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    order = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(columns)
    W, H = W[:, order], H[order][:, order]

    H += damp_percent * torch.mean(torch.diag(H)) * torch.eye(columns)
    # Upper Cholesky factor of H^-1: row i holds the update weights for step i.
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    # Transposed, so each column of W is a contiguous row: the sweep reads and updates one
    # column at a time, and strided columns would cost a cache line per element.
    Wt = W.T.contiguous()
    Qt = torch.empty(columns, out_features, dtype=torch.uint8)
    scales: list[torch.Tensor] = []
    zeros: list[torch.Tensor] = []
    with _one_thread():
        for start in range(0, columns, block_size):
            end = min(start + block_size, columns)
            block = Wt[start:end].clone()
            errors = torch.zeros_like(block)
            Hinv_block = Hinv[start:end, start:end]
            for i in range(end - start):
                if (start + i) % size == 0:
                    # The grid of a group is set from its weights as updated so far.
                    upcoming = torch.cat([block[i:], Wt[end : end + size]])[:size]
                    scale, zero = grid_params(upcoming.T, bits)
                    scales.append(scale)
                    zeros.append(zero)
                column = block[i]
                q = quantize_column(column, scale, zero, bits)
                Qt[start + i] = q.to(torch.uint8)
                error = (column - scale * (q - zero)) / Hinv_block[i, i]
                block[i:].addr_(Hinv_block[i, i:], error, alpha=-1)
                errors[i] = error
            # Lazy batch update: the columns after this block get all of its errors at once.
            Wt[end:] -= Hinv[start:end, end:].T @ errors

    inverse = torch.argsort(order)
    g_idx = (torch.arange(columns) // size)[inverse]
    return QuantizedWeight(
        q=Qt[inverse].T.contiguous(),
        zeros=torch.stack(zeros).to(torch.int32),
        scales=torch.stack(scales),
        g_idx=g_idx.to(torch.int32),
        bits=bits,
    )


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The sweep is thousands of tiny ops: fanning each out over threads costs more than it
    saves (several times more on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
