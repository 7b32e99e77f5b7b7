"""The decoder quantization variants bench/quant.py compares, and what it measures of each: weight
bytes by component, the serving engine's decode step time, and next-token distortion against
FP32."""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from transformers import Glm4ForCausalLM

from bundle.layout import Bundle
from services.decoder.config import DecoderConfig
from services.decoder.engine import Engine
from services.decoder.loader import load_decoder
from services.decoder.params import StoppingParams
from services.decoder.quant import apply_quantization
from services.decoder.types import GenerateRequest

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    quant: str
    dtype: str
    lm_head: bool = False  # GPTQ of the lm_head as well


VARIANTS = (
    Variant("FP32", "none", "float32"),
    Variant("BF16", "none", "bfloat16"),
    Variant("GPTQ-4bit", "gptq", "bfloat16"),
    Variant("GPTQ-4bit + lm_head", "gptq", "bfloat16", lm_head=True),
    Variant("GPTQ-4bit (fp32 rest)", "gptq", "float32"),
    Variant("NF4", "nf4", "bfloat16"),
    Variant("INT8", "int8", "bfloat16"),
)


def component(name: str) -> str:
    if name.startswith("model.embed_tokens"):
        return "embeddings"
    if name.startswith("lm_head"):
        return "lm_head"
    if ".self_attn." in name or ".mlp." in name:
        return "layer_linears"
    return "norms"


def weight_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of everything the state dict holds (quantization statistics included), by part."""
    sizes = {"layer_linears": 0, "embeddings": 0, "lm_head": 0, "norms": 0}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        # tied weights count once; oneDNN-repacked weights have no data pointer but are never tied
        key = id(tensor) if tensor.is_mkldnn else tensor.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        sizes[component(name)] += tensor.numel() * tensor.element_size()
    return sizes | {"total": sum(sizes.values())}


def decode_step_s(engine: Engine, batch: int, prompt: int, new_tokens: int, tag: str) -> float:
    """Median wall time of an engine step once every request is decoding."""
    generator = torch.Generator().manual_seed(batch)
    for i in range(batch):
        ids = torch.randint(100, engine.vocab_size, (prompt,), generator=generator).tolist()
        stopping = StoppingParams(max_tokens=new_tokens, ignore_eos=True)
        engine.add(GenerateRequest(f"{tag}-{i}", tuple(ids), stopping=stopping))
    started: set[str] = set()
    times: list[float] = []
    while engine.has_work():
        begin = time.perf_counter()
        outputs = engine.step()
        elapsed = time.perf_counter() - begin
        if len(started) == batch and len(outputs) == batch:
            times.append(elapsed)
        started.update(out.request_id for out in outputs)
    return statistics.median(times)


def distortion(
    bundle: Bundle, variant: Variant, ids: torch.Tensor, reference: torch.Tensor
) -> dict[str, float]:
    """KL(FP32 || variant) of next-token distributions and argmax agreement, teacher-forced."""
    model = Glm4ForCausalLM.from_pretrained(bundle.decoder, dtype=DTYPES[variant.dtype]).eval()
    apply_quantization(model, variant.quant, bundle, torch.device("cpu"))
    with torch.inference_mode():
        logits = model(input_ids=ids).logits.float()
    kl = F.kl_div(
        logits.log_softmax(-1), reference.log_softmax(-1), log_target=True, reduction="none"
    )
    agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
    return {"kl": float(kl.sum(-1).mean()), "greedy_agreement": float(agree)}


def load_engine(bundle: Bundle, variant: Variant, prompt: int, device: str) -> Engine:
    config = DecoderConfig(
        bundle=bundle.root, quantization=variant.quant, dtype=variant.dtype, device=device,
        max_total_tokens=4096,
    )  # fmt: skip
    engine = load_decoder(config).engine
    decode_step_s(engine, 1, prompt, 4, f"{variant.name}-warm")  # first calls allocate
    return engine


def latencies(
    engines: dict[str, Engine], args: argparse.Namespace, console: Console
) -> dict[str, dict[int, float]]:
    """Per variant and batch size, the best of ``--rounds`` medians. Variants take turns within
    each round, so load from other processes falls on all of them alike."""
    rounds: dict[str, dict[int, list[float]]] = {n: {1: [], 16: []} for n in engines}
    for index in range(args.rounds):
        for batch in (1, 16):
            for name, engine in engines.items():
                tag = f"{name}-r{index}-b{batch}"
                step = decode_step_s(engine, batch, args.prompt, args.new_tokens, tag)
                rounds[name][batch].append(step)
        console.print(f"latency round {index + 1}/{args.rounds} done")
    return {
        name: {b: min(times) for b, times in by_batch.items()} for name, by_batch in rounds.items()
    }
