"""The decoder as a real process on a loopback port, driven by a real grpc client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import jsonschema
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tokenizers import Tokenizer

from autoglm.v1 import decoder_pb2, decoder_pb2_grpc, tensor_pb2
from services.common.health import DECODER_SERVICE
from testkit.processes import ServiceProcess, spawn

pytestmark = pytest.mark.stack  # every test here talks to service processes


@pytest.fixture(scope="module")
def decoder(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = spawn(
        "decoder",
        bundle_dir,
        tmp_path_factory.mktemp("decoder-logs"),
        args=["--quant", "none", "--enable-reflection"],
    )
    try:
        process.wait_ready()
        yield process
    finally:
        stopping = time.monotonic()
        process.stop()
    # an idle decoder stops at once on SIGTERM (interpreter teardown once took 6 s)
    assert process.proc.returncode == 0, process.log_tail()
    assert time.monotonic() - stopping < 3.0


def generate_request(
    max_tokens: int, prompt: list[int] | None = None, **fields
) -> decoder_pb2.GenerateRequest:
    return decoder_pb2.GenerateRequest(
        input_ids=prompt or [5, 6, 7, 8, 9],
        stopping=decoder_pb2.StoppingParams(max_tokens=max_tokens, ignore_eos=True),
        **fields,
    )


async def info(channel: grpc.aio.Channel) -> decoder_pb2.DecoderInfo:
    return await decoder_pb2_grpc.DecoderStub(channel).Info(decoder_pb2.DecoderInfoRequest())


async def test_generate_streams_one_token_per_step(decoder: ServiceProcess) -> None:
    async with grpc.aio.insecure_channel(decoder.target) as channel:
        stub = decoder_pb2_grpc.DecoderStub(channel)
        responses = [r async for r in stub.Generate(generate_request(6))]
        described = await info(channel)
    assert [len(r.token_ids) for r in responses] == [1] * 6
    assert [r.finish_reason for r in responses] == [decoder_pb2.FINISH_REASON_UNSPECIFIED] * 5 + [
        decoder_pb2.FINISH_REASON_LENGTH
    ]
    assert (responses[-1].prompt_tokens, responses[-1].completion_tokens) == (5, 6)
    assert described.model == "autoglm-phone-9b"
    assert (described.device, described.dtype, described.quantization) == ("cpu", "float32", "none")
    assert described.eos_token_ids and described.max_model_len > 0


async def test_cancelling_mid_stream_frees_the_request_and_its_cache(
    decoder: ServiceProcess,
) -> None:
    async with grpc.aio.insecure_channel(decoder.target) as channel:
        stub = decoder_pb2_grpc.DecoderStub(channel)
        call = stub.Generate(generate_request(100_000))
        received = 0
        async for _ in call:
            received += 1
            if received == 1:
                busy = await info(channel)
                assert (
                    busy.running_requests == 1 and busy.free_cache_tokens < busy.total_cache_tokens
                )
            if received == 3:
                call.cancel()
                break
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            state = await info(channel)
            if state.running_requests == 0 and state.free_cache_tokens == state.total_cache_tokens:
                break
            await asyncio.sleep(0.05)
    assert (state.running_requests, state.waiting_requests) == (0, 0)
    assert state.free_cache_tokens == state.total_cache_tokens


async def test_bad_requests_get_clear_status_codes(decoder: ServiceProcess) -> None:
    async with grpc.aio.insecure_channel(decoder.target) as channel:
        stub = decoder_pb2_grpc.DecoderStub(channel)
        limit = (await info(channel)).max_model_len
        with pytest.raises(grpc.aio.AioRpcError) as too_long:
            [r async for r in stub.Generate(generate_request(4, prompt=[5] * limit))]
        assert too_long.value.code() == grpc.StatusCode.OUT_OF_RANGE
        wrong_width = decoder_pb2.MultimodalSegment(
            offset=0,
            embeddings=tensor_pb2.Tensor(
                dtype=tensor_pb2.DTYPE_FLOAT32, shape=[1, 3], data=b"\0" * 12
            ),
        )
        with pytest.raises(grpc.aio.AioRpcError) as mismatch:
            [r async for r in stub.Generate(generate_request(4, segments=[wrong_width]))]
        assert mismatch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "hidden size" in (mismatch.value.details() or "")


async def test_health_names_the_service_and_reflection_lists_it(decoder: ServiceProcess) -> None:
    async with grpc.aio.insecure_channel(decoder.target) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=DECODER_SERVICE)
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name async for reply in replies for s in reply.list_services_response.service]
    assert DECODER_SERVICE in names


# -- constraints and the sampling fields through the real process --------------------------
# The grammar travels in the gRPC request and compiles against the bundle's tokenizer; a bad
# one is INVALID_ARGUMENT (a 400 at the gateway) while the service keeps serving.

CONSTRAINED_SCHEMA = {
    "type": "object",
    "properties": {
        "x": {"type": "integer", "minimum": 0, "maximum": 999},
        "ok": {"type": "boolean"},
    },
    "required": ["x", "ok"],
    "additionalProperties": False,
}


def sampled_request(seed: int, **fields) -> decoder_pb2.GenerateRequest:
    return decoder_pb2.GenerateRequest(
        input_ids=[20 + seed, 30, 40, 50],
        sampling=decoder_pb2.SamplingParams(temperature=1.0, seed=seed),
        stopping=decoder_pb2.StoppingParams(max_tokens=64),
        **fields,
    )


async def generate(target: str, pb: decoder_pb2.GenerateRequest) -> list[int]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = decoder_pb2_grpc.DecoderStub(channel)
        return [t async for r in stub.Generate(pb) for t in r.token_ids]


async def test_a_json_schema_constraint_over_grpc(
    decoder: ServiceProcess, bundle_dir: Path
) -> None:
    tokenizer = Tokenizer.from_file(str(bundle_dir / "decoder" / "tokenizer.json"))
    constraint = decoder_pb2.Constraint(json_schema=json.dumps(CONSTRAINED_SCHEMA))
    for seed in range(3):
        ids = await generate(decoder.target, sampled_request(seed, constraint=constraint))
        jsonschema.validate(
            json.loads(tokenizer.decode(ids, skip_special_tokens=True)), CONSTRAINED_SCHEMA
        )


async def test_a_bad_schema_is_invalid_argument(decoder: ServiceProcess) -> None:
    bad = decoder_pb2.Constraint(json_schema='{"type": "nonsense"}')
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await generate(decoder.target, sampled_request(0, constraint=bad))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid json_schema constraint" in (raised.value.details() or "")
    assert len(await generate(decoder.target, sampled_request(1))) > 0  # still serving


async def test_logit_bias_over_grpc(decoder: ServiceProcess) -> None:
    biased = sampled_request(2)
    biased.stopping.ignore_eos = True
    biased.stopping.max_tokens = 8
    biased.sampling.logit_bias[321] = 100.0
    assert await generate(decoder.target, biased) == [321] * 8
