"""Tiny GLM-4 checkpoints for the decoder tests, written by transformers itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Glm4Config, Glm4ForCausalLM

from services.decoder.model import Glm4ForCausalLM as ServingGlm4
from services.decoder.onednn import prepack_linears
from tests.decoder.engines import EOS

TINY: dict[str, Any] = dict(
    vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, intermediate_size=96, max_position_embeddings=512,
    attention_bias=True, tie_word_embeddings=False, eos_token_id=list(EOS), pad_token_id=0,
)  # fmt: skip


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Glm4ForCausalLM saved as a Hugging Face folder."""
    path = tmp_path_factory.mktemp("glm4-tiny")
    torch.manual_seed(0)
    model = Glm4ForCausalLM(Glm4Config(**TINY)).eval()
    with torch.no_grad():  # non-trivial norms, so a swapped norm would show in the logits
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session", params=["torch", "onednn"])
def tiny_model(request: pytest.FixtureRequest, tiny_checkpoint: Path) -> ServingGlm4:
    """The serving model on plain torch Linear layers, and on weights repacked for oneDNN (what
    the service runs on the CPU): every parity and engine test holds for both."""
    model = ServingGlm4.from_pretrained(tiny_checkpoint, torch.float32, torch.device("cpu"))
    if request.param == "onednn":
        assert prepack_linears(model) == 4 * model.config.num_hidden_layers + 1  # + lm_head
    return model
