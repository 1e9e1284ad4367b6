"""A tiny, randomly initialised Stable Diffusion pipeline built offline for the tests.

No weights are downloaded: the UNet, VAE and CLIP text encoder are built from small
configs with a fixed torch seed, and the CLIP tokenizer from a vocabulary and merges
file generated here (every byte-level character, with and without the end-of-word
mark, plus CLIP's two special tokens). The pipeline is saved with ``save_pretrained``
(safetensors) so the backend loads it exactly as it would load real weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: SD 1.x's scheduler config (what `runwayml/stable-diffusion-v1-5` ships)
SD_SCHEDULER_CONFIG = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "clip_sample": False,
}
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


def build_tiny_sd_pipeline(work: Path, scheduler_cls: str = "PNDMScheduler"):
    """A StableDiffusionPipeline small enough to run a 10-step image in well under a second."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers import schedulers as dsched
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_file, merges_file, vocab_size = write_tokenizer_files(work / "tokenizer-src")
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32)
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64),
        latent_channels=4, layers_per_block=1, norm_num_groups=32, sample_size=IMAGE_SIZE)
    torch.manual_seed(0)
    text_config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(text_config)
    scheduler = getattr(dsched, scheduler_cls).from_config(SD_SCHEDULER_CONFIG)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sd_pipeline(folder: Path) -> Path:
    """Build the tiny pipeline and save it as a diffusers folder (safetensors)."""
    pipe = build_tiny_sd_pipeline(folder.parent / f"{folder.name}-build")
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
