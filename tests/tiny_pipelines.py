"""Tiny, randomly initialised FLUX Kontext, Qwen-Image and Qwen-Image-Edit pipelines, built offline.

diffusers' own tests for these families load their tokenizers (and a T5 config) from the Hugging Face
Hub; this module builds every piece from a config instead, so the tests need no network:

* the CLIP tokenizer spells words letter by letter (as in ``tests/test_diffusers_local.py``);
* the T5 tokenizer is a Unigram model over single letters plus ``<pad>``/``</s>``/``<unk>``;
* the Qwen tokenizer is a byte-level BPE with the 256 byte symbols and no merges, plus the chat and vision
  special tokens the Qwen-Image prompt templates use (``<|im_start|>``, ``<|image_pad|>``, ...). Their ids
  are written into the Qwen2.5-VL config, so the text encoder finds the image tokens the processor expands.

Weights are random (seeded), so the images are noise — the tests check plumbing, sizes and determinism,
not pictures. Import only after torch, diffusers and transformers are known to be installed.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

#: Qwen chat/vision special tokens, appended after the 256 byte symbols.
QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
)


def clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for letter in string.ascii_lowercase:
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=32)


def t5_tokenizer():
    from transformers import T5Tokenizer  # the tokenizers-backed ("fast") class in transformers 5

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + string.digits]
    pieces += [("\u2581" + c, -2.5) for c in string.ascii_letters]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def qwen_tokenizer():
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[])
    tok.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIALS)})
    return tok


def flux_kontext(tmp: Path):
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline,
                           FluxTransformer2DModel)
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(tmp / "clip")
    tokenizer_2 = t5_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=16,
        num_attention_heads=2, num_hidden_layers=1, vocab_size=len(tokenizer), max_position_embeddings=77,
        projection_dim=16))
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=16, d_kv=8, d_ff=16, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=[4, 4, 8])
    # One VAE block: no downsampling (vae_scale_factor 1), one latent channel packed 2x2 into 4.
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035)
    return FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)


def qwen_text_encoder(tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 2, "vocab_size": len(tokenizer),
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                       "out_hidden_size": 16, "fullatt_block_indexes": [0]},
        hidden_size=16, vocab_size=len(tokenizer),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def qwen_vae_and_transformer():
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    torch.manual_seed(0)
    # patch_size 2 over 4 latent channels: 16 input channels, as in diffusers' own tiny config.
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    z_dim = 4
    # Three downsamplings (vae_scale_factor 8, as in the real model): Qwen-Image-Edit always encodes the
    # input at about a megapixel, and 8x keeps that at 64x64 packed tokens rather than 128x128.
    vae = AutoencoderKLQwenImage(
        base_dim=4, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)
    return vae, transformer


def qwen_image():
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    vae, transformer = qwen_vae_and_transformer()
    tokenizer = qwen_tokenizer()
    return QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer,
                             text_encoder=qwen_text_encoder(tokenizer), tokenizer=tokenizer)


def torchvision_works() -> bool:
    """Whether torchvision imports: it may be missing, or a CUDA build that fails next to a CPU torch
    ("operator torchvision::nms does not exist") — the only kind this machine's package index has."""
    import importlib

    try:
        importlib.import_module("torchvision")
    except Exception:
        return False
    return True


def qwen_processor(tokenizer):
    """A Qwen2-VL processor that turns any image into 4 image tokens.

    The pipeline hands it the input image at about a megapixel; ``min_pixels = max_pixels = 56*56``
    shrinks that to 4x4 patches of 14 px, merged 2x2 into 4 ``<|image_pad|>`` tokens.

    transformers 5 gives ``Qwen2VLProcessor`` a video processor slot that only torchvision can fill;
    without torchvision the caller must patch the slot away (see ``images_only_qwen_processor``).
    """
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14,
                                               merge_size=2, temporal_patch_size=2)
    if torchvision_works():  # pragma: no cover - not installable next to the CPU torch used here
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                video_processor=Qwen2VLVideoProcessor())
    return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)


def images_only_qwen_processor(monkeypatch) -> None:
    """Without torchvision, let ``Qwen2VLProcessor`` be built, saved and loaded with no video processor.

    In transformers 5 the processor's sub-processor list always includes ``video_processor``, whose class
    (and ``AutoVideoProcessor``) exist only with torchvision, so construction fails with
    ``VIDEO_PROCESSOR_MAPPING has no attribute '_extra_content'`` and loading with an ImportError. Qwen-Image-
    Edit never sends videos, so narrowing the list to image processor + tokenizer changes nothing the
    pipeline uses. A no-op where torchvision works.
    """
    if torchvision_works():  # pragma: no cover
        return
    from transformers import Qwen2VLProcessor

    images_and_text = classmethod(lambda cls: ["image_processor", "tokenizer"])
    monkeypatch.setattr(Qwen2VLProcessor, "get_attributes", images_and_text)


def qwen_image_edit():
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline

    vae, transformer = qwen_vae_and_transformer()
    tokenizer = qwen_tokenizer()
    return QwenImageEditPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer,
        text_encoder=qwen_text_encoder(tokenizer), tokenizer=tokenizer, processor=qwen_processor(tokenizer))
