"""A GLM-4.1V prompt as the gateway builds it equals transformers' own: the same ids from the
checkpoint's template and tokenizer, and the same (t, h, w) rotary positions as get_rope_index."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, Glm4vForConditionalGeneration

from gateway.chat import ChatPrompter, Placeholder
from gateway.positions import mrope_positions
from gateway.protocol.chat_completions import ChatCompletionRequest
from tests.glm4v import CONVERSATIONS, as_template_messages, reference_inputs


@pytest.fixture(scope="module")
def model(glm4v_checkpoint: Path) -> Glm4vForConditionalGeneration:
    return Glm4vForConditionalGeneration.from_pretrained(glm4v_checkpoint).eval()


@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
def test_ids_and_positions_equal_transformers(
    glm4v_checkpoint: Path, model: Glm4vForConditionalGeneration, case: str
) -> None:
    messages, images = CONVERSATIONS[case]
    reference = reference_inputs(glm4v_checkpoint, as_template_messages(messages), images)
    grids = [tuple(int(x) for x in g) for g in reference["image_grid_thw"]]
    prompter = ChatPrompter.from_pretrained(glm4v_checkpoint, ("text", "image"))
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": messages})
    prompt = prompter.render(
        request.messages, [("image", t * h * w // 4) for t, h, w in grids], enable_thinking=False
    )
    assert prompt.input_ids == reference["input_ids"][0].tolist()

    images = list(zip(prompt.placeholders, grids, strict=True))
    positions = mrope_positions(len(prompt.input_ids), images, 2)
    expected, _ = model.model.get_rope_index(
        reference["input_ids"], reference["mm_token_type_ids"], reference["image_grid_thw"]
    )
    assert torch.equal(torch.tensor(positions), expected[:, 0, :])


def test_the_image_placeholder_is_the_checkpoints_own_id(glm4v_checkpoint: Path) -> None:
    prompter = ChatPrompter.from_pretrained(glm4v_checkpoint, ("text", "image"))
    assert prompter.image_id == AutoConfig.from_pretrained(glm4v_checkpoint).image_token_id
    assert prompter.audio_id is None


def test_text_only_prompts_take_text_positions_on_every_axis() -> None:
    assert mrope_positions(3, [], 2) == ((0, 1, 2), (0, 1, 2), (0, 1, 2))


def test_a_placeholder_that_does_not_fit_its_grid_is_an_error() -> None:
    with pytest.raises(ValueError, match="grid"):
        mrope_positions(10, [(Placeholder("image", 2, 5), (1, 4, 4))], 2)


def test_a_text_only_bundle_needs_no_media_tokens(glm4v_checkpoint: Path) -> None:
    prompter = ChatPrompter.from_pretrained(glm4v_checkpoint, ("text",))
    assert (prompter.image_id, prompter.audio_id) == (None, None)
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "<|image|> is text here"}]}
    )
    prompt = prompter.render(request.messages, [], enable_thinking=False)
    assert prompt.placeholders == []
    assert prompter.tokenizer.decode(prompt.input_ids).endswith(
        "<|image|> is text here<|assistant|>\n"
    )
