"""A short paper-shaped GILL run on random weights: the real precompute, trainer and SD pipeline at paper sizes.

Run on one GPU: ``.venv/bin/python bench/paper_shaped.py --device cuda --dtype bf16`` (``--scale paper``, the
default; a few minutes on an A100/H100). Run here: ``.venv/bin/python bench/paper_shaped.py --scale smoke`` (the
same code path at toy sizes, ~half a minute on 2 CPU cores; ``tests/test_paper_scale.py`` runs it).

What it builds, with random weights and no download (every config comes from ``data_manifests/backbones/``):

* an OPT-1.3B-sized LM: the shipped OPT-6.7B config with hidden 2048, 24 layers, 32 heads, ffn 8192 (vocabulary,
  positions and everything else as shipped), and the tiny zoo's OPT tokenizer (the paper's is not shipped);
* the ViT-L/14 vision tower of the shipped CLIP config and its image processor (224 px);
* SD-1.5's UNet, VAE and text encoder from the shipped configs, its PNDM scheduler, the tiny zoo's CLIP tokenizer;
* GILL's paper adapters (GILLMapper 512 wide, 4+4 layers; 4 visual tokens; 8 [IMG] tokens; 256-d retrieval).

Each model is created on ``--device`` and saved with ``save_pretrained`` into a temporary folder (in the run's
dtype on CUDA, float32 on the CPU), and a config names those folders, so everything after that is gill's own code:

1. **precompute**: a webdataset shard of ``--images`` synthetic CC3M pairs (rendered shapes-world scenes as JPEGs,
   their captions) through :func:`gill.data.precompute.precompute_split` (ViT-L/14 + SD text encoder); samples/s;
2. **train**: :func:`gill.train.setup_training` and :meth:`~gill.train.Trainer.train` for ``--steps`` steps at
   ``--batch`` (bf16 autocast with ``--dtype bf16``, fp32 otherwise), one checkpoint and the final export at the
   end; steps/s and samples/s (median over the steps after the first two, as the trainer logs them), peak memory;
3. **generate**: the saved SD pipeline (:func:`gill.factory.load_sd_pipeline`, in the run's dtype) makes
   ``--sd-batch`` images at ``--sd-px`` px with ``--sd-steps`` steps and guidance 7.5 in one call, after a 2-step
   warm-up; images/s, peak memory.

It prints one line per phase and, with ``--json``, writes them to a file. ``--dtype fp16`` is refused (exit 2):
gill trains in fp32 or bf16 only. Nothing is kept unless ``--keep DIR`` names a folder to build in.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from device import DeviceChoice, add_device_arguments, resolve_device
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import (
    AutoConfig,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    OPTForCausalLM,
)

from gill.config import GILLConfig, MapperConfig
from gill.data.precompute import PrecomputeOptions, precompute_split
from gill.data.shards import ShardSample, SplitFolders, write_image_shard
from gill.errors import InputError
from gill.factory import load_sd_pipeline, quiet_hf_logging, resolve_sources
from gill.manifests import manifests_dir
from gill.presets import get_preset, paper_config
from gill.synth.render import render_scene
from gill.synth.scenes import sample_scene
from gill.synth.text import cc3m_caption
from gill.train import setup_training

BACKBONES = manifests_dir() / "backbones"
OPT_DIR = BACKBONES / "facebook--opt-6.7b"
CLIP_DIR = BACKBONES / "openai--clip-vit-large-patch14"
SD_DIR = BACKBONES / "stable-diffusion-v1-5--stable-diffusion-v1-5"
OPT_1_3B = {"hidden_size": 2048, "word_embed_proj_dim": 2048, "num_hidden_layers": 24, "num_attention_heads": 32,
            "ffn_dim": 8192}  # fmt: skip
"""facebook/opt-1.3b's sizes (the OPT paper's table of model sizes), over the shipped OPT-6.7B config."""


@dataclass(frozen=True, kw_only=True)
class Scale:
    """Sizes of one run: config overrides of each backbone (empty: as shipped) and the workload."""

    lm: dict[str, Any]
    vision: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    unet: dict[str, Any] = field(default_factory=dict)
    vae: dict[str, Any] = field(default_factory=dict)
    mapper: MapperConfig = field(default_factory=MapperConfig)
    ret_emb_dim: int = 256
    images: int = 400
    """Synthetic pairs precomputed (the training set: steps cycle over it)."""
    image_px: int = 256
    steps: int = 20
    batch: int = 100
    sd_px: int = 512
    sd_steps: int = 50
    sd_batch: int = 8


SCALES = {
    "paper": Scale(lm=OPT_1_3B),
    "smoke": Scale(
        lm={
            "hidden_size": 64,
            "word_embed_proj_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "ffn_dim": 256,
        },
        vision={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
        text={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
        unet={"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "attention_head_dim": 4},
        vae={"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1},
        mapper=MapperConfig(hidden_dim=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=1, ffn_dim=64),
        ret_emb_dim=32,
        images=16,
        image_px=64,
        steps=3,
        batch=4,
        sd_px=64,
        sd_steps=2,
        sd_batch=2,
    ),  # fmt: skip
}


@dataclass(frozen=True, kw_only=True)
class Phase:
    """One printed line: a phase's wall time and its figures."""

    name: str
    seconds: float
    figures: dict[str, float | str]


def _params(model: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:,.1f}M"


def _save(model: Any, out: Path, dtype: torch.dtype) -> None:
    model.to(dtype=dtype).save_pretrained(out)


def build_backbones(scale: Scale, root: Path, dev: DeviceChoice) -> tuple[GILLConfig, dict[str, str]]:
    """Random-init backbones saved under ``root`` (``lm/``, ``vision/``, ``sd/``) and the config naming them."""
    tiny = get_preset("tiny")
    zoo = resolve_sources(tiny, ["lm", "sd"])
    save_dtype = dev.dtype if dev.is_cuda else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(zoo["lm"])
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    torch.manual_seed(0)
    with torch.device(dev.device):
        lm_config = AutoConfig.from_pretrained(OPT_DIR)
        lm_config.update({**scale.lm, **ids})
        lm = OPTForCausalLM(lm_config)
        vision = CLIPVisionModel(CLIPVisionConfig.from_pretrained(CLIP_DIR, **scale.vision))
        sd_tokenizer = CLIPTokenizer.from_pretrained(Path(zoo["sd"]) / "tokenizer")
        text_ids = {"bos_token_id": sd_tokenizer.bos_token_id, "eos_token_id": sd_tokenizer.eos_token_id,
                    "pad_token_id": sd_tokenizer.pad_token_id}  # fmt: skip
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(SD_DIR / "text_encoder", **scale.text, **text_ids))
        unet_config = {**UNet2DConditionModel.load_config(SD_DIR / "unet"), **scale.unet}
        unet_config.update(cross_attention_dim=text.config.hidden_size, sample_size=scale.sd_px // 8)
        unet = UNet2DConditionModel.from_config(unet_config)
        vae_config = {**AutoencoderKL.load_config(SD_DIR / "vae"), **scale.vae, "sample_size": scale.sd_px}
        vae = AutoencoderKL.from_config(vae_config)
    sizes = {"lm": _params(lm), "vision": _params(vision), "unet": _params(unet), "vae": _params(vae),
             "sd_text": _params(text)}  # fmt: skip
    _save(lm, root / "lm", save_dtype)
    tokenizer.save_pretrained(root / "lm")
    _save(vision, root / "vision", save_dtype)
    CLIPImageProcessor.from_pretrained(CLIP_DIR).save_pretrained(root / "vision")
    pipe = StableDiffusionPipeline(
        vae=vae.to(dtype=save_dtype),
        text_encoder=text.to(dtype=save_dtype),
        tokenizer=sd_tokenizer,
        unet=unet.to(dtype=save_dtype),
        scheduler=PNDMScheduler.from_pretrained(SD_DIR / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "sd")
    del lm, vision, text, unet, vae, pipe
    if dev.is_cuda:
        torch.cuda.empty_cache()
    paper = paper_config()
    adapters = dataclasses.replace(paper.adapters, mapper=scale.mapper, ret_emb_dim=scale.ret_emb_dim)
    train = dataclasses.replace(
        paper.train,
        steps=scale.steps,
        batch_size=scale.batch,
        warmup_steps=1,
        decay_every=max(scale.steps, 1),
        val_every=scale.steps,
        ckpt_every=scale.steps,
        log_every=1,
        precision="bf16" if dev.dtype == torch.bfloat16 else "fp32",
        val_bleu=False,
    )
    config = dataclasses.replace(paper, preset="paper-shaped", adapters=adapters, train=train)
    config = config.with_backbones(
        lm=str(root / "lm"), vision=str(root / "vision"), sd=str(root / "sd"), clip_metric=str(root / "vision")
    )
    return config, sizes


def write_pairs(split: SplitFolders, n: int, px: int, seed: int = 0) -> None:
    """``n`` synthetic CC3M pairs (shapes-world renders as JPEGs and their captions) as one complete image shard."""
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        scene = sample_scene(rng)
        buffer = io.BytesIO()
        render_scene(scene, px).save(buffer, format="JPEG", quality=95)
        samples.append(ShardSample(key=f"{i:09d}", caption=cc3m_caption(scene, rng), jpeg=buffer.getvalue(), meta={}))
    write_image_shard(split.images / "00000.tar", samples)


def run_precompute(config: GILLConfig, split: SplitFolders, scale: Scale, dev: DeviceChoice) -> Phase:
    options = PrecomputeOptions(batch_size=min(64, scale.images), device=str(dev.device), dtype=dev.dtype_name)
    dev.reset_peak_memory()
    start = time.perf_counter()
    results = precompute_split(split, config, options, progress=False)
    seconds = time.perf_counter() - start
    rate = sum(r.count for r in results) / sum(r.duration_s for r in results)
    return Phase(name="precompute", seconds=seconds, figures={"samples/s": rate, **_memory(dev)})


def run_training(config: GILLConfig, split: SplitFolders, root: Path, dev: DeviceChoice) -> Phase:
    trainer = setup_training(config, root / "runs", split, None, run_id="paper-shaped", device=str(dev.device))
    dev.reset_peak_memory()
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    rates = [row["samples_per_s"] for row in result.history if row["step"] > 2] or [
        row["samples_per_s"] for row in result.history
    ]
    samples_per_s = statistics.median(rates)
    figures = {
        "steps/s": samples_per_s / config.train.batch_size,
        "samples/s": samples_per_s,
        "loss (last)": result.history[-1]["loss"],
        **_memory(dev),
    }
    return Phase(name="train", seconds=seconds, figures=figures)


def run_generation(config: GILLConfig, scale: Scale, dev: DeviceChoice) -> Phase:
    pipe = load_sd_pipeline(config.backbones.sd.id, dtype=dev.dtype).to(dev.device)
    rng = random.Random(1)
    prompts = [cc3m_caption(sample_scene(rng), rng) for _ in range(scale.sd_batch)]
    size = {"height": scale.sd_px, "width": scale.sd_px}
    pipe(prompts[:1], num_inference_steps=2, **size)  # warm-up: kernels, allocator
    dev.reset_peak_memory()
    dev.synchronize()
    start = time.perf_counter()
    generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    images = pipe(prompts, num_inference_steps=scale.sd_steps, guidance_scale=7.5, generator=generators, **size).images
    seconds = time.perf_counter() - start
    figures = {"images/s": len(images) / seconds, "s/image": seconds / len(images), **_memory(dev)}
    return Phase(name="generate", seconds=seconds, figures=figures)


def _memory(dev: DeviceChoice) -> dict[str, float]:
    peak = dev.peak_memory_gib()
    return {} if peak is None else {"peak GiB": peak}


def _format(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(parser)
    parser.add_argument("--scale", choices=sorted(SCALES), default="paper", help="paper (default) or smoke")
    parser.add_argument("--steps", type=int, help="training steps (paper 20, smoke 3)")
    parser.add_argument("--batch", type=int, help="training batch (paper 100, smoke 4; even)")
    parser.add_argument("--images", type=int, help="synthetic pairs to precompute (paper 400, smoke 16)")
    parser.add_argument("--lm-layers", type=int, help="override the LM's layer count")
    parser.add_argument("--sd-steps", type=int, help="SD sampling steps (paper 50, smoke 2)")
    parser.add_argument("--sd-batch", type=int, help="SD images in the timed call (paper 8, smoke 2)")
    parser.add_argument("--sd-px", type=int, help="SD image size, a multiple of 64 (paper 512, smoke 64)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the phases to this JSON file")
    return parser.parse_args(argv)


def chosen_scale(args: argparse.Namespace) -> Scale:
    """The ``--scale`` preset with the command line's overrides; exits 2 naming every bad value."""
    scale = SCALES[args.scale]
    overrides = {name: getattr(args, name) for name in ("steps", "batch", "images", "sd_steps", "sd_batch", "sd_px")}
    scale = dataclasses.replace(scale, **{k: v for k, v in overrides.items() if v is not None})
    if args.lm_layers is not None:
        scale = dataclasses.replace(scale, lm={**scale.lm, "num_hidden_layers": args.lm_layers})
    problems = [f"--{k.replace('_', '-')} {v}: must be >= 1" for k, v in overrides.items() if v is not None and v < 1]
    if scale.batch % 2:
        problems.append(f"--batch {scale.batch}: must be even (concat-captions pairs rows)")
    if scale.sd_px % 64:
        problems.append(f"--sd-px {scale.sd_px}: must be a multiple of 64 (the VAE and UNet downsample 8 x 8)")
    if args.lm_layers is not None and args.lm_layers < 1:
        problems.append(f"--lm-layers {args.lm_layers}: must be >= 1")
    if problems:
        error = InputError("bench/paper_shaped.py: invalid sizes", problems, hint="see --help")
        print(f"error: {error.render()}", file=sys.stderr)
        raise SystemExit(error.exit_code)
    return scale


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    dev = resolve_device(args)
    if dev.dtype == torch.float16:
        print("error: --dtype fp16: gill trains in fp32 or bf16 autocast (train.precision); use bf16", file=sys.stderr)
        raise SystemExit(2)
    scale = chosen_scale(args)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    quiet_hf_logging()
    root = args.keep or Path(tempfile.mkdtemp(prefix="gill-paper-shaped-"))
    root.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()
    try:
        start = time.perf_counter()
        config, sizes = build_backbones(scale, root, dev)
        written = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 1e9
        phases = [Phase(name="build", seconds=time.perf_counter() - start, figures={**sizes, "GB written": written})]
        split = SplitFolders(name="train", images=root / "data" / "train", features=root / "features" / "train")
        write_pairs(split, scale.images, scale.image_px)
        phases.append(run_precompute(config, split, scale, dev))
        phases.append(run_training(config, split, root, dev))
        phases.append(run_generation(config, scale, dev))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"paper-shaped GILL ({args.scale}) on {dev.describe()}: train {scale.steps} steps x batch {scale.batch}, "
        f"{scale.images} pairs; SD {scale.sd_batch} x {scale.sd_px} px, {scale.sd_steps} steps"
    )
    for phase in phases:
        figures = ", ".join(f"{k} {_format(v)}" for k, v in phase.figures.items())
        print(f"{phase.name:10s} {phase.seconds:8.1f} s   {figures}")
    print(f"{'total':10s} {time.perf_counter() - total:8.1f} s")
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(p) for p in phases], indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
