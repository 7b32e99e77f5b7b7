"""A GLM-4.1V checkpoint's own projector, the fusion stage of a GLM-4.1V bundle.

``model.visual.downsample`` (Conv2d, kernel = stride = the 2x2 merge) folds each 2x2 group of
patch states into one token, then ``model.visual.merger`` (transformers' Glm4vVisionPatchMerger)
projects it to the text width. The vision service sends the patch states after post_layernorm in
the image processor's order, where every 2x2 merge group is 4 consecutive rows, so one image is
[n_patches, vision hidden] -> [n_patches / 4, text hidden]. Every output token depends on its own
group only: nothing crosses images and memory is linear in the tokens.

The downsample runs as the matrix product it is (a kernel-sized stride over a 2x2 input): torch's
fp16 Conv2d on the CPU is ~20x slower than the same GEMM. Weights are read in place from the
checkpoint (``read_tensors``), never copied.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, Glm4vVisionConfig
from transformers.models.glm4v.modeling_glm4v import Glm4vVisionPatchMerger

from bundle.checkpoint import read_tensors

VISUAL_PREFIX = "model.visual."
PROJECTOR_PREFIXES = ("downsample.", "merger.")


def is_glm4v_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a GLM-4.1V checkpoint (its config.json says model_type glm4v)."""
    config = folder / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "glm4v"


class Glm4vProjector(nn.Module):
    def __init__(self, config: Glm4vVisionConfig) -> None:
        super().__init__()
        self.merge = int(config.spatial_merge_size)
        self.downsample = nn.Conv2d(
            config.hidden_size, config.out_hidden_size, kernel_size=self.merge, stride=self.merge
        )
        self.merger = Glm4vVisionPatchMerger(
            dim=config.out_hidden_size,
            context_dim=config.intermediate_size,
            hidden_act=config.hidden_act,
        )

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float16,
    ) -> Glm4vProjector:
        config: Glm4vVisionConfig = AutoConfig.from_pretrained(checkpoint).vision_config
        weights = {
            name: tensor
            for name, tensor in read_tensors(checkpoint, VISUAL_PREFIX).items()
            if name.startswith(PROJECTOR_PREFIXES)
        }
        with torch.device("meta"):
            projector = cls(config)
        projector.load_state_dict(weights, strict=True, assign=True)
        return projector.to(device=device, dtype=dtype).eval()

    def fuse_image(
        self, states: torch.Tensor, grid_thw: tuple[int, int, int] | None
    ) -> torch.Tensor:
        """One image's patch states [t*h*w, vision hidden] -> tokens [t*h*w / 4, text hidden]."""
        if grid_thw is None:
            raise ValueError("GLM-4.1V fusion needs each image's grid_thw")
        t, h, w = grid_thw
        if states.shape[0] != t * h * w or h % self.merge or w % self.merge:
            raise ValueError(
                f"patch states {tuple(states.shape)} do not fit the grid {grid_thw} "
                f"(merge {self.merge})"
            )
        weight = self.downsample.weight  # [out, in, merge, merge]
        # [groups, merge, merge, in] -> [groups, in, merge, merge] flattened like the kernel.
        groups = states.to(weight.device, weight.dtype).view(
            -1, self.merge, self.merge, weight.shape[1]
        )
        groups = groups.permute(0, 3, 1, 2).reshape(groups.shape[0], -1)
        tokens = F.linear(groups, weight.reshape(weight.shape[0], -1), self.downsample.bias)
        merged: torch.Tensor = self.merger(tokens)
        return merged

    def fuse_audio(self, states: torch.Tensor) -> torch.Tensor:
        raise ValueError("a GLM-4.1V checkpoint has no audio projector")
