"""Batched preprocessing equals the vision encoder's own image processor (tolerance: none, bit-identical) on
shapes-world JPEGs and on odd sizes, aspect ratios, grayscale, RGBA and palette images; otherwise it is not used."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from shard_helpers import world_samples
from transformers import CLIPImageProcessor, CLIPImageProcessorPil

from gill.data.precompute import (
    BATCHED_PIXEL_TOLERANCE,
    BatchPreprocessor,
    batch_preprocessor,
    batched_difference,
    decode_image,
    preprocess_images,
    probe_images,
)
from gill.data.shards import ShardSample

SIZES = [(256, 256), (256, 256), (640, 480), (480, 640), (31, 257), (257, 31), (1, 300), (300, 1), (8, 8), (32, 32)]
"""(width, height): the world's 256 px squares twice (one stack), landscape and portrait, odd and prime sides, a
1-pixel line each way, images smaller than the crop and exactly the crop."""


def noise(size: tuple[int, int], mode: str, seed: int) -> Image.Image:
    """Uniform noise in ``mode`` (the worst case for a resize: no two neighbouring taps agree)."""
    w, h = size
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "P": 1, "CMYK": 4}[mode]
    array = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    if mode in ("L", "P"):
        image = Image.fromarray(array[..., 0], "L")
        return image.convert("P") if mode == "P" else image
    return Image.fromarray(array, "RGBA" if mode == "CMYK" else mode).convert(mode)


def jpeg_sample(image: Image.Image, key: str) -> ShardSample:
    """``image`` stored as the downloader stores it: a JPEG in a shard sample."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return ShardSample(key=key, caption="noise", jpeg=buffer.getvalue(), meta={})


def odd_images() -> list[Image.Image]:
    """RGB noise of every SIZES entry, plus grayscale, RGBA, palette, CMYK and colour-keyed (palette and RGB) images."""
    images = [noise(size, "RGB", seed) for seed, size in enumerate(SIZES)]
    images += [noise((90, 60), "L", 50), noise((60, 90), "RGBA", 51), noise((70, 70), "P", 52)]
    images.append(noise((50, 70), "CMYK", 54))
    transparent = noise((64, 48), "P", 53)
    transparent.info["transparency"] = 7  # palette index 7 is see-through: the processor composites onto white
    keyed = noise((48, 64), "RGB", 55)
    keyed.paste((10, 200, 30), (12, 16, 36, 48))  # a block in the middle, kept by any crop
    keyed.info["transparency"] = (10, 200, 30)  # an RGB PNG's tRNS colour: see-through as well
    return [*images, transparent, keyed]


PROCESSORS = {
    "tiny preset (32 px, bicubic)": {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}},
    "mid-size (128 px)": {"size": {"shortest_edge": 128}, "crop_size": {"height": 128, "width": 128}},
    "ViT-L/14 (224 px)": {},
    "fixed 40x24 bilinear, no crop": {
        "size": {"height": 40, "width": 24},
        "do_center_crop": False,
        "resample": Image.Resampling.BILINEAR,
    },
    "crop larger than the resize (pads)": {"size": {"shortest_edge": 20}, "crop_size": {"height": 28, "width": 28}},
}


def assert_same(pixels: BatchPreprocessor, images: list[Image.Image]) -> None:
    want = preprocess_images(pixels.image_processor, images)  # the processor, image by image
    got = pixels(images)
    assert got.shape == want.shape and got.dtype == want.dtype == torch.float32
    assert float((got - want).abs().max()) <= BATCHED_PIXEL_TOLERANCE
    assert torch.equal(got, want)  # the stated tolerance is zero


@pytest.mark.parametrize("settings", PROCESSORS.values(), ids=PROCESSORS.keys())
def test_batched_preprocessing_is_bit_identical_on_odd_images(settings):
    pixels = batch_preprocessor(CLIPImageProcessor(**settings))
    assert pixels.batched
    images = odd_images()
    assert_same(pixels, images)  # as given: the processor's own conversion of L, RGBA and P
    decoded = [decode_image(jpeg_sample(im.convert("RGB"), f"{i:09d}"), "00000.tar") for i, im in enumerate(images)]
    assert_same(pixels, decoded)  # as the stage gives them: JPEGs decoded to RGB
    assert_same(pixels, images[:1])  # a batch of one


def test_batched_preprocessing_and_pooled_features_equal_the_processor_on_world_jpegs(small_world, tiny_config):
    from gill.factory import load_backbones

    vision = load_backbones(tiny_config, roles=("vision",))
    pixels = batch_preprocessor(vision.image_processor)
    assert pixels.batched
    images = [decode_image(s, "00000.tar") for s in world_samples(small_world, 16)]
    assert_same(pixels, images)
    with torch.inference_mode():
        want = vision.vision(pixel_values=preprocess_images(vision.image_processor, images)).pooler_output
        got = vision.vision(pixel_values=pixels(images)).pooler_output  # (N, Dv)
    assert got.shape == (len(images), 48) and torch.equal(got, want)


def test_a_processor_of_another_backend_or_with_its_own_steps_is_called_as_it_is():
    pil = batch_preprocessor(CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}))
    assert not pil.batched
    images = odd_images()
    assert torch.equal(pil(images), preprocess_images(pil.image_processor, images))

    class Padding(CLIPImageProcessor):
        def _preprocess(self, images, **kwargs):  # a model whose processor adds its own steps
            return super()._preprocess(images, **kwargs)

    assert not batch_preprocessor(Padding()).batched
    assert not batch_preprocessor(CLIPImageProcessor(do_pad=True, pad_size={"height": 240, "width": 240})).batched


def test_a_batched_path_that_differs_on_the_probe_is_not_used(monkeypatch):
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    candidate = batch_preprocessor(processor)
    assert candidate.batched and batched_difference(candidate, probe_images()) == 0.0
    real = BatchPreprocessor._transform
    monkeypatch.setattr(BatchPreprocessor, "_transform", lambda self, stack: real(self, stack) + 1e-4)
    assert batched_difference(candidate, probe_images()) == pytest.approx(1e-4, rel=0.01)
    assert not batch_preprocessor(processor).batched  # refused: the processor is used


def test_the_probe_covers_several_shapes_and_modes():
    images = probe_images()
    assert len({im.size for im in images}) >= 6 and {"RGB", "L", "RGBA"} <= {im.mode for im in images}
    assert [np.asarray(a).tobytes() for a in images] == [np.asarray(b).tobytes() for b in probe_images()]
