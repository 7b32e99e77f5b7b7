"""The phone mix's in-process baseline: one image request's work without the services between.

The same parts the stack runs, loaded in the benchmark's own process with the settings
`autoglm up` gives them (an imported bundle: the decoder unquantized, the tower in LLM.int8(),
the projector in the gateway's fusion dtype), called directly on the same screenshot and
messages: the image processor (base64 and PNG decoding, resize, patching), the vision tower,
the fusion stage (gateway/fusion.py), the chat template with the image's placeholder span and
its 3-D positions, then the decoder engine stepped until the first token. What the services add
on top (HTTP and JSON, gRPC and the embeddings' bytes, the tasks and threads between) is
``through services / in process`` in bench/phone_agent.py (issue 12: at most 1.25x).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import openai
import torch
from openai.types.chat import ChatCompletionMessageParam
from rich.console import Console

from bench.chat_stream import Sampling, one_request
from bench.cpu import cpu_seconds
from bench.report import results_table
from bundle.layout import Bundle
from gateway.chat import ChatPrompter
from gateway.config import GatewayConfig
from gateway.fusion import FusionStage
from gateway.positions import image_layout
from gateway.protocol.chat_completions import ChatCompletionRequest
from gateway.protocol.messages import ImagePart
from services.decoder.config import DecoderConfig
from services.decoder.engine import Engine
from services.decoder.loader import load_decoder
from services.decoder.types import GenerateRequest, MultimodalSegment
from services.vision.config import VisionConfig
from services.vision.glm4v import load_glm4v_encoder


@dataclasses.dataclass(frozen=True)
class Stages:
    """Where one in-process request's time went, seconds."""

    preprocess_s: float  # base64 + PNG decode, resize, patching
    tower_s: float
    fusion_s: float
    prompt_s: float  # chat template, tokenizing, 3-D positions
    prefill_s: float  # engine steps until the first token
    prompt_tokens: int
    cached_tokens: int

    @property
    def ttft_s(self) -> float:
        return self.preprocess_s + self.tower_s + self.fusion_s + self.prompt_s + self.prefill_s


class InProcess:
    """The stack's parts in this process, on ``bundle`` (a GLM-4.1V one), with the settings
    the stack was started with: the image processor's ``max_pixels`` (0: the checkpoint's) and
    the decoder's KV cache size."""

    def __init__(self, bundle: Path, device: str, max_pixels: int, max_total_tokens: int) -> None:
        self.bundle = Bundle.load(bundle)
        gateway = GatewayConfig(bundle=bundle, device=device, vision_max_pixels=max_pixels)
        vision = VisionConfig(bundle=bundle, device=device, max_pixels=max_pixels)
        # `autoglm up` serves an imported bundle unquantized until `autoglm quantize` has run
        decoder = DecoderConfig(
            bundle=bundle, device=device, quantization="none", max_total_tokens=max_total_tokens
        )
        self.default_max_tokens = gateway.default_max_tokens
        self.prompter = ChatPrompter.from_pretrained(self.bundle.decoder, self.bundle.modalities)
        layout = image_layout(self.bundle, gateway)
        if layout is None:
            raise ValueError(f"{bundle}: the in-process baseline takes a GLM-4.1V bundle")
        self.layout = layout
        self.encoder = load_glm4v_encoder(self.bundle.vision, vision)
        self.fusion = FusionStage.for_bundle(
            self.bundle, torch.device(device), gateway.fusion_dtype
        )
        self.engine: Engine = load_decoder(decoder).engine
        self.requests = 0

    def first_token(self, model: str, messages: list[Any], max_tokens: int) -> Stages:
        """One chat request with one image, timed stage by stage to its first token; the rest
        of its completion is dropped (the engine frees it)."""
        body = ChatCompletionRequest.model_validate(
            {"model": model, "messages": messages, "max_tokens": max_tokens}
        )
        (part,) = body.media_parts()
        if not isinstance(part, ImagePart):
            raise ValueError("the in-process baseline takes one image")
        started = time.perf_counter()
        _, _, payload = part.image_url.url.partition(",")
        patched = self.encoder.decode(base64.b64decode(payload))
        encoded = time.perf_counter()
        (states,) = self.encoder.encode([patched])
        towered = time.perf_counter()
        (tokens,), _ = self.fusion.fuse([states], [])
        fused = time.perf_counter()
        prompt = self.prompter.render(
            body.messages, [("image", int(tokens.shape[0]))], enable_thinking=body.thinking
        )
        (placeholder,) = prompt.placeholders
        self.requests += 1
        request = GenerateRequest(
            request_id=f"in-process-{self.requests}",
            input_ids=tuple(prompt.input_ids),
            sampling=body.to_sampling_params(0),
            stopping=body.to_stopping_params(self.default_max_tokens),
            segments=(MultimodalSegment(placeholder.offset, tokens),),
            positions=self.layout.positions(prompt, [patched.grid_thw]),
        )
        prompted = time.perf_counter()
        self.engine.add(request)
        while not (outputs := self.engine.step()):
            pass
        first = time.perf_counter()
        self.engine.abort(request.request_id)
        while self.engine.has_work():
            self.engine.step()
        return Stages(
            preprocess_s=encoded - started,
            tower_s=towered - encoded,
            fusion_s=fused - towered,
            prompt_s=prompted - fused,
            prefill_s=first - prompted,
            prompt_tokens=outputs[0].prompt_tokens,
            cached_tokens=outputs[0].cached_tokens,
        )


async def baseline_pair(
    client: openai.AsyncOpenAI,
    model: str,
    local: InProcess,
    messages: list[ChatCompletionMessageParam],
    sampling: Sampling,
    stack_pids: Mapping[str, int],
    in_process_first: bool,
) -> dict[str, Any]:
    """One image request through the services and the same one in process, each with the CPU
    time it took (user + system: the stack's processes, or this one), steadier than wall time
    on a shared machine; the caller alternates which goes first."""

    async def services() -> tuple[float, dict[str, float]]:
        before = cpu_seconds(stack_pids)
        sample, _ = await one_request(client, model, messages, 2, sampling)
        return sample.ttft_s, {k: v - before[k] for k, v in cpu_seconds(stack_pids).items()}

    async def in_process() -> tuple[Stages, float]:
        before = time.process_time()
        stages = await asyncio.to_thread(local.first_token, model, messages, 2)
        return stages, time.process_time() - before

    if in_process_first:
        (stages, local_cpu), (through, stack_cpu) = await in_process(), await services()
    else:
        (through, stack_cpu), (stages, local_cpu) = await services(), await in_process()
    return {"services_ttft_s": through, "in_process_ttft_s": stages.ttft_s,
            "services_cpu_s": sum(stack_cpu.values()), "services_cpu_by_process_s": stack_cpu,
            "in_process_cpu_s": local_cpu,
            "in_process": dataclasses.asdict(stages)}  # fmt: skip


def summarize_baseline(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the pairs and their ratios, wall time (issue 12: at most 1.25x) and CPU."""
    if not pairs:
        return {"pairs": []}
    medians = {
        f"{key}_p50_s": statistics.median(p[f"{key}_s"] for p in pairs)
        for key in ("services_ttft", "in_process_ttft", "services_cpu", "in_process_cpu")
    }
    return {
        "pairs": pairs,
        **medians,
        "services_vs_in_process": medians["services_ttft_p50_s"] / medians["in_process_ttft_p50_s"],
        "services_vs_in_process_cpu": medians["services_cpu_p50_s"]
        / medians["in_process_cpu_p50_s"],
    }


def print_report(report: dict[str, Any], console: Console) -> None:
    """The turns table, the baseline table and the two ratios against their targets."""
    title = (
        f"phone agent: {report['turns']} turns, a new 1080x2400 screenshot per turn "
        f"(max_pixels {report['max_pixels'] or 'default'}), earlier ones dropped, "
        f"{report['max_tokens']} tokens per answer, on {report['device']}"
    )
    columns = ("conc", "turn", "TTFT p50 s", "TTFT max s", "prompt", "reusable", "cached")
    turns = results_table(title, columns)
    for cell in report["cells"]:
        for t in cell["turns"]:
            turns.add_row(
                str(cell["concurrency"]), str(t["turn"]), f"{t['ttft_p50_s']:.2f}",
                f"{t['ttft_max_s']:.2f}", f"{t['prompt_tokens_mean']:.0f}",
                f"{t['reusable_tokens_mean']:.0f}", f"{t['cached_tokens_mean']:.0f}",
            )  # fmt: skip
    console.print(turns)
    for cell in report["cells"]:
        console.print(
            f"concurrency {cell['concurrency']}: turn {len(cell['turns'])} / turn 1 TTFT "
            f"{cell['last_vs_first_ttft']:.2f}x (target <= 1.5x); cached / reusable prompt "
            f"tokens {cell['cache_hit_fraction']:.0%}"
        )
    baseline = report["baseline"]
    if not baseline["pairs"]:
        return
    # Short headers: a console that is not a terminal is 80 columns wide.
    pair_columns = ("stack", "in proc", "prep", "tower", "fusion", "prompt", "prefill",
                    "tokens", "cached")  # fmt: skip
    title = "an image request: through the stack, and in process (its stages), s"
    pairs = results_table(title, pair_columns)
    for pair in baseline["pairs"]:
        stages = pair["in_process"]
        pairs.add_row(
            f"{pair['services_ttft_s']:.2f}", f"{pair['in_process_ttft_s']:.2f}",
            *(f"{stages[k]:.2f}" for k in ("preprocess_s", "tower_s", "fusion_s", "prompt_s",
                                             "prefill_s")),
            str(stages["prompt_tokens"]), str(stages["cached_tokens"]),
        )  # fmt: skip
    console.print(pairs)
    console.print(
        f"TTFT through services / in process: {baseline['services_vs_in_process']:.2f}x "
        f"(target <= 1.25x); CPU time {baseline['services_cpu_p50_s']:.1f} s (the stack's "
        f"processes) / {baseline['in_process_cpu_p50_s']:.1f} s: "
        f"{baseline['services_vs_in_process_cpu']:.2f}x"
    )
