"""The engine serves GLM-4.1V's text model with 3-D prompt positions: greedy tokens equal
transformers' Glm4vForConditionalGeneration.generate on the same image and the same positions
(mm_token_type_ids passed, so that generate uses 3-D positions, and decodes from its
rope_deltas, i.e. from the largest prompt position + 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Glm4vForConditionalGeneration

from services.common.errors import InvalidInput
from services.decoder.model import Glm4ForCausalLM as ServingGlm4
from services.decoder.params import StoppingParams
from services.decoder.positions import PositionIds
from services.decoder.types import GenerateRequest, MultimodalSegment
from tests.decoder.engines import make_engine, run_all, tokens

GRID_THW = (1, 6, 8)  # 48 patches: 12 image tokens after the 2 x 2 merge
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def reference(glm4v_checkpoint: Path) -> Glm4vForConditionalGeneration:
    model = Glm4vForConditionalGeneration.from_pretrained(glm4v_checkpoint, dtype=torch.float32)
    model.generation_config.eos_token_id = None  # 16 tokens whatever they are, as ignore_eos
    return model.eval()


def image_inputs(reference: Glm4vForConditionalGeneration) -> dict[str, torch.Tensor]:
    config = reference.config
    generator = torch.Generator().manual_seed(7)
    text = torch.randint(3, 100, (11,), generator=generator)
    n_image = GRID_THW[1] * GRID_THW[2] // config.vision_config.spatial_merge_size**2
    ids = torch.cat([text[:4], torch.full((n_image,), config.image_token_id), text[4:]])[None]
    vision = config.vision_config
    patch = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(
            GRID_THW[0] * GRID_THW[1] * GRID_THW[2], patch, generator=generator
        ),
        "image_grid_thw": torch.tensor([GRID_THW]),
        "mm_token_type_ids": (ids == config.image_token_id).int(),
    }


def test_greedy_with_3d_positions_equals_transformers_generate(
    glm4v_checkpoint: Path, reference: Glm4vForConditionalGeneration
) -> None:
    inputs = image_inputs(reference)
    ids = inputs["input_ids"][0]
    with torch.no_grad():
        expected = reference.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        one_d = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
        expected_1d = reference.generate(**one_d, max_new_tokens=NEW_TOKENS, do_sample=False)
        image = reference.model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
        ).pooler_output[0]
        positions, _ = reference.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"]
        )
    expected_tokens = expected[0, len(ids) :].tolist()
    assert expected_tokens != expected_1d[0, len(ids) :].tolist(), "positions must matter here"

    model = ServingGlm4.from_pretrained(glm4v_checkpoint, torch.float32, torch.device("cpu"))
    engine = make_engine(model, chunk=7, eos=())  # prefill chunks cut through the image
    offset = int(inputs["mm_token_type_ids"][0].argmax())
    engine.add(
        GenerateRequest(
            "img", tuple(ids.tolist()), segments=(MultimodalSegment(offset, image),),
            positions=PositionIds.of(positions[:, 0].tolist()),
            stopping=StoppingParams(NEW_TOKENS, ignore_eos=True),
        )
    )  # fmt: skip
    assert tokens(run_all(engine)["img"]) == expected_tokens


def test_positions_the_model_cannot_take_are_refused(tiny_model: ServingGlm4) -> None:
    engine = make_engine(tiny_model)  # GLM-4: one position per token
    rows = PositionIds(((0, 1, 2),) * 3)
    with pytest.raises(InvalidInput, match="1-D"):
        engine.add(GenerateRequest("r", (5, 6, 7), positions=rows))


def test_a_preempted_image_request_resumes_with_its_3d_positions(
    glm4v_checkpoint: Path, reference: Glm4vForConditionalGeneration
) -> None:
    """Recomputing after a preemption feeds generated tokens again: they take the positions
    after the prompt's largest one on every axis, so the tokens equal those made alone."""
    inputs = image_inputs(reference)
    with torch.no_grad():
        image = reference.model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
        ).pooler_output[0]
        positions, _ = reference.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"]
        )
    ids = inputs["input_ids"][0].tolist()
    offset = int(inputs["mm_token_type_ids"][0].argmax())

    def image_request(rid: str, first: int) -> GenerateRequest:
        return GenerateRequest(
            rid, (first, *ids[1:]), segments=(MultimodalSegment(offset, image),),
            positions=PositionIds.of(positions[:, 0].tolist()),
            stopping=StoppingParams(30, ignore_eos=True),
        )  # fmt: skip

    model = ServingGlm4.from_pretrained(glm4v_checkpoint, torch.float32, torch.device("cpu"))
    # 12 blocks of 8 tokens; each request needs 23 + 30 tokens (7 blocks) by its end
    small = {"total_tokens": 96, "max_model_len": 64, "block_size": 8, "eos": ()}
    alone = {}
    for rid, first in (("a", 5), ("b", 6)):
        engine = make_engine(model, **small)
        engine.add(image_request(rid, first))
        alone[rid] = tokens(run_all(engine)[rid])
    engine = make_engine(model, **small)
    engine.add(image_request("a", 5))
    engine.add(image_request("b", 6))
    together = {rid: tokens(outs) for rid, outs in run_all(engine).items()}
    assert engine.stats().preemptions >= 1, "the cache never ran out: the test lost its point"
    assert together == alone
