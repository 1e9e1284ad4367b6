"""Tiny, randomly initialised diffusion pipelines built offline for the tests: SD 1.x,
SD 2.x (v-prediction), SDXL (two text encoders, pooled embeddings, size conditioning)
and SD3 (rectified flow, no T5).

No weights are downloaded: UNets/transformers, VAEs and CLIP text encoders are built
from small configs with a fixed torch seed, and the CLIP tokenizer from a vocabulary and merges
file generated here (every byte-level character, with and without the end-of-word
mark, plus CLIP's two special tokens). The pipeline is saved with ``save_pretrained``
(safetensors) so the backend loads it exactly as it would load real weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

#: SD 1.x's scheduler config (what `runwayml/stable-diffusion-v1-5` ships)
SD_SCHEDULER_CONFIG = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "clip_sample": False,
}
#: SD 2.1's (768, v-prediction) scheduler config as it ships
SD2_SCHEDULER_CONFIG = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "clip_sample": False, "prediction_type": "v_prediction",
    "trained_betas": None,
}
#: SDXL base 1.0's scheduler config as it ships (Euler, "leading" timesteps)
SDXL_SCHEDULER_CONFIG = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "clip_sample": False, "interpolation_type": "linear",
    "prediction_type": "epsilon", "sample_max_value": 1.0, "timestep_spacing": "leading",
    "trained_betas": None, "use_karras_sigmas": False,
}
#: SD3 medium's scheduler config as it ships
SD3_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 3.0}
IMAGE_SIZE = 32  # pixels; the tiny VAE downsamples by 2 -> 16x16 latents


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte -> printable unicode map (the characters of a byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer_files(folder: Path) -> tuple[Path, Path, int]:
    """vocab.json + merges.txt of a character-level CLIP BPE; returns (vocab, merges, size)."""
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars]
    merges = ["t h", "th e</w>", "a n", "an d</w>"]
    tokens += ["th", "the</w>", "an", "and</w>", "<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file, len(vocab)


def _tokenizer(work: Path):
    from transformers import CLIPTokenizer
    vocab_file, merges_file, vocab_size = write_tokenizer_files(work / "tokenizer-src")
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77), vocab_size


def _clip_config(tokenizer, vocab_size: int, projection_dim: int = 32):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=projection_dim)


def _vae(latent_channels: int = 4, **kw):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64),
        latent_channels=latent_channels, layers_per_block=1, norm_num_groups=32,
        sample_size=IMAGE_SIZE, **kw)


def _unet(cross_attention_dim: int, **kw):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=32, **kw)


def build_tiny_sd_pipeline(work: Path, scheduler_cls: str = "PNDMScheduler",
                           v_prediction: bool = False):
    """A StableDiffusionPipeline small enough to run a 10-step image in well under a
    second; ``v_prediction`` makes it an SD 2.x-style model (linear attention
    projections, v-prediction scheduler config)."""
    from diffusers import StableDiffusionPipeline
    from diffusers import schedulers as dsched
    from transformers import CLIPTextModel

    tokenizer, vocab_size = _tokenizer(work)
    unet = _unet(32, use_linear_projection=v_prediction)
    vae = _vae()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_config(tokenizer, vocab_size))
    config = SD2_SCHEDULER_CONFIG if v_prediction else SD_SCHEDULER_CONFIG
    scheduler = getattr(dsched, scheduler_cls).from_config(config)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sdxl_pipeline(work: Path):
    """A StableDiffusionXLPipeline: CLIP-L-like and CLIP-G-like encoders (hidden states
    concatenated, pooled projection of the second), "text_time" added conditioning of
    the pooled embedding and the six size/crop numbers, SDXL's VAE scale and scheduler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, vocab_size = _tokenizer(work)
    time_dim, proj_dim = 8, 32
    unet = _unet(64, use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=time_dim,
                 projection_class_embeddings_input_dim=6 * time_dim + proj_dim)
    vae = _vae(scaling_factor=0.13025, force_upcast=True)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_config(tokenizer, vocab_size))
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer, vocab_size, proj_dim))
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_scheduler_config(folder: Path, cls: str, config: dict) -> None:
    """Replace the saved scheduler config by exactly the keys a real model ships.

    ``save_pretrained`` writes every default of the scheduler class (PNDM's
    ``timestep_spacing="leading"`` among them); SD 1.5's own file names none of them, so
    a scheduler swapped in with ``from_config`` keeps its own defaults (Euler: linspace)."""
    import diffusers
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({"_class_name": cls, "_diffusers_version": diffusers.__version__,
                                **config}, indent=2))


def build_tiny_sd3_pipeline(work: Path):
    """A StableDiffusion3Pipeline: a one-block MMDiT, two CLIP encoders with projections
    (pooled 2 x 32), no T5 (``text_encoder_3=None``, as SD3 allows: zeros in its place),
    SD3's shifted VAE latents (16 channels) and its flow-matching scheduler (shift 3)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    tokenizer, vocab_size = _tokenizer(work)
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=IMAGE_SIZE // 2, patch_size=2, in_channels=16, out_channels=16,
        num_layers=1, attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
        caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=16)
    vae = _vae(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609,
               use_quant_conv=False, use_post_quant_conv=False)
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(_clip_config(tokenizer, vocab_size))
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer, vocab_size))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer, text_encoder_3=None,
        tokenizer_3=None,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: family -> (builder, scheduler class and config file as the real model ships them)
FAMILIES = {
    "sd": (build_tiny_sd_pipeline, "PNDMScheduler", SD_SCHEDULER_CONFIG),
    "sd2v": (lambda work: build_tiny_sd_pipeline(work, "DDIMScheduler", v_prediction=True),
             "DDIMScheduler", SD2_SCHEDULER_CONFIG),
    "sdxl": (build_tiny_sdxl_pipeline, "EulerDiscreteScheduler", SDXL_SCHEDULER_CONFIG),
    "sd3": (build_tiny_sd3_pipeline, "FlowMatchEulerDiscreteScheduler", SD3_SCHEDULER_CONFIG),
}


def save_tiny_pipeline(family: str, folder: Path) -> Path:
    """Build a tiny pipeline of ``family`` and save it as a diffusers folder
    (safetensors), with the scheduler config file its real model ships."""
    build, cls, config = FAMILIES[family]
    pipe = build(folder.parent / f"{folder.name}-build")
    pipe.save_pretrained(folder, safe_serialization=True)
    write_scheduler_config(folder, cls, config)
    return folder


def save_tiny_sd_pipeline(folder: Path) -> Path:
    """The tiny SD 1.x pipeline as a diffusers folder."""
    return save_tiny_pipeline("sd", folder)


#: Relative tolerance on final float32 latents (|latent| ~ 34 here). Measured on this
#: project's CI CPU: 1.7e-6 (1 thread), 1.3e-6 (2 threads), 2.7e-6 with the SSE4.1 kernels
#: (ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41: the old 2e-6 fails); on another x86 CPU the same
#: tests differed in the fourth decimal (~1e-4 absolute), because oneDNN picks other conv
#: kernels and summation orders. Bound: a reduction of n float32 terms can be off by
#: ~n*eps32 (n = 3*3*64 = 576 -> 3.5e-5 per conv layer), CFG 7.5 amplifies the difference of
#: the two predictions by 2*7.5-1 = 14, over 10 steps: order 1e-3 at worst. 1e-3 is that bound.
LATENT_RTOL = 1e-3
#: Decoded images must agree within one 8-bit level (1/255 in [0, 1]): the visible criterion,
#: measured 1.3e-6 here and "within one level" on the second machine.
IMAGE_ATOL = 1 / 255


def assert_same_image(model, ours, ref):
    """The harness's latents equal the pipeline's within float32 reduction-order error, and
    the decoded images within one 8-bit level (see LATENT_RTOL / IMAGE_ATOL)."""
    rel = float((ours - ref).abs().max()) / float(ref.abs().max())
    assert rel <= LATENT_RTOL, f"latents differ by {rel:.2e} relative (> {LATENT_RTOL})"
    a, b = model.decode_float(ours), model.decode_float(ref)
    assert np.abs(a - b).max() <= IMAGE_ATOL, f"decoded images differ by {np.abs(a - b).max():.2e}"
    levels = np.abs(model.decode(ours).astype(int) - model.decode(ref).astype(int)).max()
    assert levels <= 1, f"8-bit images differ by {levels} levels"
    return b
