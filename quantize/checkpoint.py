"""The standard GPTQ checkpoint layout (AutoGPTQ, GPTQModel, transformers, vLLM): writer and reader.

Per quantized Linear with ``in`` inputs, ``out`` outputs and ``groups`` groups, for ``bits`` in
{2, 4, 8} (``per = 32 // bits`` values per int32, the first one in the lowest bits):

- ``qweight`` int32 [in / per, out]: the codes, packed along the input dimension;
- ``qzeros``  int32 [groups, out / per]: the zero points, packed along the output dimension;
  format "gptq" (v1) stores each zero point minus one, "gptq_v2" stores it as is;
- ``scales``  fp16  [groups, out];
- ``g_idx``   int32 [in]: the group of each input column (not monotonic with act-order);
- ``bias`` unchanged, if any.

A weight is ``scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o])``. We write v1 (what vLLM and
SGLang read by default) and read both.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

FORMATS = ("gptq", "gptq_v2")
SUPPORTED_BITS = (2, 4, 8)
QUANT_PARTS = ("qweight", "qzeros", "scales", "g_idx")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".safetensors.index.json")


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """One Linear's quantized weight, unpacked, in nn.Linear orientation."""

    q: torch.Tensor  # uint8 [out, in], codes in [0, 2**bits - 1]
    zeros: torch.Tensor  # int32 [groups, out], the true zero points
    scales: torch.Tensor  # float [groups, out]
    g_idx: torch.Tensor  # int32 [in]
    bits: int

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] these codes stand for."""
        groups = self.g_idx.long()
        zeros = self.zeros[groups].T.float()
        scales = self.scales[groups].T.float()
        return (self.q.float() - zeros) * scales

    def pack(self) -> dict[str, torch.Tensor]:
        """The v1 ("gptq") tensors of this weight."""
        mask = 2**self.bits - 1
        return {
            "qweight": pack_int32(self.q.T, self.bits, dim=0),
            "qzeros": pack_int32((self.zeros - 1) & mask, self.bits, dim=1),
            "scales": self.scales.to(torch.float16),
            "g_idx": self.g_idx.to(torch.int32),
        }

    @classmethod
    def unpack(
        cls,
        qweight: torch.Tensor,
        qzeros: torch.Tensor,
        scales: torch.Tensor,
        g_idx: torch.Tensor,
        bits: int,
        checkpoint_format: str = "gptq",
    ) -> QuantizedWeight:
        """Read packed checkpoint tensors of either format."""
        if checkpoint_format not in FORMATS:
            raise ValueError(f"unknown GPTQ checkpoint_format {checkpoint_format!r}")
        q = unpack_int32(qweight, bits, dim=0).T.contiguous()
        zeros = unpack_int32(qzeros, bits, dim=1)
        if checkpoint_format == "gptq":
            zeros = (zeros + 1) & (2**bits - 1)
        in_features, out_features = q.shape[1], q.shape[0]
        groups = scales.shape[0]
        if scales.shape != (groups, out_features) or zeros.shape != (groups, out_features):
            raise ValueError(
                f"GPTQ tensors disagree: qweight {tuple(qweight.shape)}, "
                f"qzeros {tuple(qzeros.shape)}, scales {tuple(scales.shape)}"
            )
        if g_idx.shape != (in_features,) or int(g_idx.min()) < 0 or int(g_idx.max()) >= groups:
            raise ValueError(f"g_idx {tuple(g_idx.shape)} does not index {groups} groups")
        return cls(
            q=q.to(torch.uint8),
            zeros=zeros.to(torch.int32),
            scales=scales.float(),
            g_idx=g_idx.to(torch.int32),
            bits=bits,
        )


def packs(size: int, bits: int) -> bool:
    """Whether a dimension of ``size`` packs into int32 words of ``32 // bits`` values (GPTQ
    packs the zero points along the outputs: an lm_head's vocabulary must)."""
    return size % (32 // bits) == 0


def pack_int32(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Pack ``32 // bits`` consecutive values along ``dim`` into one int32, lowest bits first."""
    per = 32 // bits
    moved = values.to(torch.int64).movedim(dim, -1)
    if not packs(moved.shape[-1], bits):
        raise ValueError(f"dimension of size {moved.shape[-1]} is not a multiple of {per}")
    if int(moved.min()) < 0 or int(moved.max()) >= 2**bits:
        raise ValueError(f"values do not fit in {bits} bits")
    grouped = moved.reshape(*moved.shape[:-1], -1, per)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    packed = (grouped << shifts).sum(dim=-1)  # fields do not overlap, so sum == bitwise or
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)  # as signed int32
    return packed.to(torch.int32).movedim(-1, dim).contiguous()


def unpack_int32(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """The inverse of ``pack_int32``: int64 values, ``32 // bits`` times longer along ``dim``."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"{bits}-bit GPTQ is not supported (only {SUPPORTED_BITS})")
    words = (packed.to(torch.int64) & 0xFFFFFFFF).movedim(dim, -1)
    shifts = torch.arange(32 // bits, dtype=torch.int64) * bits
    values = (words.unsqueeze(-1) >> shifts) & (2**bits - 1)
    return values.reshape(*words.shape[:-1], -1).movedim(-1, dim).contiguous()


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """quantize_config.json, with the field names the GPTQ ecosystem reads."""

    bits: int
    group_size: int
    desc_act: bool
    sym: bool = False
    checkpoint_format: str = "gptq"
    damp_percent: float = 0.01
    true_sequential: bool = False
    static_groups: bool = False
    lm_head: bool = False  # GPTQModel's flag: the lm_head is quantized too
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(quant_method="gptq")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QuantConfig:
        if data.get("quant_method", "gptq") != "gptq":
            raise ValueError(f"not a GPTQ checkpoint (quant_method {data.get('quant_method')!r})")
        checkpoint_format = data.get("checkpoint_format", "gptq")
        if checkpoint_format not in FORMATS:
            raise ValueError(f"unsupported GPTQ checkpoint_format {checkpoint_format!r}")
        if data.get("bits") not in SUPPORTED_BITS:
            raise ValueError(f"{data.get('bits')}-bit GPTQ is not supported ({SUPPORTED_BITS})")
        return cls(
            bits=int(data["bits"]),
            group_size=int(data.get("group_size", -1)),
            desc_act=bool(data.get("desc_act", False)),
            sym=bool(data.get("sym", False)),
            checkpoint_format=checkpoint_format,
            damp_percent=float(data.get("damp_percent", 0.01)),
            true_sequential=bool(data.get("true_sequential", False)),
            static_groups=bool(data.get("static_groups", False)),
            lm_head=bool(data.get("lm_head", False)),
            meta=dict(data.get("meta") or {}),
        )


def read_quant_config(folder: Path) -> QuantConfig:
    """quantize_config.json, else config.json's ``quantization_config`` (transformers style)."""
    path = folder / "quantize_config.json"
    if path.is_file():
        return QuantConfig.from_json(json.loads(path.read_text()))
    config = folder / "config.json"
    if config.is_file():
        data = json.loads(config.read_text()).get("quantization_config")
        if data is not None:
            return QuantConfig.from_json(data)
    raise FileNotFoundError(f"{folder} holds no quantize_config.json nor a quantization_config")


def write_checkpoint(
    dest: Path,
    source: Path,
    unquantized: dict[str, torch.Tensor],
    quantized: dict[str, QuantizedWeight],
    config: QuantConfig,
) -> None:
    """Write a v1 GPTQ checkpoint of the HF model folder ``source`` into ``dest``.

    ``quantized`` maps Linear names (``model.layers.0.mlp.down_proj``) to their weights;
    ``unquantized`` holds every other tensor (embeddings, norms, biases, lm_head). The folder
    is staged and renamed, so an interrupted run never leaves a checkpoint that looks complete.
    """
    if config.checkpoint_format != "gptq":
        raise ValueError("the writer emits the v1 'gptq' format only")
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in source.iterdir():
        if (
            path.is_file()
            and path.name != "config.json"
            and not path.name.endswith(_WEIGHT_SUFFIXES)
        ):
            shutil.copy2(path, staging / path.name)
    model_config = json.loads((source / "config.json").read_text())
    model_config["quantization_config"] = config.to_json()
    (staging / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")
    (staging / "quantize_config.json").write_text(json.dumps(config.to_json(), indent=2) + "\n")

    tensors = {name: t.detach().cpu().contiguous() for name, t in unquantized.items()}
    for name, weight in quantized.items():
        for part, tensor in weight.pack().items():
            tensors[f"{name}.{part}"] = tensor
    save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
