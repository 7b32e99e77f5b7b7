"""The GLM-4.1V vision tower: transformers' processor and layers on a tiny random checkpoint in
the real layout; tower + projector equal transformers' own image features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Glm4vForConditionalGeneration

from bundle.glm4v import MAX_PIXELS
from bundle.glm4v_projector import Glm4vProjector
from gateway.fusion import FusionStage
from services.encoder.types import encode_response_from_pb, encode_response_to_pb
from services.vision.glm4v import Glm4vVisionEncoder, load_glm4v_tower, patch_batches
from services.vision.glm4v_preprocess import Glm4vImagePreprocessor, PatchedImage
from services.vision.preprocess import ImageLimits
from testkit.media import image_bytes
from tests.encoders.test_int8_accuracy import GATE, mean_cosine
from tests.memory import peak_growth_bytes

CPU = torch.device("cpu")
LIMITS = ImageLimits(max_bytes=2**30, max_pixels=2**30)
SCREENSHOT = (1080, 2400)


@pytest.fixture(scope="module")
def preprocess(glm4v_checkpoint: Path) -> Glm4vImagePreprocessor:
    return Glm4vImagePreprocessor.load(glm4v_checkpoint, LIMITS)


@pytest.fixture(scope="module")
def fp32_encoder(glm4v_checkpoint: Path) -> Glm4vVisionEncoder:
    return Glm4vVisionEncoder(load_glm4v_tower(glm4v_checkpoint, CPU, "none", 0.0), 1 << 20)


@pytest.fixture(scope="module")
def phone_preprocess(glm4v_checkpoint: Path) -> Glm4vImagePreprocessor:
    """The tiny checkpoint's processor at the real checkpoint's pixel bounds."""
    return Glm4vImagePreprocessor.load(glm4v_checkpoint, LIMITS, max_pixels=MAX_PIXELS)


def test_a_phone_screenshot_is_13416_patches_and_3354_tokens(
    phone_preprocess: Glm4vImagePreprocessor,
) -> None:
    image = phone_preprocess(image_bytes("PNG", size=SCREENSHOT))
    # smart_resize: 2400 x 1080 -> 2408 x 1092 (multiples of 28), 14-pixel patches.
    assert image.grid_thw == (1, 172, 78)
    assert image.pixels.shape == (13416, 3 * 2 * 14 * 14)
    assert image.num_patches // 4 == 3354
    assert phone_preprocess.grid(height=2400, width=1080) == image.grid_thw


@pytest.mark.parametrize("size", [(30, 30), (100, 60), (64, 130), (1000, 20), (4000, 3000)])
def test_the_grid_from_the_header_is_the_processors_grid(
    preprocess: Glm4vImagePreprocessor, size: tuple[int, int]
) -> None:
    width, height = size
    assert preprocess.grid(height, width) == preprocess(image_bytes("PNG", size=size)).grid_thw


def test_max_pixels_bounds_the_resize_like_the_processor_setting(glm4v_checkpoint: Path) -> None:
    small = Glm4vImagePreprocessor.load(glm4v_checkpoint, LIMITS, max_pixels=2 * 28 * 28 * 100)
    t, h, w = small(image_bytes("PNG", size=SCREENSHOT)).grid_thw
    # the bound counts the two temporal frames of a still image, as transformers does
    assert 2 * (h * 14) * (w * 14) <= 2 * 28 * 28 * 100
    assert (t, h % 2, w % 2) == (1, 0, 0)
    with pytest.raises(ValueError, match="below the processor's minimum"):
        Glm4vImagePreprocessor.load(glm4v_checkpoint, LIMITS, max_pixels=100)


def test_tower_and_projector_equal_transformers_image_features(
    glm4v_checkpoint: Path, preprocess: Glm4vImagePreprocessor, fp32_encoder: Glm4vVisionEncoder
) -> None:
    images = [
        preprocess(image_bytes("PNG", size=(100, 60), seed=0)),
        preprocess(image_bytes("JPEG", size=(64, 130), seed=1)),
    ]
    grids = torch.tensor([image.grid_thw for image in images])
    pixels = torch.cat([image.pixels for image in images])
    with torch.inference_mode():
        states = fp32_encoder.tower(pixels, grids).split([i.num_patches for i in images])
    projector = Glm4vProjector.from_checkpoint(glm4v_checkpoint, dtype=torch.float32)
    ours = [
        projector.fuse_image(s, image.grid_thw) for s, image in zip(states, images, strict=True)
    ]
    model = Glm4vForConditionalGeneration.from_pretrained(glm4v_checkpoint, dtype=torch.float32)
    with torch.inference_mode():
        reference = model.eval().model.get_image_features(pixels, grids).pooler_output
    for mine, theirs in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_an_images_states_do_not_depend_on_its_batch(
    preprocess: Glm4vImagePreprocessor, fp32_encoder: Glm4vVisionEncoder
) -> None:
    a = preprocess(image_bytes("PNG", size=(100, 60), seed=0))
    b = preprocess(image_bytes("PNG", size=(200, 90), seed=2))
    alone = fp32_encoder.encode([a])[0].tensor
    packed = [e.tensor for e in fp32_encoder.encode([b, a, b])]
    assert [p.shape[0] for p in packed] == [b.num_patches, a.num_patches, b.num_patches]
    torch.testing.assert_close(packed[1], alone, rtol=0, atol=1e-3)  # fp16 on the way out


def test_batches_pack_whole_images_up_to_the_patch_budget() -> None:
    def image(n: int) -> PatchedImage:
        return PatchedImage(torch.zeros(n, 1), (1, 1, n))

    images = [image(n) for n in (4, 4, 8, 20, 4)]
    assert list(patch_batches(images, max_patches=8)) == [[0, 1], [2], [3], [4]]


def test_a_screenshots_attention_never_holds_a_dense_patch_matrix(
    phone_preprocess: Glm4vImagePreprocessor, fp32_encoder: Glm4vVisionEncoder
) -> None:
    image = phone_preprocess(image_bytes("PNG", size=SCREENSHOT))
    [states], growth = peak_growth_bytes(lambda: fp32_encoder.encode([image]))
    assert states.tensor.shape == (13416, fp32_encoder.tower.config.hidden_size)
    assert states.grid_thw == (1, 172, 78)
    heads = fp32_encoder.tower.config.num_heads
    dense = heads * image.num_patches**2 * 4  # one fp32 [heads, n, n] score matrix: 2.9 GB
    assert growth < dense / 10


def test_int8_patch_states_match_fp32(
    glm4v_checkpoint: Path, preprocess: Glm4vImagePreprocessor, fp32_encoder: Glm4vVisionEncoder
) -> None:
    formats = ["PNG", "JPEG", "WEBP"] * 2
    images = [
        preprocess(image_bytes(fmt, size=(64 + 40 * i, 120 - 8 * i), seed=i))
        for i, fmt in enumerate(formats)
    ]
    int8 = Glm4vVisionEncoder(load_glm4v_tower(glm4v_checkpoint, CPU, "int8", 6.0), 1 << 20)
    linears = [m for m in int8.tower.modules() if type(m) is torch.nn.Linear]
    assert not linears  # every Linear is LLM.int8(); the Conv3d and the norms stay fp32
    assert int8.tower.patch_embed.proj.weight.dtype == torch.float32
    reference = [e.tensor for e in fp32_encoder.encode(images)]
    assert mean_cosine(reference, [e.tensor for e in int8.encode(images)]) >= GATE


def test_projecting_in_the_service_answers_the_gateways_tokens(
    glm4v_checkpoint: Path, preprocess: Glm4vImagePreprocessor, fp32_encoder: Glm4vVisionEncoder
) -> None:
    images = [preprocess(image_bytes("PNG", size=(100, 60), seed=0))]
    projector = Glm4vProjector.from_checkpoint(glm4v_checkpoint, dtype=torch.float32)
    projecting = Glm4vVisionEncoder(fp32_encoder.tower, 1 << 20, torch.float32, projector)
    [tokens] = projecting.encode(images)
    assert tokens.projected and tokens.grid_thw == images[0].grid_thw
    # over the wire and through the gateway's fusion: passed through, as the gateway would fuse
    [received] = encode_response_from_pb(encode_response_to_pb([tokens]))
    stage = FusionStage(projector, torch.float32)
    [passed], _ = stage.fuse([received], [])
    states = Glm4vVisionEncoder(fp32_encoder.tower, 1 << 20, torch.float32).encode(images)
    [fused], _ = stage.fuse(states, [])
    assert passed.shape == (images[0].num_patches // 4, 128)
    torch.testing.assert_close(passed, fused, rtol=1e-5, atol=1e-5)
