"""The local diffusers backends with tiny, randomly initialised pipelines built here (no downloads).

A Stable Diffusion and an InstructPix2Pix pipeline are assembled from small configs (a 2-block UNet, a
2-block VAE, a 1-layer CLIP text encoder, a CLIP tokenizer with a dozen-word vocabulary), saved with
``save_pretrained`` and loaded back by the backends from ``model_path`` — the path real models take.
"""

from __future__ import annotations

import asyncio
import json

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from llmi.config import Settings  # noqa: E402
from llmi.errors import ToolError  # noqa: E402
from llmi.images import ImageData  # noqa: E402
from llmi.tools import registry  # noqa: E402
from llmi.tools.base import BackendContext, ToolRequest  # noqa: E402
from llmi.tools.imagegen import pick_device, pick_dtype  # noqa: E402
from tests.helpers import make_png  # noqa: E402

pytestmark = pytest.mark.local_models


def tiny_tokenizer(folder):
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    # No merges: every word is spelt letter by letter, so different prompts give different tokens.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=32)


def tiny_components(tmp, unet_in_channels: int):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(tmp / "tok")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=16,
        num_attention_heads=2, num_hidden_layers=1, vocab_size=len(tokenizer), max_position_embeddings=32,
        projection_dim=16))
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=unet_in_channels,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16, norm_num_groups=4,
        attention_head_dim=2)
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.fixture(scope="module")
def sd_path(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    tmp = tmp_path_factory.mktemp("sd")
    StableDiffusionPipeline(**tiny_components(tmp, 4)).save_pretrained(tmp / "pipe")
    return tmp / "pipe"


@pytest.fixture(scope="module")
def ip2p_path(tmp_path_factory):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    tmp = tmp_path_factory.mktemp("ip2p")
    StableDiffusionInstructPix2PixPipeline(**tiny_components(tmp, 8)).save_pretrained(tmp / "pipe")
    return tmp / "pipe"


@pytest.fixture
def ctx():
    # The diffusers backends use neither client; the engine always passes them, so do we (as None).
    return BackendContext(settings=Settings(), http=None, fetcher=None)  # type: ignore[arg-type]


def t2i(ctx, path, **opts):
    cls = registry.get("diffusion", "diffusers")
    return cls(cls.Options(model_path=str(path), num_inference_steps=2, height=32, width=32, seed=0, **opts), ctx)


def prompt(text: str = "a red fox in the snow") -> ToolRequest:
    return ToolRequest(tool="diffusion", params={"prompt": text})


async def test_text_to_image_from_a_saved_pipeline(ctx, sd_path):
    backend = t2i(ctx, sd_path, guidance_scale=3.0)
    assert backend.status().state == "ok"
    result = await backend.run(prompt())
    assert (result.image.width, result.image.height, result.image.mime) == (32, 32, "image/png")
    assert ImageData.from_bytes(result.image.data).width == 32  # a real, decodable PNG
    assert result.provenance == {"backend": "diffusion.diffusers", "model": str(sd_path),
                                 "prompt": "a red fox in the snow"}
    pipe = backend.runner._pipe
    assert type(pipe).__name__ == "StableDiffusionPipeline" and backend.runner.device == pick_device("auto")
    # Loaded once; the same seed gives the same image, another prompt another one.
    again = await backend.run(prompt())
    other = await backend.run(prompt("a blue cat"))
    assert backend.runner._pipe is pipe
    assert again.image.data == result.image.data and other.image.data != result.image.data
    await backend.aclose()
    assert backend.runner._pipe is None


async def test_concurrent_first_calls_load_once_and_leave_the_loop_free(ctx, sd_path, monkeypatch):
    from diffusers import DiffusionPipeline

    loads = []
    real = DiffusionPipeline.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args[0])
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(counting))
    backend = t2i(ctx, sd_path)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    tick = asyncio.create_task(ticker())
    try:
        results = await asyncio.gather(*(backend.run(prompt(p)) for p in ("a fox", "a cat", "the sky")))
    finally:
        tick.cancel()
    assert len(loads) == 1
    assert len({r.image.data for r in results}) == 3
    assert ticks > 5  # the event loop kept running while the pipeline loaded and ran in threads


async def test_explicit_pipeline_class_and_unknown_ones(ctx, sd_path):
    ok = t2i(ctx, sd_path, pipeline_class="StableDiffusionPipeline")
    assert (await ok.run(prompt())).image.width == 32
    for bad in ("NoSuchPipeline", "UNet2DConditionModel"):
        with pytest.raises(ToolError) as err:
            await t2i(ctx, sd_path, pipeline_class=bad).run(prompt())
        assert err.value.kind == "misconfigured"
    # Edit families resolve by name without loading anything.
    runner = t2i(ctx, sd_path, pipeline_class="FluxKontextPipeline").runner
    assert runner.resolve_class() is diffusers.FluxKontextPipeline
    runner = t2i(ctx, sd_path, pipeline_class="QwenImageEditPipeline").runner
    assert runner.resolve_class() is diffusers.QwenImageEditPipeline


async def test_missing_or_broken_model_path(ctx, tmp_path):
    cls = registry.get("diffusion", "diffusers")
    empty = cls(cls.Options(), ctx)
    assert empty.status().state == "misconfigured"
    missing = t2i(ctx, tmp_path / "nope")
    assert missing.status().state == "misconfigured"
    with pytest.raises(ToolError) as err:
        await missing.run(prompt())
    assert err.value.kind == "misconfigured"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text("{not json")
    with pytest.raises(ToolError) as err:
        await t2i(ctx, tmp_path / "broken").run(prompt())
    assert err.value.kind == "model_load_error"


async def test_bad_call_arguments_are_an_inference_error(ctx, sd_path):
    backend = t2i(ctx, sd_path, call_kwargs={"num_images_per_prompt": -3})
    with pytest.raises(ToolError) as err:
        await backend.run(prompt())
    assert err.value.kind == "inference_error"


def test_status_without_torch_or_diffusers(ctx, sd_path):
    cls = registry.get("diffusion", "diffusers")
    assert cls.requires == ("torch", "diffusers") and cls.extra == "local"

    class Missing(cls):
        requires = ("llmi_no_such_module",)

    status = Missing(cls.Options(model_path=str(sd_path)), ctx).status()
    assert status.state == "missing_dependency" and "llmi[local]" in status.detail


def test_cache_identity_and_device_choice(ctx, sd_path):
    ident = t2i(ctx, sd_path, guidance_scale=4.0).cache_identity()
    assert ident["model"] == str(sd_path) and ident["num_inference_steps"] == 2
    assert ident["guidance_scale"] == 4.0 and ident["height"] == 32 and ident["seed"] == 0
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else pick_device("auto"))
    assert pick_device("cpu") == "cpu"
    assert pick_dtype("auto", "cpu") is torch.float32 and pick_dtype("float16", "cpu") is torch.float16
    with pytest.raises(ToolError):
        pick_dtype("float7", "cpu")


# ------------------------------------------------------------------------------------------------
# Edit
# ------------------------------------------------------------------------------------------------


def edit_backend(ctx, path, **opts):
    cls = registry.get("edit", "diffusers")
    return cls(cls.Options(model_path=str(path), num_inference_steps=2, seed=0, **opts), ctx)


async def test_instruct_pix2pix_edit(ctx, ip2p_path):
    source = ImageData.from_bytes(make_png(32, 32, (10, 150, 240)))
    backend = edit_backend(ctx, ip2p_path, image_guidance_scale=1.5, guidance_scale=3.0)
    request = ToolRequest(tool="edit", params={"img_index": 0, "prompt": "make the sky purple"}, input_image=source)
    result = await backend.run(request)
    assert type(backend.runner._pipe).__name__ == "StableDiffusionInstructPix2PixPipeline"
    assert (result.image.width, result.image.height) == (32, 32)
    assert result.image.data != source.data
    assert result.provenance["input_sha256"] == source.sha256
    assert result.provenance["backend"] == "edit.diffusers"
    # The edit depends on the input image.
    other = ImageData.from_bytes(make_png(32, 32, (250, 250, 10)))
    changed = await backend.run(ToolRequest(tool="edit", params=request.params, input_image=other))
    assert changed.image.data != result.image.data
    assert "image_guidance_scale" in backend.cache_identity()


async def test_edit_converts_palette_images_and_needs_an_input(ctx, ip2p_path):
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("P", (32, 32), 3).save(buf, format="GIF")
    backend = edit_backend(ctx, ip2p_path)
    result = await backend.run(ToolRequest(tool="edit", params={"img_index": 0, "prompt": "make it blue"},
                                           input_image=ImageData.from_bytes(buf.getvalue())))
    assert result.image.mime == "image/png"
    with pytest.raises(ToolError) as err:
        await backend.run(ToolRequest(tool="edit", params={"img_index": 0, "prompt": "make it blue"}))
    assert err.value.kind == "missing_input"


# ------------------------------------------------------------------------------------------------
# The reference Qwen-Image server, end to end with the qwen-server backends
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def reference_server():
    import threading

    from llmi.tools.imagegen import DiffusersRunner
    from llmi.tools.qwen_image_server import make_server

    started = []

    def start(path, mode, **defaults):
        runner = DiffusersRunner(model_path=str(path), pipeline_class="auto", device="cpu", dtype="float32")
        server = make_server(runner, mode=mode, port=0, defaults={"num_inference_steps": 2, **defaults})
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


async def test_reference_server_with_the_qwen_server_backends(sd_path, ip2p_path, reference_server):
    import httpx

    gen_url = reference_server(sd_path, "generation", height=32, width=32)
    edit_url = reference_server(ip2p_path, "edit")
    async with httpx.AsyncClient() as client:
        ctx = BackendContext(settings=Settings(), http=client, fetcher=None)  # type: ignore[arg-type]
        gen_cls, edit_cls = registry.get("diffusion", "qwen-server"), registry.get("edit", "qwen-server")
        gen = gen_cls(gen_cls.Options(servers=[gen_url], height=32, width=32), ctx)
        edit = edit_cls(edit_cls.Options(servers=[edit_url]), ctx)
        assert (await gen.probe()).state == "ok" and (await edit.probe()).state == "ok"
        assert (await edit_cls(edit_cls.Options(servers=[gen_url]), ctx).probe()).state == "misconfigured"

        made = await gen.run(prompt())
        assert (made.image.width, made.image.height) == (32, 32) and made.provenance["server"] == gen_url
        edited = await edit.run(ToolRequest(tool="edit", params={"img_index": 0, "prompt": "make it blue"},
                                            input_image=made.image))
        assert (edited.image.width, edited.image.height) == (32, 32)

        # Failures as the recipe's server reports them.
        wrong = await client.post(f"{gen_url}/edit/", json={"prompt": "x", "image_b64": "AAAA"})
        assert wrong.status_code == 400 and "mode" in wrong.json()["detail"]
        bad = await client.post(f"{edit_url}/edit/", json={"prompt": "x", "image_b64": "aGVsbG8="})
        assert bad.status_code == 422 and "image" in bad.json()["detail"]
        missing = await client.post(f"{gen_url}/generate/", json={"height": 32})
        assert missing.status_code == 422
        health = (await client.get(f"{gen_url}/health")).json()
        assert health == {"status": "ok", "mode": "generation"}
