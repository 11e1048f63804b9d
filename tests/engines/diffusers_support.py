"""Tiny random diffusers pipelines for the engine's tests, built locally (no download), as diffusers'
own test suite builds them (``get_dummy_components``): real pipeline classes, schedulers and VAEs with
a few thousand random weights, saved with ``save_pretrained`` so the engine loads them by path.

``word_tokenizer()`` is a tokenizer made with the ``tokenizers`` library (a word-level vocabulary and a
chat template), wrapped in ``PreTrainedTokenizerFast``: what a Qwen-style text encoder's tokenizer
does for the pipelines, without fetching one. The video tests reuse it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: nothing is fetched

WORDS = [
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "at",
    "with",
    "and",
    "to",
    "is",
    "are",
    "dog",
    "cat",
    "city",
    "sunset",
    "lighthouse",
    "dusk",
    "watercolour",
    "red",
    "blue",
    "green",
    "light",
    "dark",
    "wide",
    "shot",
    "close",
    "up",
    "coffee",
    "cup",
    "steam",
    "rising",
    "person",
    "walking",
    "park",
    "skyline",
    "dawn",
]
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]")
# The Qwen chat layout the FLUX.2 [klein] and Qwen pipelines ask the tokenizer to apply.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} {{ message['content'] }}<|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


# The tiny models' work is a few milliseconds per operation: on a shared two-core machine several
# intra-op threads mostly wait for each other (a tiny FLUX.2 [klein] image took 5-15 s with two
# threads under load, under 1 s with one). Tests and their servers use one.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def word_tokenizer(model_max_length: int = 512) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate((*SPECIAL, *WORDS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Split(" ", "removed")  # type: ignore[arg-type]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_flux2_klein(directory: Path, *, distilled: bool = True, text_layers: int = 28) -> Path:
    """A FLUX.2 [klein] pipeline (Flux2KleinPipeline) with random weights, saved in ``directory``.

    The text encoder has the 28 layers the pipeline reads hidden states from (9, 18, 27), each 16
    wide; the VAE has one block and one latent channel, so the latents are the image's size and the
    transformer sees (size / 2)^2 tokens. Fewer ``text_layers`` make a pipeline that raises when run."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,  # three stacked text-encoder layers of 16
        timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4],
        guidance_embeds=False,
    )
    torch.manual_seed(0)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=text_layers,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            vocab_size=len(tokenizer),
            max_position_embeddings=512,
        )
    )
    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=distilled,
    )
    pipe.save_pretrained(directory)
    return directory


def tiny_z_image(directory: Path) -> Path:
    """A Z-Image pipeline (ZImagePipeline: text-to-image only) with random weights, saved in
    ``directory``: a two-layer transformer, a two-layer Qwen3 text encoder, a two-block VAE."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=16,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],
        axes_lens=[512, 64, 64],
    )
    with torch.no_grad():  # created with torch.empty: fixed so no NaN comes out of them
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token.data))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token.data))
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        block_out_channels=[32, 64],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=32,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    torch.manual_seed(0)
    text_encoder = Qwen3Model(
        Qwen3Config(
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            vocab_size=len(tokenizer),
            max_position_embeddings=512,
        )
    )
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(directory)
    return directory


def model_class(directory: Path) -> str:
    return str(json.loads((directory / "model_index.json").read_text())["_class_name"])


# -- video: LTX-2 (Gemma 3 text encoder, with sound) and Wan / Wan VACE (UMT5) ----------------------


def gemma_tokenizer() -> Any:
    """A Gemma tokenizer (the class LTX-2's pipelines name) over :data:`WORDS` with byte fallback."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    vocab.update({f"<0x{byte:02X}>": len(vocab) + byte for byte in range(256)})
    for word in WORDS:
        vocab.setdefault(f"▁{word}", len(vocab))
    # A short model_max_length: the engine pads prompts to no more than it (the real ones take 1024).
    return GemmaTokenizer(vocab=vocab, merges=[], model_max_length=16)


def t5_tokenizer() -> Any:
    """A T5 (unigram) tokenizer over :data:`WORDS`, as Wan's UMT5 text encoder takes."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -1.0) for word in dict.fromkeys(WORDS)]
    pieces += [(letter, -5.0) for letter in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=16)


def tiny_ltx2(directory: Path) -> Path:
    """An LTX-2 pipeline (LTX2Pipeline, as the hub's checkpoints are saved) with random weights:
    a 2-layer Gemma 3 text encoder 16 wide, one transformer layer for video and audio, a one-block
    video VAE (2x down in space and time), the audio VAE and vocoder. Name ``directory`` with
    'distilled' in it to have it run on the distilled schedule."""
    import torch
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    tokenizer = gemma_tokenizer()
    width, layers = 16, 2
    torch.manual_seed(0)
    text_encoder = Gemma3ForConditionalGeneration(
        Gemma3Config(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": width,
                "intermediate_size": 32,
                "num_hidden_layers": layers,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 8,
                "max_position_embeddings": 256,
                "sliding_window": 16,
            },
            vision_config={
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 8,
                "patch_size": 2,
            },
            mm_tokens_per_image=4,
        )
    )
    torch.manual_seed(0)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        audio_in_channels=4,
        audio_out_channels=4,
        audio_num_attention_heads=2,
        audio_attention_head_dim=4,
        audio_cross_attention_dim=8,
        num_layers=1,
        qk_norm="rms_norm_across_heads",
        caption_channels=width,
        rope_double_precision=False,
        rope_type="split",
    )
    torch.manual_seed(0)
    connectors = LTX2TextConnectors(
        caption_channels=width,
        text_proj_in_factor=layers + 1,
        video_connector_num_attention_heads=2,  # 2 x 8 = the text encoder's width
        video_connector_attention_head_dim=8,
        video_connector_num_layers=1,
        video_connector_num_learnable_registers=None,
        audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=8,
        audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None,
        connector_rope_base_seq_len=32,
        rope_theta=10000.0,
        rope_double_precision=False,
        causal_temporal_positioning=False,
        rope_type="split",
    )
    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Video(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8,),
        decoder_block_out_channels=(8,),
        layers_per_block=(1,),
        decoder_layers_per_block=(1, 1),
        spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,),
        decoder_inject_noise=(False, False),
        downsample_type=("spatial",),
        upsample_residual=(False,),
        upsample_factor=(1,),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    torch.manual_seed(0)
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4,
        output_channels=2,
        ch_mult=(1,),
        num_res_blocks=1,
        attn_resolutions=None,
        in_channels=2,
        resolution=32,
        latent_channels=2,
        norm_type="pixel",
        causality_axis="height",
        dropout=0.0,
        mid_block_add_attention=False,
        sample_rate=16000,
        mel_hop_length=160,
        is_causal=True,
        mel_bins=8,
    )
    torch.manual_seed(0)
    vocoder = LTX2Vocoder(
        in_channels=2 * 8,
        hidden_channels=32,
        out_channels=2,
        upsample_kernel_sizes=[4, 4],
        upsample_factors=[2, 2],
        resnet_kernel_sizes=[3],
        resnet_dilations=[[1, 3, 5]],
        leaky_relu_negative_slope=0.1,
        output_sampling_rate=16000,
    )
    pipe = LTX2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        connectors=connectors,
        transformer=transformer,
        vocoder=vocoder,
    )
    pipe.save_pretrained(directory)
    return directory


def _wan_common() -> dict[str, Any]:
    """The VAE (8x down in space, 4x in time), scheduler and a one-layer UMT5 Wan pipelines share."""
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = t5_tokenizer()
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=32,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    return {
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }


_WAN_TRANSFORMER: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 32,
    "freq_dim": 256,
    "ffn_dim": 32,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}


def tiny_wan(directory: Path) -> Path:
    """A Wan text-to-video pipeline (WanPipeline) with one transformer layer and random weights."""
    import torch
    from diffusers import WanPipeline, WanTransformer3DModel

    common = _wan_common()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(num_layers=1, **_WAN_TRANSFORMER)
    WanPipeline(transformer=transformer, **common).save_pretrained(directory)
    return directory


def tiny_wan_vace(directory: Path, *, text_dim: int = 32) -> Path:
    """A Wan VACE pipeline (WanVACEPipeline): two transformer layers, VACE on the first. Another
    ``text_dim`` than the text encoder's 32 makes a pipeline that loads and then raises as it runs."""
    import torch
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    common = _wan_common()
    torch.manual_seed(0)
    transformer = WanVACETransformer3DModel(
        num_layers=2, vace_layers=[0], vace_in_channels=96, **{**_WAN_TRANSFORMER, "text_dim": text_dim}
    )
    WanVACEPipeline(transformer=transformer, **common).save_pretrained(directory)
    return directory


def tiny_wan_i2v(directory: Path) -> Path:
    """A Wan image-to-video pipeline (WanImageToVideoPipeline, as Wan 2.1 FLF2V is saved): the
    transformer takes the image latents beside the noise (16 + 16 + 4 mask channels) and a CLIP
    vision encoder's image embeddings (4 wide)."""
    import torch
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    common = _wan_common()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        num_layers=1,
        # FLF2V's image tokens: the first and the last frame's 16 patches + class token, side by side.
        **{**_WAN_TRANSFORMER, "in_channels": 36, "image_dim": 4, "pos_embed_seq_len": 2 * 17},
    )
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=4,
            projection_dim=4,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            intermediate_size=16,
            patch_size=8,
        )
    )
    WanImageToVideoPipeline(
        transformer=transformer,
        image_encoder=image_encoder,
        image_processor=CLIPImageProcessor(crop_size=32, size=32),
        **common,
    ).save_pretrained(directory)
    return directory
