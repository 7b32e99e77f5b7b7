"""The GLM-4.1V vision tower (``model.visual.*`` of a ``Glm4vForConditionalGeneration``
checkpoint) at dynamic resolution, its Linear layers in LLM.int8() by default.

The tower stops at ``post_layernorm``: the 2x2 downsample and the patch merger are the fusion
stage (bundle/glm4v_projector.py, run by the gateway), so each image comes back as its patch
states [n_patches, vision hidden] in the image processor's patch order, with its (t, h, w) grid.

The layers are transformers' own (Glm4vVisionBlock, ...); only the forward is written here, to
stop before the projector and to keep attention per image: transformers' SDPA path splits the
packed sequence at ``cu_seqlens`` and calls ``scaled_dot_product_attention`` without a mask, which
takes the flash kernel on the CPU and the flash or memory-efficient kernel on CUDA, so a
1080x2400 screenshot's ~13,000 patches never become a dense [heads, n, n] matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, Glm4vVisionConfig
from transformers.models.glm4v.modeling_glm4v import (
    Glm4vRMSNorm,
    Glm4vVisionBlock,
    Glm4vVisionEmbeddings,
    Glm4vVisionPatchEmbed,
    Glm4vVisionRotaryEmbedding,
)
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids

from bundle.checkpoint import read_tensors
from bundle.glm4v_projector import (
    PROJECTOR_PREFIXES,
    VISUAL_PREFIX,
    Glm4vProjector,
    is_glm4v_checkpoint,
)
from services.common.device import resolve_device
from services.encoder.int8 import quantize_linears, weight_bytes
from services.encoder.pipeline import MediaEncoder
from services.encoder.tower import COMPUTE_DTYPE
from services.encoder.types import Embedding, EncoderInfo
from services.vision.config import VisionConfig
from services.vision.glm4v_preprocess import Glm4vImagePreprocessor, PatchedImage
from services.vision.preprocess import ImageLimits, pixel_budget

log = logging.getLogger(__name__)


def vision_config(checkpoint: Path) -> Glm4vVisionConfig:
    """The checkpoint's vision config, read through transformers' config classes."""
    if not is_glm4v_checkpoint(checkpoint):
        raise ValueError(f"{checkpoint}: not a GLM-4.1V checkpoint (config.json model_type)")
    vision: Glm4vVisionConfig = AutoConfig.from_pretrained(checkpoint).vision_config
    vision._attn_implementation = "sdpa"  # per image, no mask: see the module docstring
    return vision


class Glm4vTower(nn.Module):
    """Glm4vVisionModel up to post_layernorm, with the checkpoint's names (minus the prefix)."""

    def __init__(self, config: Glm4vVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.spatial_merge_size = int(config.spatial_merge_size)
        self.embeddings = Glm4vVisionEmbeddings(config)
        self.patch_embed = Glm4vVisionPatchEmbed(config)
        self.rotary_pos_emb = Glm4vVisionRotaryEmbedding(config)
        self.blocks = nn.ModuleList(Glm4vVisionBlock(config) for _ in range(config.depth))
        self.post_conv_layernorm = Glm4vRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_layernorm = Glm4vRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    @classmethod
    def from_checkpoint(cls, checkpoint: Path) -> Glm4vTower:
        """The tower's weights read in place from the checkpoint (single file or shards), in
        fp32; built on the meta device first so no random initialisation is paid for."""
        config = vision_config(checkpoint)
        weights = {
            name: tensor.to(COMPUTE_DTYPE)
            for name, tensor in read_tensors(checkpoint, VISUAL_PREFIX).items()
            if not name.startswith(PROJECTOR_PREFIXES)
        }
        with torch.device("meta"):
            tower = cls(config)
        tower.load_state_dict(weights, strict=True, assign=True)
        # inv_freq is computed, not stored: rebuild it off the meta device.
        tower.rotary_pos_emb = Glm4vVisionRotaryEmbedding(config)
        return tower.eval()

    def forward(self, pixels: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Packed patches [sum n_i, C*T*P*P] of images with grids [k, 3] -> patch states
        [sum n_i, hidden]; attention never crosses from one image to another."""
        position_ids = get_vision_position_ids(grid_thw, self.spatial_merge_size)
        cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid_thw, self.config)
        hidden = self.post_conv_layernorm(self.patch_embed(pixels))
        rotary = self.rotary_pos_emb(hidden, position_ids)
        hidden = self.embeddings(
            hidden,
            cu_seqlens[1:] - cu_seqlens[:-1],
            grid_thw,
            position_ids[:, 0].to(hidden.device),
            position_ids[:, 1].to(hidden.device),
        )
        for block in self.blocks:
            hidden = block(
                hidden, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, position_embeddings=rotary
            )
        out: torch.Tensor = self.post_layernorm(hidden)
        return out


def load_glm4v_tower(
    checkpoint: Path, device: torch.device, quantization: str, threshold: float
) -> Glm4vTower:
    """The tower on ``device``; its Linear layers in LLM.int8() unless ``quantization`` is
    "none" (the Conv3d patch embedding, the norms and the position table stay fp32)."""
    if quantization not in ("int8", "none"):
        raise ValueError(f"unknown quantization {quantization!r}")
    tower = Glm4vTower.from_checkpoint(checkpoint)
    if quantization == "int8":
        fp32_bytes = weight_bytes(tower)
        count = quantize_linears(tower, device, threshold)
        log.info(
            "GLM-4.1V tower: %d Linear layers in LLM.int8() (threshold %.1f), %.1f MB (FP32 %.1f)",
            count, threshold, weight_bytes(tower) / 1e6, fp32_bytes / 1e6,
        )  # fmt: skip
    return tower.to(device)


def patch_batches(images: list[PatchedImage], max_patches: int) -> Iterator[list[int]]:
    """Indices of consecutive images packed into one forward of at most ``max_patches``
    patches (an image larger than that runs alone): the activations stay bounded."""
    batch: list[int] = []
    total = 0
    for index, image in enumerate(images):
        n = image.num_patches
        if batch and total + n > max_patches:
            yield batch
            batch, total = [], 0
        batch.append(index)
        total += n
    if batch:
        yield batch


class Glm4vVisionEncoder:
    """Patched images -> (patch states, grid) per image, several images per tower pass; with a
    ``projector``, each image's text-width tokens instead (the fusion stage run here)."""

    def __init__(
        self,
        tower: Glm4vTower,
        max_batch_patches: int,
        output_dtype: torch.dtype = torch.float16,
        projector: Glm4vProjector | None = None,
    ) -> None:
        self.tower = tower
        self.max_batch_patches = max_batch_patches
        self.output_dtype = output_dtype
        self.projector = projector
        self.device = next(tower.parameters()).device

    def warm_up(self) -> None:
        """One smallest image (a single 2x2 merge group): lazy initialisation is paid before
        SERVING. Not a full patch budget: on the CPU that alone takes minutes of attention."""
        merge = self.tower.spatial_merge_size
        width = self.tower.patch_embed.proj.weight[0].numel()  # C * t * p * p: one patch row
        self.encode([PatchedImage(torch.zeros(merge * merge, width), (1, merge, merge))])

    @torch.inference_mode()
    def encode(self, images: list[PatchedImage]) -> list[Embedding]:
        """One [n_patches, hidden] CPU tensor per image (the output dtype), with its grid."""
        out: list[Embedding] = []
        for batch in patch_batches(images, self.max_batch_patches):
            pixels = torch.cat([images[i].pixels for i in batch])
            grids = torch.tensor([images[i].grid_thw for i in batch], device=self.device)
            hidden = self.tower(pixels.to(self.device, COMPUTE_DTYPE), grids)
            sizes = [images[i].num_patches for i in batch]
            for states, i in zip(hidden.split(sizes), batch, strict=True):
                out.append(self._answer(states, images[i].grid_thw))
        return out

    def _answer(self, states: torch.Tensor, grid: tuple[int, int, int]) -> Embedding:
        if self.projector is None:
            return Embedding(states.to("cpu", self.output_dtype), grid)
        tokens = self.projector.fuse_image(states, grid)
        return Embedding(tokens.to("cpu", self.output_dtype), grid, projected=True)


def load_glm4v_encoder(checkpoint: Path, config: VisionConfig) -> MediaEncoder[PatchedImage]:
    """The vision service's pipeline for a GLM-4.1V checkpoint: its image processor and its
    tower on the configured device, warmed up."""
    limits = ImageLimits(max_bytes=config.max_image_bytes, max_pixels=config.max_image_pixels)
    preprocess = Glm4vImagePreprocessor.load(checkpoint, limits, config.max_pixels)
    tower = load_glm4v_tower(
        checkpoint, resolve_device(config.device), config.quantization, config.int8_threshold
    )
    output_dtype = getattr(torch, config.output_dtype)
    projector = None
    if config.project_in_service:
        projector = Glm4vProjector.from_checkpoint(
            checkpoint, next(tower.parameters()).device, output_dtype
        )
    encoder = Glm4vVisionEncoder(tower, config.max_batch_patches, output_dtype, projector)
    encoder.warm_up()
    info = EncoderInfo(
        model="Glm4vVisionModel",
        device=str(encoder.device),
        dtype=str(COMPUTE_DTYPE).removeprefix("torch."),
        quantization=config.quantization,
        hidden_size=int(tower.config.out_hidden_size if projector else tower.config.hidden_size),
        max_items=config.max_items,
    )
    budget = pixel_budget(preprocess.pixels, config.max_request_image_pixels)
    return MediaEncoder(decode=preprocess, encode=encoder.encode, info=info, budget=budget)
