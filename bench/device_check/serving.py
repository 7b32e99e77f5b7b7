"""The services' own load functions, in process, on the device against the same on the CPU.

The decoder (gptq, nf4, int8, none) must say it runs on the device and decode greedily as it
does on the CPU at the same dtype; the vision and audio towers (INT8) must give the CPU's
embeddings for the same media.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from bench.device_check.measure import mean_cosine, peak_mib, release, synchronize
from bench.device_check.runner import Check, Probe
from bundle.layout import Bundle
from services.audio.config import AudioConfig
from services.audio.model import load_encoder as load_audio_encoder
from services.decoder.config import QUANT_CHOICES, DecoderConfig
from services.decoder.gptq_linear import GPTQLinear
from services.decoder.loader import LoadedDecoder, load_decoder
from services.decoder.params import StoppingParams
from services.decoder.types import GenerateRequest
from services.encoder.pipeline import MediaEncoder
from services.encoder.types import MediaItem
from services.vision.config import VisionConfig
from services.vision.model import load_encoder as load_vision_encoder
from testkit.media import audio_bytes, image_bytes

PROMPTS = (
    "The quick brown fox",
    "Once upon a time, in a land far away, there lived",
    "def add(a, b):",
    "Tap the search bar, type the address and press enter. Then",
)
NEW_TOKENS = 16
# Exact weights (none) or the same int4 codes (gptq) must pick the same first token on any
# device; bitsandbytes' CPU and CUDA kernels round differently, so nf4/int8 only report it.
FIRST_TOKEN_MUST_MATCH = ("gptq", "none")
MIN_TOWER_COSINE = 0.99


def serving_checks(bundle: Path, device: torch.device) -> Iterator[Check]:
    for quant in QUANT_CHOICES:
        yield Check(f"decoder {quant}", partial(check_decoder, bundle, device, quant))
    if device.type == "cuda":
        yield Check("decoder gptq cuda graphs", partial(check_cuda_graphs, bundle, device))
    images = [MediaItem(image_bytes(seed=seed)) for seed in (1, 2)]
    clips = [MediaItem(audio_bytes(seconds, seed=seed)) for seconds, seed in ((1.0, 1), (0.5, 2))]
    load_vision = partial(_load_tower, load_vision_encoder, VisionConfig, bundle)
    load_audio = partial(_load_tower, load_audio_encoder, AudioConfig, bundle)
    yield Check("vision tower int8", partial(check_tower, load_vision, images, device))
    yield Check("audio tower int8", partial(check_tower, load_audio, clips, device))


def prompt_ids(bundle: Path) -> list[tuple[int, ...]]:
    tokenizer = AutoTokenizer.from_pretrained(Bundle.load(bundle).decoder)
    return [tuple(tokenizer(text)["input_ids"]) for text in PROMPTS]


def greedy(decoder: LoadedDecoder, prompts: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """NEW_TOKENS greedy tokens per prompt, the prompts decoded together as one batch."""
    engine = decoder.engine
    stopping = StoppingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    for index, ids in enumerate(prompts):
        engine.add(GenerateRequest(request_id=str(index), input_ids=ids, stopping=stopping))
    tokens: dict[str, list[int]] = {str(index): [] for index in range(len(prompts))}
    while engine.has_work():
        for output in engine.step():
            tokens[output.request_id].extend(output.token_ids)
    return [tuple(tokens[str(index)]) for index in range(len(prompts))]


def check_decoder(bundle: Path, device: torch.device, quant: str, probe: Probe) -> None:
    prompts = prompt_ids(bundle)
    release(device)
    decoder = load_decoder(DecoderConfig(bundle=bundle, device=str(device), quantization=quant))
    info = decoder.info()
    probe.record(device=info.device, dtype=info.dtype, quantization=info.quantization)
    probe.require(info.device == str(device), f"Info reports device {device}")
    if quant == "gptq":
        kernels = {m.kernel for m in decoder.engine.model.modules() if isinstance(m, GPTQLinear)}
        probe.record(kernels=",".join(sorted(kernels)))
        probe.require(kernels == {f"int4-{device.type}"}, f"every GPTQ layer on int4-{device.type}")
    synchronize(device)
    started = time.perf_counter()
    got = greedy(decoder, prompts)
    synchronize(device)
    probe.record(generate_s=time.perf_counter() - started, peak_mib=peak_mib(device))
    probe.require(
        all(len(tokens) == NEW_TOKENS for tokens in got), f"{NEW_TOKENS} tokens per prompt"
    )
    del decoder
    release(device)

    # The reference: the same engine on the CPU, at the dtype the device ran.
    reference = load_decoder(
        DecoderConfig(bundle=bundle, device="cpu", quantization=quant, dtype=info.dtype)
    )
    want = greedy(reference, prompts)
    pairs = [(a, b) for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=False)]
    first = sum(g[:1] == w[:1] for g, w in zip(got, want, strict=True))
    probe.record(
        token_match=sum(a == b for a, b in pairs) / max(len(pairs), 1),
        first_token_match=f"{first}/{len(prompts)}",
    )
    if quant in FIRST_TOKEN_MUST_MATCH:
        probe.require(first == len(prompts), "every prompt's first token matches the CPU")


def check_cuda_graphs(bundle: Path, device: torch.device, probe: Probe) -> None:
    """Decode steps replayed as CUDA graphs (--cuda-graphs) give the eager engine's greedy
    tokens for the same batch; both timed, each after a first run that captures or warms."""
    prompts = prompt_ids(bundle)
    timings = {}
    outputs = {}
    for graphs in (False, True):
        release(device)
        config = DecoderConfig(bundle=bundle, device=str(device), cuda_graphs=graphs)
        decoder = load_decoder(config)
        greedy(decoder, prompts)  # captures each bucket the batch passes through
        synchronize(device)
        started = time.perf_counter()
        outputs[graphs] = greedy(decoder, prompts)
        synchronize(device)
        timings[graphs] = time.perf_counter() - started
        if graphs:
            runner_graphs = decoder.engine.runner.graphs
            probe.record(buckets=len(runner_graphs.graphs) if runner_graphs else 0)
        del decoder
    probe.record(eager_s=timings[False], graphs_s=timings[True], peak_mib=peak_mib(device))
    probe.require(outputs[True] == outputs[False], "the graphs decode the eager tokens")


def _load_tower(
    load: Callable[[Any], MediaEncoder[Any]],
    config_class: type[VisionConfig] | type[AudioConfig],
    bundle: Path,
    device: str,
) -> MediaEncoder[Any]:
    return load(config_class(bundle=bundle, device=device, quantization="int8"))


def check_tower(
    load: Callable[[str], MediaEncoder[Any]],
    items: list[MediaItem],
    device: torch.device,
    probe: Probe,
) -> None:
    """The service's own pipeline (decode, preprocess, INT8 tower) on the device and the CPU."""
    release(device)
    encoder = load(str(device))
    probe.record(device=encoder.info.device, quantization=encoder.info.quantization)
    probe.require(encoder.info.device == str(device), f"Info reports device {device}")
    got = [e.tensor for e in encoder(items)]
    probe.record(peak_mib=peak_mib(device))
    del encoder
    release(device)
    want = [e.tensor for e in load("cpu")(items)]
    shapes_match = [g.shape == w.shape for g, w in zip(got, want, strict=True)]
    probe.require(all(shapes_match), "embedding shapes match the CPU's")
    cosine = sum(mean_cosine(g, w) for g, w in zip(got, want, strict=True)) / len(items)
    probe.record(tokens=sum(len(g) for g in got), cosine=cosine)
    probe.require(cosine >= MIN_TOWER_COSINE, f"mean cosine to the CPU >= {MIN_TOWER_COSINE}")
