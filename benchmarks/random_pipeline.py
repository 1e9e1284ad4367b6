"""A randomly initialised Stable Diffusion pipeline of a given size, built offline.

Random weights cost the same time as trained ones, so `convergence bench` on such a
pipeline measures what the harness would on the real model, and anyone with a GPU can
reproduce the numbers without downloading weights:

    python benchmarks/random_pipeline.py --size sd15 --out /tmp/sd15-random
    convergence bench study=invoke_guide model=diffusers model.path=/tmp/sd15-random

Sizes: ``sd15`` has SD 1.5's UNet (860 M parameters), VAE and CLIP ViT-L/14 text encoder
configs (512x512); ``small`` is a CPU-sized UNet (64x64 images). The tokenizer is the
tests' character-level CLIP BPE (tests/helpers/tiny_pipeline.py), which costs the same per token.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))
from tiny_pipeline import SD_SCHEDULER_CONFIG, write_tokenizer_files  # noqa: E402

SIZES = {
    "sd15": {
        "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                     block_out_channels=(320, 640, 1280, 1280),
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                     cross_attention_dim=768, attention_head_dim=8),
        "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                    down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512),
        "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, projection_dim=768),
        "image_size": 512,
    },
    "small": {
        "unet": dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                     block_out_channels=(64, 128), norm_num_groups=32,
                     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                     cross_attention_dim=128, attention_head_dim=8),
        "vae": dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=32,
                    down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64),
        "text": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                     num_attention_heads=4, projection_dim=128),
        "image_size": 64,
    },
}


def build(size: str, work: Path):
    """The pipeline of ``size`` with random weights (fixed torch seed)."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    spec = SIZES[size]
    vocab, merges, vocab_size = write_tokenizer_files(work / "tokenizer-src")
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**spec["unet"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **spec["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **spec["text"]))
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=PNDMScheduler.from_config(SD_SCHEDULER_CONFIG), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    return pipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    pipe = build(args.size, args.out.parent / f"{args.out.name}-build")
    pipe.save_pretrained(args.out, safe_serialization=True)
    params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    print(f"{args.size}: UNet {params:.0f} M parameters, images {SIZES[args.size]['image_size']} px "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
