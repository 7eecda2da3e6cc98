"""A tiny Stable Diffusion v1.5 look-alike with random weights, for offline demos and tests.

It uses the real classes (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer,
StableDiffusionSafetyChecker) and SD v1.5's geometry: the VAE downscales by 8 into 4 latent
channels, the text context is 77 tokens, and the scheduler config is SD v1.5's. It is saved with
``save_pretrained`` and loaded with ``from_pretrained``, the path the real model takes. Its
images are noise; every code path that touches them is real.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

# Bump when the architecture below changes so caches rebuild.
TINY_VERSION = 1

# SD v1.5's scheduler config (scheduler/scheduler_config.json of the real model).
SD15_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
CONTEXT_TOKENS = 77
HIDDEN = 32


def tiny_model_dir(cache_dir: Path, *, flag_all: bool = False) -> Path:
    name = f"tiny-v{TINY_VERSION}" + ("-flag-all" if flag_all else "")
    return Path(cache_dir) / "models" / name


def ensure_tiny_model(cache_dir: Path, *, flag_all: bool = False) -> Path:
    """Build the tiny model once into ``cache_dir``; concurrent callers all get one copy."""
    target = tiny_model_dir(cache_dir, flag_all=flag_all)
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        build_tiny_pipeline(staging, flag_all=flag_all)
        try:
            os.rename(staging, target)  # atomic: readers see all of it or none
        except OSError:
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _byte_chars() -> list[str]:
    """The printable stand-ins byte-level BPE (GPT-2, CLIP) uses for the 256 byte values."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _write_tokenizer_files(folder: Path) -> None:
    """A character-level CLIP BPE vocabulary: every byte, alone and word-final, no merges."""
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": CONTEXT_TOKENS, "tokenizer_class": "CLIPTokenizer"})
    )


def _image_processor_class() -> type:
    """CLIP's PIL image processor (transformers 5 names it apart from the torchvision one)."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def build_tiny_pipeline(target: Path, *, flag_all: bool = False) -> None:
    """Build deterministically (fixed seeds) and ``save_pretrained`` into ``target``.

    ``flag_all`` makes a safety checker that flags every image, to exercise that path.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import (
        CLIPConfig,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
    )

    token_dir = target / ".tokenizer-src"
    _write_tokenizer_files(token_dir)
    tokenizer = CLIPTokenizer.from_pretrained(token_dir)

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        # Attention only at the lower resolution keeps a 512x512 job to seconds on a CPU.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=512,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=HIDDEN,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CONTEXT_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=HIDDEN,
        )
    )
    torch.manual_seed(0)
    checker_config = CLIPConfig(
        text_config={
            "hidden_size": HIDDEN,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config=CLIPVisionConfig(
            hidden_size=HIDDEN,
            image_size=32,
            patch_size=8,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
        ).to_dict(),
        projection_dim=HIDDEN,
    )
    safety_checker = StableDiffusionSafetyChecker(checker_config)
    if flag_all:
        # An image is flagged when cosine(image, concept) exceeds the concept's weight; cosine
        # is never below -1, so a weight of -2 flags every image.
        with torch.no_grad():
            safety_checker.concept_embeds_weights.fill_(-2.0)
    feature_extractor = _image_processor_class()(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=safety_checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=True,
    )
    pipe.save_pretrained(target, safe_serialization=True)
    shutil.rmtree(token_dir)
