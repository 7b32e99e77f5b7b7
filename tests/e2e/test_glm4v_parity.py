"""A GLM-4.1V checkpoint served by the real processes answers as transformers' own model.

A tiny random Glm4vForConditionalGeneration (the real files and layout, other special-token ids,
weights large enough that 1-D positions would change its first tokens) is imported with
`autoglm bundle import` and served with every stage in fp32 and quantization off. For a prompt
with one image and one with two images of different sizes, the server's prompt length, its 24
greedy tokens and their logprobs equal transformers' generate() with 3-D positions (it uses them
only when given mm_token_type_ids).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoTokenizer, Glm4vForConditionalGeneration

from gateway.reasoning import token_bytes
from services import cli
from testkit.processes import ServiceProcess, spawn
from tests.glm4v import CONVERSATIONS, as_template_messages, reference_inputs

pytestmark = pytest.mark.stack
TOKENS = 24
LOGPROB_TOLERANCE = 2e-3
# Every stage in fp32, quantization off.
VISION_FP32 = {"AUTOGLM_VISION_QUANTIZATION": "none", "AUTOGLM_VISION_OUTPUT_DTYPE": "float32"}
DECODER_FP32 = {"AUTOGLM_DECODER_QUANT": "none", "AUTOGLM_DECODER_DTYPE": "float32"}
GATEWAY_FP32 = {"AUTOGLM_GATEWAY_FUSION_DTYPE": "float32"}


@pytest.fixture(scope="module")
def served(glm4v_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway URL of vision, decoder and gateway on the imported checkpoint, all fp32."""
    root = tmp_path_factory.mktemp("glm4v-parity")
    checkpoint = Path(shutil.copytree(glm4v_checkpoint, root / "GLM-4.1V"))
    assert cli.main(["bundle", "import", str(checkpoint)]) == 0
    # Configured through the variables a deployment sets, which proves they are wired.
    vision = spawn("vision", checkpoint, root, env=VISION_FP32)
    decoder = spawn("decoder", checkpoint, root, env=DECODER_FP32)
    started: list[ServiceProcess] = [vision, decoder]
    try:
        vision.wait_ready()
        decoder.wait_ready()
        # No audio target: the bundle has no audio part, so the gateway never calls one.
        gateway = spawn(
            "gateway", checkpoint, root,
            ["--vision-target", vision.target, "--decoder-target", decoder.target],
            env=GATEWAY_FP32,
        )  # fmt: skip
        started.append(gateway)
        gateway.wait_ready()
        yield gateway.url
    finally:
        for process in reversed(started):
            process.stop()


@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
def test_served_tokens_and_logprobs_equal_transformers_with_3d_positions(
    served: str, glm4v_checkpoint: Path, case: str
) -> None:
    messages, images = CONVERSATIONS[case]
    body = {
        "model": "autoglm-phone-9b", "messages": messages, "max_tokens": TOKENS,
        "temperature": 0, "ignore_eos": True, "logprobs": True,
    }  # fmt: skip
    reply = httpx.post(f"{served}/v1/chat/completions", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    served_tokens = answer["choices"][0]["logprobs"]["content"]

    model = Glm4vForConditionalGeneration.from_pretrained(glm4v_checkpoint).eval()
    inputs = reference_inputs(glm4v_checkpoint, as_template_messages(messages), images)
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=TOKENS, do_sample=False, eos_token_id=None,
            output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
    prompt_length = inputs["input_ids"].shape[1]
    ids = out.sequences[0, prompt_length:].tolist()
    steps = zip(out.logits, ids, strict=True)
    logprobs = [float(torch.log_softmax(step[0], -1)[i]) for step, i in steps]
    tokenizer = AutoTokenizer.from_pretrained(glm4v_checkpoint).backend_tokenizer

    assert answer["usage"]["prompt_tokens"] == prompt_length
    # the tiny vocabulary is the tokenizer's, so a token's bytes name its id
    assert [t["bytes"] for t in served_tokens] == [list(token_bytes(tokenizer, i)) for i in ids]
    assert [t["logprob"] for t in served_tokens] == pytest.approx(logprobs, abs=LOGPROB_TOLERANCE)
