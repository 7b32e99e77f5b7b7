"""Reading one part's tensors from a checkpoint folder in place, single file or sharded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import Glm4vForConditionalGeneration

from bundle.checkpoint import INDEX_FILE, read_tensors, weight_files


def test_reads_only_the_prefix_and_strips_it(glm4v_checkpoint: Path) -> None:
    model = Glm4vForConditionalGeneration.from_pretrained(glm4v_checkpoint)
    visual = read_tensors(glm4v_checkpoint, "model.visual.")
    assert visual.keys() == model.model.visual.state_dict().keys()
    for name, tensor in model.model.visual.state_dict().items():
        assert torch.equal(visual[name], tensor), name
    assert read_tensors(glm4v_checkpoint, "lm_head.").keys() == {"weight"}


def test_sharded_checkpoint_gives_the_same_tensors(glm4v_checkpoint: Path, tmp_path: Path) -> None:
    model = Glm4vForConditionalGeneration.from_pretrained(glm4v_checkpoint)
    model.save_pretrained(tmp_path, max_shard_size="1MB")
    shards = json.loads((tmp_path / INDEX_FILE).read_text())["weight_map"].values()
    assert len(set(shards)) > 2
    assert len(weight_files(tmp_path)) == len(set(shards))
    prefix = "model.language_model."
    sharded, single = read_tensors(tmp_path, prefix), read_tensors(glm4v_checkpoint, prefix)
    assert sharded.keys() == single.keys()
    assert all(torch.equal(sharded[name], single[name]) for name in single)


def test_missing_weights_and_unknown_prefixes_are_clear_errors(
    glm4v_checkpoint: Path, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        read_tensors(tmp_path, "model.")
    with pytest.raises(KeyError, match=r"model\.audio"):
        read_tensors(glm4v_checkpoint, "model.audio.")
