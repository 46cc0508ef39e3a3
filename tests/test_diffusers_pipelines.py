"""Qwen-Image, Qwen-Image-Edit and FLUX Kontext through the local diffusers backends, end to end.

Each pipeline is assembled from tiny configs with random weights (``tests/tiny_pipelines.py``: 1-layer
transformers, 16-wide text encoders, tokenizers built offline), written with ``save_pretrained`` and loaded
back by the backend from ``model_path`` — the path a downloaded checkpoint takes. Nothing is downloaded.

Two things about the environment, both worked around in the open:

* transformers 5 cannot build or load a ``Qwen2VLProcessor`` without torchvision (its video-processor slot
  needs it), and the only torchvision wheels reachable here are CUDA builds that do not import next to the
  CPU torch. ``tiny_pipelines.images_only_qwen_processor`` narrows the processor to image processor +
  tokenizer for the Qwen-Image-Edit tests; the last test shows what a user without torchvision gets.
* Qwen-Image-Edit encodes its input at about a megapixel whatever the output size (5-7 s of VAE on two CPU
  cores). One test runs that real path; the others shrink the pipeline's target area to 64x64 with
  ``small_edit_area``. FLUX Kontext's input resizing (``_auto_resize``) and T5 length are turned down
  through ``call_kwargs``, the knob operators have for the same thing.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from llmi.config import Settings  # noqa: E402
from llmi.errors import ToolError  # noqa: E402
from llmi.images import ImageData  # noqa: E402
from llmi.tools import registry  # noqa: E402
from llmi.tools.base import BackendContext, ToolRequest  # noqa: E402
from tests import tiny_pipelines as tiny  # noqa: E402
from tests.helpers import make_png  # noqa: E402

pytestmark = pytest.mark.local_models

#: FLUX Kontext call knobs that keep the tiny pipeline tiny: no resize of the input to a ~1 MP Kontext
#: resolution, a 16-token T5 prompt, and a pixel budget equal to the 32x32 output.
KONTEXT_SMALL = {"_auto_resize": False, "max_sequence_length": 16, "max_area": 32 * 32}


@pytest.fixture(scope="module")
def qwen_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen") / "pipe"
    tiny.qwen_image().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def qwen_edit_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen-edit") / "pipe"
    with pytest.MonkeyPatch.context() as mp:
        tiny.images_only_qwen_processor(mp)
        tiny.qwen_image_edit().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def kontext_path(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kontext")
    tiny.flux_kontext(tmp).save_pretrained(tmp / "pipe")
    return tmp / "pipe"


@pytest.fixture
def images_only_processor(monkeypatch):
    tiny.images_only_qwen_processor(monkeypatch)


@pytest.fixture
def small_edit_area(monkeypatch):
    """Qwen-Image-Edit sizes the encoded input for 1024*1024 pixels; ask for 64*64 instead."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as module

    real = module.calculate_dimensions
    monkeypatch.setattr(module, "calculate_dimensions", lambda area, ratio: real(64 * 64, ratio))


@pytest.fixture
def ctx():
    return BackendContext(settings=Settings(), http=None, fetcher=None)  # type: ignore[arg-type]


def backend(tool, ctx, path, **opts):
    cls = registry.get(tool, "diffusers")
    # LLMI_TEST_DEVICE=auto (scripts/gpu_check.sh) runs the same pipelines on a GPU when there is one.
    opts = {"num_inference_steps": 2, "seed": 0, "device": os.environ.get("LLMI_TEST_DEVICE", "cpu"), **opts}
    return cls(cls.Options(model_path=str(path), **opts), ctx)


def edit_request(image: ImageData, prompt: str = "make the sky purple") -> ToolRequest:
    return ToolRequest(tool="edit", params={"img_index": 0, "prompt": prompt}, input_image=image)


def assert_png(result, width, height):
    assert (result.image.width, result.image.height, result.image.mime) == (width, height, "image/png")
    decoded = ImageData.from_bytes(result.image.data)  # a real, decodable PNG of that size
    assert (decoded.width, decoded.height) == (width, height)


BLUE = make_png(32, 32, (10, 150, 240))
YELLOW = make_png(32, 32, (250, 250, 10))


# ------------------------------------------------------------------------------------------------
# Qwen-Image (text to image)
# ------------------------------------------------------------------------------------------------


async def test_qwen_image_text_to_image(ctx, qwen_path):
    gen = backend("diffusion", ctx, qwen_path, height=32, width=48)
    first = await gen.run(ToolRequest(tool="diffusion", params={"prompt": "a red fox in the snow"}))
    assert type(gen.runner._pipe).__name__ == "QwenImagePipeline"  # found through model_index.json
    assert_png(first, 48, 32)
    assert first.provenance == {"backend": "diffusion.diffusers", "model": str(qwen_path),
                                "prompt": "a red fox in the snow"}
    again = await gen.run(ToolRequest(tool="diffusion", params={"prompt": "a red fox in the snow"}))
    other = await gen.run(ToolRequest(tool="diffusion", params={"prompt": "a blue cat"}))
    assert again.image.data == first.image.data  # same seed, same image
    assert other.image.data != first.image.data  # the prompt reaches the Qwen2.5-VL text encoder
    await gen.aclose()


async def test_qwen_image_true_cfg_with_a_negative_prompt(ctx, qwen_path):
    request = ToolRequest(tool="diffusion", params={"prompt": "a red fox in the snow"})
    plain = backend("diffusion", ctx, qwen_path, pipeline_class="QwenImagePipeline", height=32, width=32)
    guided = backend("diffusion", ctx, qwen_path, pipeline_class="QwenImagePipeline", height=32, width=32,
                     negative_prompt="blurry, low quality", true_cfg_scale=4.0)
    without, with_cfg = await plain.run(request), await guided.run(request)
    assert_png(with_cfg, 32, 32)
    assert with_cfg.image.data != without.image.data  # true_cfg_scale + negative_prompt were passed through
    assert guided.cache_identity()["negative_prompt"] == "blurry, low quality"


# ------------------------------------------------------------------------------------------------
# Qwen-Image-Edit
# ------------------------------------------------------------------------------------------------


async def test_qwen_image_edit_at_the_pipelines_own_input_resolution(ctx, qwen_edit_path,
                                                                    images_only_processor):
    # The input is encoded at ~1 MP as in production (the slow path: one call only).
    source = ImageData.from_bytes(BLUE)
    edit = backend("edit", ctx, qwen_edit_path, pipeline_class="QwenImageEditPipeline", height=32, width=48)
    result = await edit.run(edit_request(source))
    assert type(edit.runner._pipe).__name__ == "QwenImageEditPipeline"
    assert_png(result, 48, 32)  # height/width options decide the output size
    assert result.provenance == {"backend": "edit.diffusers", "model": str(qwen_edit_path),
                                 "prompt": "make the sky purple", "input_sha256": source.sha256}


async def test_qwen_image_edit_follows_image_and_instruction(ctx, qwen_edit_path, images_only_processor,
                                                             small_edit_area):
    edit = backend("edit", ctx, qwen_edit_path, height=32, width=32, image_guidance_scale=1.5)
    blue, yellow = ImageData.from_bytes(BLUE), ImageData.from_bytes(YELLOW)
    first = await edit.run(edit_request(blue))
    assert type(edit.runner._pipe).__name__ == "QwenImageEditPipeline"  # "auto"
    assert_png(first, 32, 32)
    assert (await edit.run(edit_request(blue))).image.data == first.image.data
    # The input image reaches both the VAE latents and the VL text encoder (as image tokens).
    assert (await edit.run(edit_request(yellow))).image.data != first.image.data
    assert (await edit.run(edit_request(blue, "make it night"))).image.data != first.image.data
    # image_guidance_scale (InstructPix2Pix only) was dropped rather than failing the call.
    assert edit.cache_identity()["image_guidance_scale"] == 1.5


async def test_qwen_image_edit_without_torchvision_is_a_typed_load_error(ctx, qwen_edit_path):
    if tiny.torchvision_works():  # pragma: no cover
        pytest.skip("torchvision is installed: the processor loads for real")
    edit = backend("edit", ctx, qwen_edit_path, height=32, width=32)
    with pytest.raises(ToolError) as err:
        await edit.run(edit_request(ImageData.from_bytes(BLUE)))
    assert err.value.kind == "model_load_error"
    # A checkpoint's own processor folder fails on torchvision; ours, saved without one, on the file.
    assert "video processor" in str(err.value).lower() or "torchvision" in str(err.value).lower()
    assert edit.runner._pipe is None


# ------------------------------------------------------------------------------------------------
# FLUX Kontext
# ------------------------------------------------------------------------------------------------


async def test_flux_kontext_edit(ctx, kontext_path):
    edit = backend("edit", ctx, kontext_path, height=32, width=32, guidance_scale=2.5,
                   image_guidance_scale=1.5, call_kwargs=KONTEXT_SMALL)
    blue, yellow = ImageData.from_bytes(BLUE), ImageData.from_bytes(YELLOW)
    first = await edit.run(edit_request(blue))
    assert type(edit.runner._pipe).__name__ == "FluxKontextPipeline"  # "auto", from model_index.json
    assert_png(first, 32, 32)
    assert first.provenance["input_sha256"] == blue.sha256 and first.provenance["model"] == str(kontext_path)
    assert (await edit.run(edit_request(blue))).image.data == first.image.data
    assert (await edit.run(edit_request(yellow))).image.data != first.image.data
    # The instruction goes through both CLIP (pooled) and T5 (sequence) encoders.
    assert (await edit.run(edit_request(blue, "make it night"))).image.data != first.image.data
    await edit.aclose()
    assert edit.runner._pipe is None


async def test_flux_kontext_explicit_class_and_palette_input(ctx, kontext_path):
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("P", (32, 32), 3).save(buf, format="GIF")
    edit = backend("edit", ctx, kontext_path, pipeline_class="FluxKontextPipeline", height=32, width=32,
                   call_kwargs=KONTEXT_SMALL)
    result = await edit.run(edit_request(ImageData.from_bytes(buf.getvalue())))
    assert_png(result, 32, 32)


async def test_flux_kontext_honours_height_and_width_without_max_area(ctx, kontext_path, monkeypatch):
    # Without the fix the pipeline would denoise a 1024x1024 latent (minutes on a CPU), so a spy records
    # the size the pipeline settled on and stops the call there.
    seen = []

    class Stop(Exception):
        pass

    def spy(self, image, batch_size, channels, height, width, *args, **kwargs):
        seen.append((height, width))
        raise Stop

    monkeypatch.setattr(diffusers.FluxKontextPipeline, "prepare_latents", spy)
    edit = backend("edit", ctx, kontext_path, height=32, width=32,
                   call_kwargs={"_auto_resize": False, "max_sequence_length": 16})
    with pytest.raises(ToolError):
        await edit.run(edit_request(ImageData.from_bytes(BLUE)))
    assert seen == [(32, 32)], f"the pipeline generated at {seen}"
