"""`autoglm serve vision` on an imported GLM-4.1V bundle: each image's patch states come back
with its grid_thw, equal to the tower run in this process."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import torch

from autoglm.v1 import encoder_pb2, vision_pb2_grpc
from bundle.hf_import import import_checkpoint
from services.encoder.types import (
    EncoderInfo,
    MediaItem,
    encode_request_to_pb,
    encode_response_from_pb,
)
from services.vision.glm4v import Glm4vVisionEncoder, load_glm4v_tower
from services.vision.glm4v_preprocess import Glm4vImagePreprocessor
from services.vision.preprocess import ImageLimits
from testkit.media import image_bytes
from tests.encoders.helpers import Started, client_channel, start_encoder

pytestmark = pytest.mark.stack  # every test here talks to a service process

ARGS = ["--device", "cpu", "--quantization", "none", "--output-dtype", "float32"]


@pytest.fixture(scope="module")
def started(glm4v_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    bundle = tmp_path_factory.mktemp("glm4v-bundle") / "tiny"
    shutil.copytree(glm4v_checkpoint, bundle)
    import_checkpoint(bundle)
    service = start_encoder("vision", bundle, tmp_path_factory.mktemp("vision-logs"), ARGS)
    yield service
    assert service.process.stop() == 0, service.process.log_tail()


@pytest.fixture
async def stub(started: Started) -> AsyncIterator[vision_pb2_grpc.VisionEncoderStub]:
    async with client_channel(started.process.target) as channel:
        yield vision_pb2_grpc.VisionEncoderStub(channel)


async def test_each_image_comes_back_with_its_grid_and_the_towers_states(
    stub: vision_pb2_grpc.VisionEncoderStub, glm4v_checkpoint: Path
) -> None:
    images = [image_bytes("PNG", size=(100, 60), seed=0), image_bytes("JPEG", (64, 130), 1)]
    reply = await stub.Encode(encode_request_to_pb([MediaItem(data) for data in images]))
    served = encode_response_from_pb(reply)
    preprocess = Glm4vImagePreprocessor.load(glm4v_checkpoint, ImageLimits(2**30, 2**30))
    patched = [preprocess(data) for data in images]
    tower = load_glm4v_tower(glm4v_checkpoint, torch.device("cpu"), "none", 0.0)
    local = Glm4vVisionEncoder(tower, 1 << 20, torch.float32).encode(patched)
    assert [e.grid_thw for e in served] == [p.grid_thw for p in patched]
    for mine, theirs in zip(served, local, strict=True):
        assert mine.tensor.dtype == torch.float32
        torch.testing.assert_close(mine.tensor, theirs.tensor, rtol=1e-5, atol=1e-5)


async def test_info_names_the_glm4v_tower_and_its_width(
    stub: vision_pb2_grpc.VisionEncoderStub,
) -> None:
    info = EncoderInfo.from_pb(await stub.Info(encoder_pb2.EncoderInfoRequest()))
    assert (info.model, info.quantization, info.hidden_size) == ("Glm4vVisionModel", "none", 64)
