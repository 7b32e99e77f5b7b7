"""bench/phone_agent.py: the conversation is PhoneAgent's, the prefix cache serves what each
turn shares with the one before, and turns are summarized over the clients."""

from __future__ import annotations

import argparse
import base64
import shutil
from pathlib import Path

import pytest
from phone_agent.model.client import MessageBuilder

from bench.chat_stream import Sample
from bench.phone_agent import Turn, cache_tokens, summarize_turns
from bench.phone_baseline import LEGS, rotated, summarize_baseline
from bench.phone_conversation import Messages, Reuse, user_message, without_images
from bench.phone_inprocess import InProcess
from bundle.hf_import import import_checkpoint
from gateway.protocol.chat_completions import ChatCompletionRequest
from testkit.media import image_bytes

IMAGE = 99


def turn(ttft_s: float, reusable: int = 700, cached: int = 700) -> Turn:
    return Turn(Sample(ttft_s, None, ttft_s + 1, 4000, cached, 4), reusable)


def test_earlier_screenshots_are_dropped_as_phone_agent_drops_them() -> None:
    message = user_message(
        "Open Settings.", client=0, turn=1, screenshot="data:image/png;base64,AA"
    )
    parts = list(message["content"])
    assert [p["type"] for p in parts] == ["image_url", "text"]  # PhoneAgent's order
    theirs = MessageBuilder.remove_images_from_message({"role": "user", "content": parts})
    assert without_images(message) == theirs
    assert theirs["content"][0]["text"].startswith("** Screen Info **")  # a later turn's header


def test_turns_are_the_median_over_clients() -> None:
    runs = [
        [turn(10.0), turn(12.0, reusable=800, cached=400)],
        [turn(20.0), turn(30.0)],
        [turn(11.0), turn(14.0)],
    ]
    cell = summarize_turns(3, runs)
    assert [t["ttft_p50_s"] for t in cell["turns"]] == [11.0, 14.0]
    assert [t["ttft_max_s"] for t in cell["turns"]] == [20.0, 30.0]
    assert [t["reusable_tokens_mean"] for t in cell["turns"]] == [700, 2200 / 3]
    assert cell["last_vs_first_ttft"] == 14.0 / 11.0
    assert cell["cache_hit_fraction"] == (5 * 700 + 400) / (5 * 700 + 800)
    assert cell["requests"] == 6 and cell["totals"]["completion_tokens"] == 24


def test_reuse_is_the_common_prefix_in_whole_blocks_before_the_new_image() -> None:
    reuse = Reuse(block_size=4, image_token=IMAGE)
    history = list(range(1, 11))
    assert reuse.tokens([*history, 50, 51], [*history, 60]) == 8  # 10 shared: 2 blocks
    # the same placeholder ids at the same place are still a different screenshot
    assert reuse.tokens([*history, IMAGE, IMAGE, 7], [*history, IMAGE, IMAGE, 8]) == 8
    assert reuse.tokens([1, 2, 3, 4], [1, 2, 3, 4]) == 0  # the last token is always computed
    assert reuse.tokens([1, 2, 3, 4, 5], []) == 0


def test_the_cache_holds_every_clients_longest_turn_twice() -> None:
    args = argparse.Namespace(turns=10, max_tokens=16, concurrency=[1, 8])
    assert cache_tokens(args, 189) == 2 * 8 * (800 + 189 + 10 * (16 + 64))
    small = argparse.Namespace(turns=1, max_tokens=4, concurrency=[1])
    assert cache_tokens(small, 21) == 16384  # never below the decoder's default


@pytest.fixture(scope="module")
def local(glm4v_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> InProcess:
    root = tmp_path_factory.mktemp("phone-mix")
    bundle = import_checkpoint(shutil.copytree(glm4v_checkpoint, root / "checkpoint")).root
    return InProcess(bundle, "cpu", max_pixels=0, max_total_tokens=4096)


def test_each_turn_is_served_from_the_cache_up_to_the_dropped_screenshot(
    local: InProcess,
) -> None:
    """The engine's cached tokens per turn equal what Reuse expects of the prompts: the 3-D
    positions and the image placeholders of earlier turns do not break the shared prefix."""
    reuse = Reuse(local.engine.cache.block_size, local.prompter.image_id or -1)
    messages: Messages = [{"role": "system", "content": "You operate a phone for the user."}]
    before: list[int] = []
    for number in range(3):
        png = image_bytes("PNG", (56 + 28 * number, 84), seed=number)
        screen = f"data:image/png;base64,{base64.b64encode(png).decode()}"
        user = user_message("Open Settings.", 0, number, screen)
        messages.append(user)
        body = ChatCompletionRequest.model_validate({"model": "m", "messages": messages})
        grid = local.layout.grid(png)
        ids = local.prompter.render(
            body.messages, [("image", local.layout.tokens(grid))], enable_thinking=False
        ).input_ids
        stages = local.first_token("m", messages, 2)
        assert stages.prompt_tokens == len(ids)
        assert stages.cached_tokens == reuse.tokens(ids, before)
        if number:
            assert stages.cached_tokens > 0
        before = ids
        messages[-1] = without_images(user)
        messages.append({"role": "assistant", "content": "do(action='Back')"})


def _round(services: float, local: float, services_cpu: float, local_cpu: float) -> dict:
    """A baseline round: the gateway's TTFT and the stack's CPU, the in-process stages (all in
    prefill), and the hop-by-hop leg (vision 0.1 s, decoder 0.5 s)."""
    hops = {"load": 0.0, "vision_rpc": 0.1, "fusion": 0.0, "prompt": 0.0, "decoder_rpc": 0.5}
    return {
        "order": list(LEGS),
        "services": {"ttft_s": services, "cpu_s": services_cpu,
                     "cpu_by_process_s": {"gateway": 0.1, "decoder": services_cpu - 0.1}},
        "in_process": {"ttft_s": local, "cpu_s": local_cpu, "wall": {"prefill": local},
                       "cpu": {"prefill": local_cpu}},
        "rpc": {"ttft_s": 0.6, "wall": hops},
    }  # fmt: skip


def test_the_baseline_verdict_is_the_median_of_each_rounds_ratio_with_its_spread() -> None:
    rounds = [_round(3.0, 2.0, 6.0, 4.0), _round(5.0, 4.0, 9.0, 6.0), _round(9.0, 3.0, 7.0, 5.0)]
    summary = summarize_baseline(rounds)
    wall, cpu = summary["services_vs_in_process"], summary["services_vs_in_process_cpu"]
    assert wall["p50"] == 1.5 and (wall["min"], wall["max"]) == (1.25, 3.0)
    assert cpu["p50"] == 1.5 and (cpu["min"], cpu["max"]) == (1.4, 1.5)
    assert summary["services_ttft_p50_s"] == 5.0 and summary["in_process_ttft_p50_s"] == 3.0
    # the gateway's share: its TTFT less the hops the services were called by directly
    assert summary["gateway_share_p50_s"] == 5.0 - 0.6
    assert summary["services_cpu_by_process_p50_s"]["decoder"] == 6.9
    assert summarize_baseline([]) == {"rounds": []}


def test_each_leg_takes_each_place_in_the_order_in_turn() -> None:
    orders = [rotated(k) for k in range(3)]
    for place in range(len(LEGS)):
        assert sorted(order[place] for order in orders) == sorted(LEGS)
    assert rotated(3) == rotated(0)
