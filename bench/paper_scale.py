"""What a full paper-scale GILL run costs: items, FLOPs, hours on named GPUs and disk, stage by stage.

Run: ``.venv/bin/python bench/paper_scale.py [--gpu a6000 --gpus 2] [--seeds 1] [--no-measure] [--db PATH]
[--workdir W]``. Prints one row per stage and the totals, and writes them to DuckDB (table ``paper_scale_costs``,
the rows of the same hardware replaced; every figure it assumes goes to ``paper_scale_assumptions`` with its
source). The method, in short (``docs/paper-scale.md`` has the long form):

1. **Items.** Each stage's item count and what one item is: a CC3M url fetched (3,318,333 train + 15,840 val
   urls); an image and caption encoded (the images the download yields); a training sample (20k steps x batch
   200); a bank row; a PartiPrompts candidate (1,632); an eval item = one sample at one seed (VIST ~5,000 stories
   x 3 settings, VisDial 2,064 dialogs x 3 round counts, CC3M FID over the val images, each x ``--seeds``).
2. **FLOPs per item for the paper's models**, counted from the shipped configs (``data_manifests/backbones/``):
   every model is built on the meta device and one forward is counted with
   ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention; 2 FLOPs per multiply-add).
   Rules: a frozen model the gradient flows through (OPT in training: [IMG] and visual-prefix gradients reach the
   inputs) costs 2 x forward (forward + input-gradient backward, no weight gradients); a trained part (the
   adapters) 3 x forward (forward + input and weight gradients), i.e. 6 x params x tokens; inference 1 x forward.
   A training sample is two OPT passes (captioning over 4 visual + 32 tokens, the text pass over 32 tokens;
   ``--paper-exact``: a third pass, as the official code runs retrieval and generation separately). An SD-1.5 image
   is 50 UNet steps at 64x64 latents and batch 2 (classifier-free guidance 7.5), the VAE decode to 512 px and two
   text-encoder passes. The rule is checked against the FLOPs counted over real training steps of the tiny and
   mid-size models (printed with the table; 0.98 and 0.99 of them without concat-captions).
3. **Measured per-item cost on this machine** (``--device``, default the CPU) for the tiny zoo and mid-size models
   built on the fly (OPT 6x512, ViT 384x6 at 224 px, CLIP text 256x4, UNet 64-256 channels at 256 px): a few
   batches each, timed and FLOP-counted. Two sizes give this machine's achieved FLOP/s per stage (the slope) and
   its per-item overhead (the intercept), and so a projection of the paper run on this machine (``CPU h``).
   On the CPU they run on one thread (``--threads``): on a 2-core machine shared with other work, two threads made
   the small models' step times swing tenfold (OpenMP threads waiting on each other), one thread did not; the CPU
   figures are then per core. ``--no-measure`` uses the figures stored in :data:`STORED` (the README's tables use
   it, so they reproduce exactly); the GPU projection does not depend on them except for the bank (a CPU stage)
   and the JPEG decoding that feeds precompute.
4. **GPU hours** = items x FLOPs per item / (GPUs x per-GPU sustained FLOP/s x scaling efficiency). The sustained
   FLOP/s of each model class on a GPU is its datasheet peak dense fp16/bf16 tensor TFLOPS (:data:`GPUS`, sourced)
   times a utilisation: SD-1.5 from a sourced A100 figure (1.591 s per 512 px, 50-step image in diffusers), OPT
   from OPT's own training throughput (147 of 312 TFLOP/s per A100), encoders an assumption (0.30). Training
   scales by DDP (efficiency 0.95, assumption); the other GPU stages are independent items that split over GPUs
   (gill runs one device per process: N GPUs means N runs over disjoint shards or samples, not built in).
   Download is network-bound: urls / (850 urls/s per node, img2dataset's documented CC3M rate, or less when
   ``--bandwidth-gbps`` cannot carry it). The bank is built on the CPU (FAISS): measured rows/s plus the index
   build time bench/retrieval.py measured at 3.3M rows.
5. **Disk** per stage from what gill writes: JPEG shards at 224 px quality 95 (bytes measured on natural photos,
   tar overhead from a real shard), feature shards (ViT-L/14 pooled 1024 + SD text 77x768 per caption, float16:
   120,320 bytes), checkpoints (adapters + AdamW state, 2 kept, plus best/ and final/ exports), the bank (float32
   rows + the IVF index's copy), PNGs of candidates and benchmarks (512 px generated, 224 px retrieved and
   references; bytes measured on natural photos).

Every figure that is not measured or counted here is in :data:`ASSUMPTIONS` or :data:`GPUS` with the URL it was
read from and the quoted passage, or says "assumption" with its derivation.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import torch
from device import DeviceChoice, add_device_arguments, resolve_device
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import alexnet, inception_v3
from train_step import mid_size_lm
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModel,
)

from flows.store import STORAGE_VERSION, connect, db_path
from flows.workdir import DATABASE_FILE
from gill.config import GILLConfig
from gill.data.reader import TrainingBatch, tokenize_captions
from gill.data.shards import ShardSample, write_image_shard
from gill.errors import InputError
from gill.factory import derive_dims, load_backbones, load_sd_text_encoder, resolve_sources
from gill.manifests import dataset_manifest, manifests_dir
from gill.model import GILLModel
from gill.presets import get_preset, paper_config
from gill.retrieval import project_images
from gill.tokenization import add_img_tokens
from gill.train import Trainer

BACKBONES = manifests_dir() / "backbones"
SD_DIR = BACKBONES / "stable-diffusion-v1-5--stable-diffusion-v1-5"
GB = 1e9


# -- sourced figures and assumptions -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Assumption:
    """One figure the model takes from outside this machine: its value, unit and where it comes from."""

    name: str
    value: float
    unit: str
    source: str
    """The URL it was read from, or ``assumption``."""
    quote: str
    """The quoted passage (sourced) or the derivation (assumption)."""


@dataclass(frozen=True, kw_only=True)
class GPU:
    """A GPU's datasheet peak dense fp16/bf16 tensor throughput (no sparsity), with its source."""

    key: str
    name: str
    peak_tflops: float
    source: str
    quote: str


GPUS: dict[str, GPU] = {
    g.key: g
    for g in (
        GPU(
            key="a100",
            name="NVIDIA A100 SXM4 (40/80 GB)",
            peak_tflops=312.0,
            source="https://glennklockwood.com/garden/processors/A100",
            quote="theoretical maximum performance in TFLOPS (Vector / Matrix / Sparse): FP16 312 624, BF16 312 624 "
            "(footnote: the NVIDIA A100 datasheet)",
        ),
        GPU(
            key="a6000",
            name="NVIDIA RTX A6000",
            peak_tflops=154.8,
            source="https://llmperf.net/categories/gpu/Nvidia-A6000-GPUs",
            quote="Mixed-Precision (FP16/BF16) 154.8 TFLOPS (FP16/BF16 Tensor compute) ... ~155 TFLOPS of FP16/BF16 "
            "dense compute throughput (double that, ~309.7 TFLOPS, with structured sparsity)",
        ),
        GPU(
            key="h100",
            name="NVIDIA H100 SXM5 80 GB",
            peak_tflops=989.4,
            source="https://glennklockwood.com/garden/processors/h100",
            quote="theoretical maximum performance in TFLOPS (VFMA / Matrix / Sparse): FP16 133.8 989.4 1978.9, "
            "BF16 133.8 989.4 1978.9",
        ),
        GPU(
            key="h100-pcie",
            name="NVIDIA H100 PCIe 80 GB",
            peak_tflops=756.5,
            source="https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html",
            quote="NVIDIA H100 PCIe: BFLOAT16 Tensor 1,513 TFLOPS*, FP16 Tensor 1,513 TFLOPS* (* Shown with "
            "sparsity. Specifications 1/2 lower without sparsity.): 756.5 dense",
        ),
        GPU(
            key="h200",
            name="NVIDIA H200 SXM 141 GB",
            peak_tflops=989.4,
            source="https://glennklockwood.com/garden/processors/h100",
            quote="H200 GPUs are the same as H100 GPUs (SXM5 or GH variant?), just with 144 GB of HBM3e (more and "
            "faster HBM): the H100 SXM5's 989.4 dense BF16/FP16",
        ),
    )
}

PAPER_REPORT = "https://ri.k117.org/papers/generating_images_with_multimodal_language_models__4ab6fccb"
SD_A100 = "https://github.com/fal-ai/stable-diffusion-benchmarks"
OPT_MFU = "https://ai-papers.xuzou.cn/papers/opt_2022"
IMG2DATASET_CC3M = "https://github.com/rom1504/img2dataset/blob/main/dataset_examples/cc3m.md"
CC3M_YIELD = "https://huggingface.co/datasets/pixparse/cc3m-wds/commit/cc2542ccf54af242ddbdc3769d26c61d89fde64f"
VISDIAL_VAL = "https://huggingface.co/datasets/jxu124/visdial/blob/2e94b60185a1df8385694a0a411be356ad1d7e4a/README.md"

ASSUMPTIONS: dict[str, Assumption] = {
    a.name: a
    for a in (
        Assumption(
            name="sd15_a100_seconds_per_image",
            value=1.591,
            unit="s per 512x512 image, 50 steps, batch 1, fp16, A100 80G SXM",
            source=SD_A100,
            quote="SD1.5 (End-to-end) Benchmarks ... Diffusers (torch 2.1, SDPA) | 1.591s | 1.590s | 1.581s | 1.601s | "
            "31.44 it/s; num_inference_steps=50; width/height is 512x512; weights half-precision (fp16). The "
            "utilisation it implies on the A100 (counted FLOPs per image / 1.591 s / 312 TFLOPS) is applied to the "
            "other GPUs' peaks.",
        ),
        Assumption(
            name="lm_utilisation",
            value=147.0 / 312.0,
            unit="fraction of peak dense fp16/bf16 (OPT passes, training and context passes)",
            source=OPT_MFU,
            quote="OPT-175B was trained on 992 80GB NVIDIA A100 GPUs ... The paper reports up to 147 TFLOP/s per "
            "GPU (OPT paper, arXiv:2205.01068); 147 / 312 = 0.471. An upper-end figure: a tuned Megatron/FSDP stack "
            "on 2048-token sequences; GILL's 32-36-token passes through Hugging Face OPT may reach less.",
        ),
        Assumption(
            name="encoder_utilisation",
            value=0.30,
            unit="fraction of peak dense fp16/bf16 (ViT-L/14, CLIP text, Inception, AlexNet; batched inference)",
            source="assumption",
            quote="No per-GPU ViT-L/14 images/s figure on these GPUs was found. Batched encoder inference is put "
            "between SD-1.5's batch-1 utilisation derived above (~0.17) and OPT's training 0.47.",
        ),
        Assumption(
            name="download_urls_per_s_per_node",
            value=850.0,
            unit="CC3M urls per second per node (16 cores, 2 Gbps)",
            source=IMG2DATASET_CC3M,
            quote="This dataset has a lot of high resolution images, so this results in about 850 image downloader per "
            "second. Overall this takes about one hour. Using a computer with 16 cores, and 2Gbps of bandwidth.",
        ),
        Assumption(
            name="download_bytes_per_url",
            value=2e9 / 8 / 850,
            unit="bytes fetched per url (mean)",
            source="assumption",
            quote="2 Gbps / 8 / 850 urls/s = 294 kB: the documented bandwidth over the documented rate (an upper "
            "bound, if that run saturated its link); --bandwidth-gbps below 2 per node lowers the rate in proportion.",
        ),
        Assumption(
            name="cc3m_train_yield",
            value=2_905_954 / 3_318_333,
            unit="fraction of CC3M train urls that download",
            source=CC3M_YIELD,
            quote="Train: cc3m-train-*.tar, Downloaded on 2021/12/22, 576 shards, 2905954 (of 3318333) samples. Link "
            "rot has grown since: a download today yields less.",
        ),
        Assumption(
            name="cc3m_val_yield",
            value=13_443 / 15_840,
            unit="fraction of CC3M val urls that download",
            source=CC3M_YIELD,
            quote="Validation: cc3m-validation-*.tar, Downloaded on 2023/12/13, 16 shards, 13443 (of 15840) samples",
        ),
        Assumption(
            name="vist_stories",
            value=5_000,
            unit="VIST SIS val stories",
            source="assumption",
            quote="approximate size of the VIST story-in-sequence val split the paper evaluates on (not counted "
            "here: the annotations are not shipped)",
        ),
        Assumption(
            name="visdial_dialogs",
            value=2_064,
            unit="VisDial 1.0 val dialogs",
            source=VISDIAL_VAL,
            quote="splits: ... - name: validation, num_examples: 2064 (also data_manifests/datasets.json rows.val)",
        ),
        Assumption(
            name="dp_efficiency",
            value=0.95,
            unit="throughput per GPU under DDP / single-GPU throughput",
            source="assumption",
            quote="DDP all-reduces only the adapters' ~50M gradients per step (the LM is frozen); 5% lost to that and "
            "to stragglers. Split stages (independent items) are taken as 1.0.",
        ),
        Assumption(
            name="faiss_build_seconds_3_3m",
            value=92.9,
            unit="s to build the IVF index of 3.3M 256-d rows on 2 CPU cores",
            source="bench/retrieval.py (this repository)",
            quote="3.3M clustered: build s 92.9 (measured on 2 shared CPU cores, its docstring table); scaled "
            "linearly to the bank's rows",
        ),
        Assumption(
            name="eval_context_tokens",
            value=20,
            unit="OPT tokens per caption in GILL's prompts (per setting: see the quote; plus 8 [IMG] tokens)",
            source="assumption",
            quote="VIST 1cap 20, 5cap 100, 5cap4img 116 (100 + 4 images x 4 visual tokens; 4 ViT-L/14 passes); "
            "VisDial 1/5/10 rounds 30/120/220; CC3M FID and candidates 20 (one caption or prompt). Rough token counts "
            "of one caption (~20) and one Q/A round (~22); see EVAL_TOKENS.",
        ),
        Assumption(
            name="paper_training_hours_2xa6000",
            value=48.0,
            unit="h for 20k steps at batch 200 on 2 x A6000 (the paper's report)",
            source=PAPER_REPORT,
            quote="We train with a batch size of 200 for 20K iterations, which takes 2 days on 2 A6000 GPUs.",
        ),
    )
}

EVAL_TOKENS = {
    "vist": {"1cap": (20, 0), "5cap": (100, 0), "5cap4img": (116, 4)},
    "visdial": {"1round": (30, 0), "5rounds": (120, 0), "10rounds": (220, 0)},
    "cc3m-fid": {"val": (20, 0)},
}
"""Per benchmark and setting: (OPT tokens of GILL's prompt before the [IMG] tokens, context images) (assumption)."""
NUM_IMG = 8
TRAIN_STEPS, TRAIN_BATCH, MAX_LEN, VISUAL_TOKENS = 20_000, 200, 32, 4
SD_STEPS, SD_LATENT, SD_PX = 50, 64, 512
CHECKPOINTS_KEPT, EXPORTS = 2, 2
"""``train.keep_last`` resumable checkpoints, plus the ``best/`` and ``final/`` exports."""
PARTIPROMPTS = 1_632
FEATURE_BYTES = (1024 + 77 * 768) * 2
"""One row of a feature shard: ViT-L/14 pooled (1024) + SD text (77 x 768), float16 (gill/data/precompute.py)."""
BANK_DIM = 256


# -- FLOPs of the paper's models -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Component:
    """A unit of model work that stages are made of, with its FLOPs at the paper's sizes."""

    name: str
    what: str
    kind: str
    """Throughput class on a GPU: ``sd``, ``lm`` or ``encoder``; ``cpu`` for work gill does on the CPU."""
    paper_gflop: float


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of ``fn()`` (matmul, convolution, attention; 2 per multiply-add), forward and any backward it runs."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:  # fused CPU attention is not counted
        fn()
    return float(counter.get_total_flops())


def lm_forward_flops(lm: nn.Module, tokens: int) -> float:
    """FLOPs of one forward of ``lm`` over one sequence of ``tokens`` input embeddings (logits included)."""
    param = next(lm.parameters())
    width = lm.get_input_embeddings().embedding_dim
    embeds = torch.zeros(1, tokens, width, device=param.device, dtype=param.dtype)
    with torch.no_grad():
        return count_flops(lambda: lm(inputs_embeds=embeds))


def adapter_forward_flops(model: GILLModel, num_img: int) -> float:
    """FLOPs of one sample's adapter work in a training step: visual prefix, [IMG] mapper, both retrieval heads."""
    dims, param = model.dims, next(model.adapters.parameters())
    features = torch.zeros(1, dims.vision_hidden, device=param.device, dtype=param.dtype)
    h_img = torch.zeros(1, num_img, dims.lm_hidden, device=param.device, dtype=param.dtype)

    def run() -> None:
        model.encode_images(features)
        model.generation_embeddings(h_img)
        model.text_retrieval_embeddings(h_img[:, 0])
        model.image_retrieval_embeddings(features)

    return count_flops(run)  # not under no_grad: FlopCounterMode's module tracker then fails in nn.Transformer


def train_sample_rule_flops(model: GILLModel, text_passes: int, max_len: int, visual_tokens: int) -> float:
    """The rule: 2 x forward for each frozen-LM pass (captioning over ``visual_tokens + max_len`` tokens, then
    ``text_passes`` text passes over ``max_len``) + 3 x forward for the trained adapters."""
    lm = model.lm
    passes = lm_forward_flops(lm, visual_tokens + max_len) + text_passes * lm_forward_flops(lm, max_len)
    return 2 * passes + 3 * adapter_forward_flops(model, model.config.adapters.num_img_tokens)


def _meta_gill(config: GILLConfig) -> GILLModel:
    dims = derive_dims(config)
    lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(BACKBONES / "facebook--opt-6.7b"))
    ids = range(dims.lm_vocab_size, dims.lm_vocab_size + config.adapters.num_img_tokens)
    return GILLModel(config, dims, lm, list(ids))


def sd_image_flops(unet: nn.Module, vae: nn.Module, text: nn.Module, latent: int, steps: int) -> float:
    """One image: ``steps`` UNet passes at batch 2 (classifier-free guidance), the VAE decode, two text passes."""
    p = next(unet.parameters())
    width = unet.config.cross_attention_dim
    x = torch.zeros(2, unet.config.in_channels, latent, latent, device=p.device, dtype=p.dtype)
    cond = torch.zeros(2, 77, width, device=p.device, dtype=p.dtype)
    t = torch.tensor([500, 500], device=p.device)
    z = torch.zeros(1, vae.config.latent_channels, latent, latent, device=p.device, dtype=p.dtype)
    with torch.no_grad():
        step = count_flops(lambda: unet(x, t, encoder_hidden_states=cond))
        decode = count_flops(lambda: vae.decode(z))
    return steps * step + decode + 2 * text_flops(text)


def text_flops(text: nn.Module) -> float:
    """One 77-token caption through a CLIP text encoder."""
    ids = torch.zeros(1, 77, dtype=torch.long, device=next(text.parameters()).device)
    with torch.no_grad():
        return count_flops(lambda: text(input_ids=ids))


def vision_flops(vision: nn.Module) -> float:
    """One image through a CLIP vision tower at its own resolution."""
    p, size = next(vision.parameters()), vision.config.image_size
    with torch.no_grad():
        return count_flops(lambda: vision(pixel_values=torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype)))


def paper_components(paper_exact: bool = False) -> dict[str, Component]:
    """Every component at the paper's sizes, FLOPs counted on the meta device from the shipped configs."""
    config = paper_config()
    with torch.device("meta"):
        gill = _meta_gill(config)
        per_token = lm_forward_flops(gill.lm, MAX_LEN) / MAX_LEN
        train = train_sample_rule_flops(gill, 2 if paper_exact else 1, MAX_LEN, VISUAL_TOKENS)
        vision = CLIPVisionModel(CLIPVisionConfig.from_pretrained(BACKBONES / "openai--clip-vit-large-patch14"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(SD_DIR / "text_encoder"))
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD_DIR / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD_DIR / "vae"))
        sd = sd_image_flops(unet, vae, text, SD_LATENT, SD_STEPS)
        vit, txt = vision_flops(vision), text_flops(text)
        lpips = 2 * count_flops(lambda: alexnet(weights=None).features(torch.zeros(1, 3, 256, 256)))
        incep = count_flops(
            lambda: inception_v3(weights=None, aux_logits=False, init_weights=False).eval()(torch.zeros(1, 3, 299, 299))
        )
    passes = "three" if paper_exact else "two"
    components = (
        Component(name="vision", what="ViT-L/14 forward, 224 px", kind="encoder", paper_gflop=vit / GB),
        Component(name="sd_text", what="SD-1.5 text encoder, 77 tokens", kind="encoder", paper_gflop=txt / GB),
        Component(name="lm_token", what="OPT-6.7B forward, per token", kind="lm", paper_gflop=per_token / GB),
        Component(
            name="train_sample",
            what=f"GILL training sample: {passes} OPT-6.7B passes (fwd + input grad) + adapters (x3)",
            kind="lm",
            paper_gflop=train / GB,
        ),
        Component(name="sd_image", what="SD-1.5 image: 50 steps, 512 px, guidance", kind="sd", paper_gflop=sd / GB),
        Component(name="clip_score", what="CLIP ViT-L/14 image features", kind="encoder", paper_gflop=vit / GB),
        Component(name="lpips_pair", what="LPIPS AlexNet, two 256 px images", kind="encoder", paper_gflop=lpips / GB),
        Component(name="inception", what="Inception-v3 features, 299 px", kind="encoder", paper_gflop=incep / GB),
        Component(
            name="bank_row",
            what="bank row: normalize(image_proj(features)), 1024 -> 256",
            kind="cpu",
            paper_gflop=2 * 1024 * BANK_DIM / GB,
        ),
    )
    return {c.name: c for c in components}


def adapter_parameters() -> int:
    """Trainable parameters of the paper's adapters (meta device)."""
    with torch.device("meta"):
        model = _meta_gill(paper_config())
    return sum(p.numel() for p in model.trainable_parameters())


# -- measurements on this machine -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """One component measured on this machine: milliseconds and counted GFLOPs per item."""

    ms: float
    gflop: float


@dataclass(frozen=True)
class TrainCheck:
    """The training-sample FLOPs rule against counted real training steps of one model size."""

    rule_vs_counted: float
    """Rule / counted FLOPs of a step without concat-captions (padded to ``max_len``, like the rule)."""
    concat_vs_padded: float
    """Counted FLOPs at the default concat-captions p = 0.5 (mean of a step with and one without) / without: pairs
    merged drop their padding, which the rule (an upper bound) does not."""


@dataclass(frozen=True)
class Measurements:
    """What :func:`measure` returns and :data:`STORED` keeps."""

    device: str
    components: dict[str, dict[str, Measured]]
    """component -> {"tiny": ..., "mid": ...}."""
    train_check: dict[str, TrainCheck]
    """tiny/mid: the training-sample FLOPs rule against counted real training steps."""
    host_decode_ms: float
    """Decoding one 224 px JPEG and CLIP-preprocessing it, per image, one core."""
    jpeg224_bytes: float
    png512_bytes: float
    png224_bytes: float
    tar_overhead_bytes: float
    """Per sample in an image shard beyond its JPEG: tar headers and padding, caption and metadata members."""
    photos: int


STORED = Measurements(
    device="cpu (cpu), fp32, 1 thread, load average 4.4 on 2 CPUs (shared with other work; 2026-11-30)",
    components={
        "vision": {"tiny": Measured(0.312721, 0.00670963), "mid": Measured(140.305, 6.18136)},
        "sd_text": {"tiny": Measured(0.734548, 0.00795379), "mid": Measured(12.0834, 0.508727)},
        "lm_token": {"tiny": Measured(0.00766306, 0.000289152), "mid": Measured(0.811688, 0.0387512)},
        "train_sample": {"tiny": Measured(4.33549, 0.0471507), "mid": Measured(64.1337, 4.03506)},
        "sd_image": {"tiny": Measured(1755.69, 18.2723), "mid": Measured(25520.5, 594.087)},
        "clip_score": {"tiny": Measured(0.312721, 0.00670963), "mid": Measured(140.305, 6.18136)},
        "bank_row": {"tiny": Measured(0.000177378, 3.072e-06), "mid": Measured(0.0148748, 0.000524288)},
    },
    train_check={
        "tiny": TrainCheck(rule_vs_counted=0.9759, concat_vs_padded=0.8267),
        "mid": TrainCheck(rule_vs_counted=0.9944, concat_vs_padded=0.7583),
    },
    host_decode_ms=0.9549,
    jpeg224_bytes=23818.3,
    png512_bytes=364712,
    png224_bytes=84743.7,
    tar_overhead_bytes=2513.14,
    photos=7,
)
"""Figures of one measured run (``python bench/paper_scale.py``) on this project's 2-core CPU machine, used by
``--no-measure``: ms are the best of 3 calls on one thread (SD: of 3 UNet steps, x 50, plus the decode), GFLOPs
counted."""

PHOTOS = (
    "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
    "gradio/media_assets/images/cheetah.jpg",
    "gradio/media_assets/images/cheetah1.jpg",
    "gradio/media_assets/images/lion.jpg",
    "gradio/media_assets/images/groot.jpeg",
    "gradio/media_assets/images/tower.jpg",
    "gradio/test_data/cheetah2.jpg",
)
"""Natural photos that ship inside installed packages (matplotlib always; gradio with the ``ui`` extra)."""


def timed_ms(fn: Callable[[], object], dev: DeviceChoice, repeats: int = 3) -> float:
    """Best wall milliseconds of ``fn()`` over ``repeats`` calls after one warm-up, synchronising the device after
    each: on a shared machine the fastest call is the one least slowed by other work (the measure of capability)."""
    fn()
    dev.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        dev.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


@contextmanager
def autocast(dev: DeviceChoice) -> Iterator[None]:
    """Forwards in the bench's dtype (fp32 master weights), as the trainer and precompute run them."""
    with torch.autocast(dev.device.type, dtype=dev.dtype, enabled=dev.dtype != torch.float32):
        yield


def _measure_forward(model: nn.Module, inputs: dict[str, torch.Tensor], batch: int, dev: DeviceChoice) -> Measured:
    model = model.to(dev.device).eval()
    inputs = {k: v.to(dev.device) for k, v in inputs.items()}

    def run() -> None:
        with torch.no_grad(), autocast(dev):
            model(**inputs)

    return Measured(ms=timed_ms(run, dev) / batch, gflop=count_flops(run) / GB / batch)


def measure_vision(vision: nn.Module, batch: int, dev: DeviceChoice) -> Measured:
    size = vision.config.image_size
    return _measure_forward(vision, {"pixel_values": torch.randn(batch, 3, size, size)}, batch, dev)


def measure_text(text: nn.Module, batch: int, dev: DeviceChoice) -> Measured:
    ids = torch.randint(0, text.config.vocab_size, (batch, 77))
    return _measure_forward(text, {"input_ids": ids}, batch, dev)


def measure_lm_token(lm: nn.Module, dev: DeviceChoice, batch: int = 16) -> Measured:
    ids = torch.randint(3, lm.config.vocab_size, (batch, MAX_LEN))
    return _measure_forward(lm, {"input_ids": ids}, batch * MAX_LEN, dev)


def measure_sd_image(unet: nn.Module, vae: nn.Module, text: Measured, latent: int, dev: DeviceChoice) -> Measured:
    """Per image: 50 x (one UNet step at batch 2) + the VAE decode + two text passes (steps timed separately)."""
    unet, vae = unet.to(dev.device).eval(), vae.to(dev.device).eval()
    x = torch.randn(2, unet.config.in_channels, latent, latent, device=dev.device)
    cond = torch.randn(2, 77, unet.config.cross_attention_dim, device=dev.device)
    t = torch.tensor([500, 500], device=dev.device)
    z = torch.randn(1, vae.config.latent_channels, latent, latent, device=dev.device)

    def step() -> None:
        with torch.no_grad(), autocast(dev):
            unet(x, t, encoder_hidden_states=cond)

    def decode() -> None:
        with torch.no_grad(), autocast(dev):
            vae.decode(z)

    ms = SD_STEPS * timed_ms(step, dev) + timed_ms(decode, dev, repeats=2) + 2 * text.ms
    gflop = (SD_STEPS * count_flops(step) + count_flops(decode)) / GB + 2 * text.gflop
    return Measured(ms=ms, gflop=gflop)


def measure_train_sample(config: GILLConfig, dev: DeviceChoice, batch: int = 16) -> tuple[Measured, TrainCheck]:
    """Real :meth:`Trainer.train_step` calls (batch 16): ms and counted GFLOPs per sample at the default
    concat-captions probability, and the FLOPs rule checked against counted steps without and with concatenation."""
    precision = "bf16" if dev.dtype == torch.bfloat16 else "fp32"
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=batch, precision=precision))
    dims = derive_dims(config)
    lm_dtype = torch.bfloat16 if precision == "bf16" and dev.is_cuda else None  # as gill.train.setup_training
    models = load_backbones(config, roles=("lm",), dtype=lm_dtype)
    img = add_img_tokens(models.tokenizer, config.adapters.num_img_tokens)
    model = GILLModel(config, dims, models.lm, img.ids)
    captions = ["a large red circle on the left of a striped background"] * batch
    tokens = tokenize_captions(models.tokenizer, captions, img, config.max_len)
    data = TrainingBatch(
        keys=[str(i) for i in range(batch)],
        captions=captions,
        input_ids=tokens.input_ids,
        attention_mask=tokens.attention_mask,
        caption_len=tokens.caption_len,
        vision_features=torch.randn(batch, dims.vision_hidden),
        sd_targets=torch.randn(batch, config.adapters.num_clip_tokens, dims.sd_text_dim),
    )

    def trainer(concat_prob: float, tmp: str) -> Trainer:
        cfg = dataclasses.replace(config, train=dataclasses.replace(config.train, concat_prob=concat_prob))
        return Trainer(cfg, model, img, models.tokenizer.bos_token_id, None, None, Path(tmp), device=str(dev.device))

    with tempfile.TemporaryDirectory() as tmp:
        default = trainer(config.train.concat_prob, tmp)
        ms = timed_ms(lambda: default.train_step([data]), dev)
        padded, merged = (count_flops(partial(trainer(p, tmp).train_step, [data])) / batch for p in (0.0, 1.0))
    passes = 2 if config.train.objective().separate_mode_passes else 1
    rule = train_sample_rule_flops(model, passes, config.max_len, config.adapters.n_visual_tokens)
    p = config.train.concat_prob
    expected = (1 - p) * padded + p * merged
    check = TrainCheck(rule_vs_counted=rule / padded, concat_vs_padded=expected / padded)
    return Measured(ms=ms / batch, gflop=expected / GB), check


def mid_vision() -> CLIPVisionModel:
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6, image_size=224,
        patch_size=14,
    )  # fmt: skip
    return CLIPVisionModel(cfg)


def mid_text() -> CLIPTextModel:
    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
        max_position_embeddings=77, vocab_size=49408,
    )  # fmt: skip
    return CLIPTextModel(cfg)


def mid_unet(cross_attention_dim: int) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(64, 128, 256, 256),
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
    )


def mid_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    blocks = 4
    return AutoencoderKL(
        block_out_channels=(32, 64, 128, 128),
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        layers_per_block=1,
        latent_channels=4,
        sample_size=256,
    )


def measure_bank_row(dims_in: int, dims_out: int, rows: int = 8192) -> Measured:
    """:func:`gill.retrieval.project_images` (the bank's embedding pass, on the CPU) over float16 features."""
    torch.manual_seed(0)
    proj = nn.Linear(dims_in, dims_out).eval()
    features = np.random.default_rng(0).standard_normal((rows, dims_in)).astype(np.float16)
    cpu = DeviceChoice(device=torch.device("cpu"), dtype=torch.float32, dtype_name="fp32")
    ms = timed_ms(lambda: project_images(proj, features), cpu)
    return Measured(ms=ms / rows, gflop=2 * dims_in * dims_out / GB)


def measure_components(dev: DeviceChoice) -> tuple[dict[str, dict[str, Measured]], dict[str, TrainCheck]]:
    """Every component on the tiny zoo and the mid-size models (a few batches each)."""
    tiny = get_preset("tiny")
    zoo = load_backbones(tiny, roles=("lm", "vision"))
    sd_dir = Path(resolve_sources(tiny, ["sd"])["sd"])
    tiny_text = load_sd_text_encoder(tiny).text_encoder
    out: dict[str, dict[str, Measured]] = {}
    out["vision"] = {"tiny": measure_vision(zoo.vision, 16, dev), "mid": measure_vision(mid_vision(), 4, dev)}
    out["sd_text"] = {"tiny": measure_text(tiny_text, 16, dev), "mid": measure_text(mid_text(), 16, dev)}
    with tempfile.TemporaryDirectory() as tmp:
        mid_config = mid_size_lm(tiny, Path(tmp))
        mid_lm = load_backbones(mid_config, roles=("lm",)).lm
        out["lm_token"] = {"tiny": measure_lm_token(zoo.lm, dev), "mid": measure_lm_token(mid_lm, dev)}
        tiny_train, tiny_rule = measure_train_sample(tiny, dev)
        mid_train, mid_rule = measure_train_sample(mid_config, dev)
    out["train_sample"] = {"tiny": tiny_train, "mid": mid_train}
    tiny_unet = UNet2DConditionModel.from_pretrained(sd_dir / "unet")
    tiny_vae = AutoencoderKL.from_pretrained(sd_dir / "vae")
    out["sd_image"] = {
        "tiny": measure_sd_image(tiny_unet, tiny_vae, out["sd_text"]["tiny"], tiny_unet.config.sample_size, dev),
        "mid": measure_sd_image(mid_unet(256), mid_vae(), out["sd_text"]["mid"], 32, dev),
    }
    out["clip_score"] = out["vision"]
    out["bank_row"] = {"tiny": measure_bank_row(48, 32), "mid": measure_bank_row(1024, BANK_DIM)}
    return out, {"tiny": tiny_rule, "mid": mid_rule}


def photo_paths() -> list[Path]:
    """The natural photos of :data:`PHOTOS` that are installed here."""
    site = Path(np.__file__).resolve().parents[1]
    return [site / p for p in PHOTOS if (site / p).is_file()]


def _square(image: Image.Image, size: int) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


def _encoded(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def measure_image_bytes() -> dict[str, float]:
    """Mean bytes of what gill writes per image, on natural photos: the download's 224 px JPEG (quality 95, as
    img2dataset is told), 512 px and 224 px PNGs (generated and retrieved images), the shard's per-sample overhead,
    and the host cost of decoding and preprocessing one JPEG for the ViT-L/14."""
    photos = [Image.open(p).convert("RGB") for p in photo_paths()]
    if not photos:
        raise InputError("no natural photo to measure image sizes on", [f"looked for {', '.join(PHOTOS)}"])
    jpegs = [_encoded(_square(p, 224), "JPEG", quality=95) for p in photos]
    png512 = [len(_encoded(_square(p, 512), "PNG")) for p in photos if min(p.size) >= 512]
    png224 = [len(_encoded(_square(p, 224), "PNG")) for p in photos]
    caption = "a photo of a dog running on the beach at sunset"  # CC3M captions average ~10 words
    meta = {"url": "https://example.com/" + "x" * 60 + ".jpg", "caption": caption, "key": "000000000", "status": "ok"}
    samples = [
        ShardSample(key=f"{i:09d}", caption=caption, jpeg=j, meta={**meta, "width": 224, "height": 224})
        for i, j in enumerate(jpegs * 2)
    ]
    with tempfile.TemporaryDirectory() as tmp:  # the difference of two shards: no end-of-archive padding in it
        one = write_image_shard(Path(tmp) / "00000.tar", samples[: len(jpegs)]).stat().st_size
        two = write_image_shard(Path(tmp) / "00001.tar", samples).stat().st_size
        overhead = (two - one - sum(map(len, jpegs))) / len(jpegs)
    processor = CLIPImageProcessor.from_pretrained(BACKBONES / "openai--clip-vit-large-patch14")
    cpu = DeviceChoice(device=torch.device("cpu"), dtype=torch.float32, dtype_name="fp32")

    def decode() -> None:
        processor(images=[Image.open(io.BytesIO(j)).convert("RGB") for j in jpegs], return_tensors="pt")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one decoding worker is one core
    decode_ms = timed_ms(decode, cpu, repeats=5) / len(jpegs)
    torch.set_num_threads(threads)
    return {
        "jpeg224_bytes": float(np.mean(list(map(len, jpegs)))),
        "png512_bytes": float(np.mean(png512)) if png512 else float("nan"),
        "png224_bytes": float(np.mean(png224)),
        "tar_overhead_bytes": float(overhead),
        "host_decode_ms": decode_ms,
        "photos": len(photos),
    }


def measure(dev: DeviceChoice) -> Measurements:
    """Every measurement of this machine (under a minute on one CPU core)."""
    load = os.getloadavg()[0]
    components, rule = measure_components(dev)
    sizes = measure_image_bytes()
    threads = torch.get_num_threads()
    where = f"{dev.describe()}, {threads} thread{'s' * (threads > 1)}, load average {load:.1f} on {os.cpu_count()} CPUs"
    return Measurements(device=where, components=components, train_check=rule, **sizes)


# -- the stages ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One stage of the run: its items, the components one item is made of, how it spreads, what it writes."""

    name: str
    item: str
    items: int
    uses: dict[str, float]
    """component -> count per item."""
    parallel: str
    """``ddp`` (torchrun), ``split`` (independent items over GPUs), ``cpu`` (this machine's CPU), ``network``."""
    disk_bytes: float
    """Bytes the whole stage writes."""
    fixed_seconds: float = 0.0
    """Work independent of the items count (the FAISS index build)."""


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """The run being costed (command-line options)."""

    gpu: str = "a6000"
    gpus: int = 2
    seeds: int = 1
    download_nodes: int = 1
    bandwidth_gbps: float = 2.0
    cpu_workers: int = 8
    paper_exact: bool = False

    def problems(self) -> list[str]:
        out = []
        if self.gpu not in GPUS:
            out.append(f"--gpu {self.gpu!r}: use one of {', '.join(GPUS)}")
        for name in ("gpus", "seeds", "download_nodes", "cpu_workers"):
            if getattr(self, name) < 1:
                out.append(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")
        if not self.bandwidth_gbps > 0:
            out.append(f"--bandwidth-gbps {self.bandwidth_gbps}: must be > 0")
        return out

    @property
    def hardware(self) -> str:
        return f"{self.gpus} x {self.gpu}"


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """Item counts of the run."""

    urls_train: int
    urls_val: int
    images_train: int
    images_val: int


def run_sizes() -> Sizes:
    rows = dataset_manifest()["cc3m"]["rows"]
    return Sizes(
        urls_train=rows["train"],
        urls_val=rows["val"],
        images_train=round(rows["train"] * ASSUMPTIONS["cc3m_train_yield"].value),
        images_val=round(rows["val"] * ASSUMPTIONS["cc3m_val_yield"].value),
    )


def _eval_uses(benchmark: str, seeds: int) -> dict[str, float]:
    """Mean components of one eval item (one sample at one seed) over the benchmark's settings: GILL's and SD's
    images, GILL's prompt pass and context images, and the metrics (seed-free systems and the reference once)."""
    settings = EVAL_TOKENS[benchmark]
    tokens = statistics.mean(t for t, _ in settings.values()) + NUM_IMG
    images = statistics.mean(n for _, n in settings.values())
    uses = {"sd_image": 2.0, "lm_token": tokens, "vision": images}
    if benchmark == "cc3m-fid":
        return {**uses, "inception": 2 + 1 / seeds}
    return {**uses, "clip_score": 2 + 4 / seeds, "lpips_pair": 2 + 3 / seeds}


def build_stages(options: RunOptions, measured: Measurements, adapter_params: int) -> list[Stage]:
    """The stages of a paper-scale run with their items, components and disk."""
    s, m, seeds = run_sizes(), measured, options.seeds
    images = s.images_train + s.images_val
    shard_bytes = m.jpeg224_bytes + m.tar_overhead_bytes
    ckpt_bytes = adapter_params * 4 * (3 * CHECKPOINTS_KEPT + EXPORTS)  # fp32 weights + 2 AdamW moments; exports
    bank_bytes = s.images_train * (2 * BANK_DIM * 4 + 8)  # embeddings.npy + the IVF index's copy and ids
    stories, dialogs = int(ASSUMPTIONS["vist_stories"].value), int(ASSUMPTIONS["visdial_dialogs"].value)
    eval_png = 2 * m.png512_bytes + 4 * m.png224_bytes / seeds
    faiss = ASSUMPTIONS["faiss_build_seconds_3_3m"].value * s.images_train / 3.3e6
    return [
        Stage(
            name="download",
            item="a CC3M url fetched, resized to 224 px, stored as JPEG in a shard",
            items=s.urls_train + s.urls_val,
            uses={},
            parallel="network",
            disk_bytes=images * shard_bytes,
        ),
        Stage(
            name="precompute",
            item="an image through ViT-L/14 and its caption through SD's text encoder",
            items=images,
            uses={"vision": 1, "sd_text": 1},
            parallel="split",
            disk_bytes=images * (FEATURE_BYTES + 100),  # + keys.json (~100 bytes per row)
        ),
        Stage(
            name="train",
            item=f"a training sample ({TRAIN_STEPS:,} steps x batch {TRAIN_BATCH})",
            items=TRAIN_STEPS * TRAIN_BATCH,
            uses={"train_sample": 1},
            parallel="ddp",
            disk_bytes=ckpt_bytes,
        ),
        Stage(
            name="bank",
            item="a training image's features projected into the bank (+ FAISS IVF build)",
            items=s.images_train,
            uses={"bank_row": 1},
            parallel="cpu",
            disk_bytes=bank_bytes,
            fixed_seconds=faiss,
        ),
        Stage(
            name="candidates",
            item="a PartiPrompts prompt: an SD image and GILL's retrieval",
            items=PARTIPROMPTS,
            uses={"sd_image": 1, "lm_token": 20 + NUM_IMG},
            parallel="split",
            disk_bytes=PARTIPROMPTS * (m.png512_bytes + m.png224_bytes),
        ),
        Stage(
            name="vist",
            item="a story at one setting (1cap/5cap/5cap4img) and seed: GILL + SD images, metrics",
            items=stories * 3 * seeds,
            uses=_eval_uses("vist", seeds),
            parallel="split",
            disk_bytes=stories * 3 * seeds * eval_png,
        ),
        Stage(
            name="visdial",
            item="a dialog at one round count (1/5/10) and seed: GILL + SD images, metrics",
            items=dialogs * 3 * seeds,
            uses=_eval_uses("visdial", seeds),
            parallel="split",
            disk_bytes=dialogs * 3 * seeds * eval_png,
        ),
        Stage(
            name="cc3m-fid",
            item="a CC3M val image at one seed: GILL + SD images, Inception features",
            items=s.images_val * seeds,
            uses=_eval_uses("cc3m-fid", seeds),
            parallel="split",
            disk_bytes=s.images_val * seeds * (2 * m.png512_bytes + m.png224_bytes / seeds),
        ),
    ]


# -- costing ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Row:
    """One line of the table and of ``paper_scale_costs``."""

    stage: str
    items: int
    item: str
    gflop_per_item: float
    tiny_ms: float | None
    mid_ms: float | None
    tiny_gflop: float | None
    mid_gflop: float | None
    cpu_gflops: float | None
    cpu_overhead_ms: float | None
    cpu_hours: float | None
    gpu_basis: str
    seconds_per_item: float
    """Per GPU (GPU stages), per node (download) or on the CPU (bank)."""
    parallel: str
    hours: float
    disk_gb: float


def utilisation(kind: str, components: dict[str, Component]) -> float:
    """Fraction of a GPU's peak a component class sustains (see :data:`ASSUMPTIONS`)."""
    if kind == "lm":
        return ASSUMPTIONS["lm_utilisation"].value
    if kind == "encoder":
        return ASSUMPTIONS["encoder_utilisation"].value
    if kind == "sd":
        achieved = components["sd_image"].paper_gflop * GB / ASSUMPTIONS["sd15_a100_seconds_per_image"].value
        return achieved / (GPUS["a100"].peak_tflops * 1e12)
    raise ValueError(f"no GPU utilisation for component kind {kind!r}")


def gpu_seconds(uses: dict[str, float], components: dict[str, Component], gpu: GPU) -> float:
    """Seconds of one GPU per item: each component's FLOPs over its class's sustained FLOP/s."""
    peak = gpu.peak_tflops * 1e12
    return sum(
        n * components[c].paper_gflop * GB / (peak * utilisation(components[c].kind, components))
        for c, n in uses.items()
    )


def _measured_sum(uses: dict[str, float], measured: Measurements, size: str) -> tuple[float, float] | None:
    parts = [(n, measured.components[c][size]) for c, n in uses.items() if c in measured.components]
    if not parts:
        return None
    return sum(n * p.ms for n, p in parts), sum(n * p.gflop for n, p in parts)


def cpu_fit(tiny: tuple[float, float], mid: tuple[float, float]) -> tuple[float, float]:
    """This machine's (GFLOP/s, overhead ms per item) from two (ms, GFLOP) points: the slope between them and the
    intercept; the mid-size point alone (no overhead) when the two do not give a positive slope."""
    (t_ms, t_gf), (m_ms, m_gf) = tiny, mid
    if m_ms > t_ms and m_gf > t_gf:
        rate = (m_gf - t_gf) / ((m_ms - t_ms) / 1000)
        overhead = t_ms - t_gf / rate * 1000
        if overhead >= 0:
            return rate, overhead
    return m_gf / (m_ms / 1000), 0.0


def _basis(stage: Stage, components: dict[str, Component], gpu: GPU, options: RunOptions) -> str:
    peak = gpu.peak_tflops * 1e12
    per_s = {
        c: peak * utilisation(components[c].kind, components) / (components[c].paper_gflop * GB)
        for c in stage.uses
        if components[c].kind != "cpu"
    }
    if stage.parallel == "network":
        return f"{download_rate(options):,.0f} urls/s/node"
    if stage.parallel == "cpu":
        return "CPU projection + FAISS build"
    if stage.name == "precompute":
        return f"ViT-L/14 {per_s['vision']:,.0f} img/s/GPU"
    if stage.name == "train":
        tokens = per_s["train_sample"] * (2 * MAX_LEN + VISUAL_TOKENS)
        return f"{per_s['train_sample']:.1f} samples/s/GPU ({tokens:,.0f} tok/s)"
    return f"SD-1.5 {per_s['sd_image']:.2f} img/s/GPU"


@dataclass(frozen=True, kw_only=True)
class Throughput:
    """What the projection assumes one GPU sustains, in each model class's own units."""

    gpu: str
    sd15_images_per_s: float
    """SD-1.5 images per second, 512 px, 50 steps, guidance 7.5, batch 1."""
    vit_l14_images_per_s: float
    """ViT-L/14 images per second, 224 px (batched inference)."""
    opt67b_tokens_per_s: float
    """OPT-6.7B forward tokens per second (inference)."""
    opt67b_train_tokens_per_s: float
    """OPT-6.7B tokens per second through a frozen forward + input-gradient backward (training)."""


def throughput(gpu: GPU, components: dict[str, Component]) -> Throughput:
    def per_s(name: str) -> float:
        c = components[name]
        return gpu.peak_tflops * 1e12 * utilisation(c.kind, components) / (c.paper_gflop * GB)

    return Throughput(
        gpu=gpu.key,
        sd15_images_per_s=per_s("sd_image"),
        vit_l14_images_per_s=per_s("vision"),
        opt67b_tokens_per_s=per_s("lm_token"),
        opt67b_train_tokens_per_s=per_s("lm_token") / 2,
    )


def print_throughputs(components: dict[str, Component]) -> None:
    print(f"{'gpu':10s} {'dense TFLOPS':>12s} {'SD-1.5 img/s':>13s} {'ViT-L/14 img/s':>15s} {'OPT-6.7B tok/s':>15s} "
          f"{'train tok/s':>12s}")  # fmt: skip
    for gpu in GPUS.values():
        t = throughput(gpu, components)
        print(
            f"{gpu.key:10s} {gpu.peak_tflops:12.1f} {t.sd15_images_per_s:13.2f} {t.vit_l14_images_per_s:15,.0f} "
            f"{t.opt67b_tokens_per_s:15,.0f} {t.opt67b_train_tokens_per_s:12,.0f}"
        )
    for key in ("sd", "encoder", "lm"):
        print(f"utilisation of peak, {key}: {utilisation(key, components):.3f}")


def download_rate(options: RunOptions) -> float:
    """CC3M urls per second per node: img2dataset's documented rate, or what ``--bandwidth-gbps`` carries."""
    by_bandwidth = options.bandwidth_gbps * 1e9 / 8 / ASSUMPTIONS["download_bytes_per_url"].value
    return min(ASSUMPTIONS["download_urls_per_s_per_node"].value, by_bandwidth)


def cost_stage(stage: Stage, components: dict[str, Component], measured: Measurements, options: RunOptions) -> Row:
    gpu = GPUS[options.gpu]
    gflop = sum(n * components[c].paper_gflop for c, n in stage.uses.items())
    tiny, mid = _measured_sum(stage.uses, measured, "tiny"), _measured_sum(stage.uses, measured, "mid")
    rate = overhead = cpu_hours = None
    if tiny and mid:
        rate, overhead = cpu_fit(tiny, mid)
        cpu_seconds = overhead / 1000 + gflop / rate
        if stage.parallel == "cpu":
            cpu_seconds = mid[0] / 1000  # measured at the paper's own dimensions
        cpu_hours = (stage.items * cpu_seconds + stage.fixed_seconds) / 3600
    if stage.parallel == "network":
        per_item = 1 / download_rate(options)
        hours = stage.items * per_item / options.download_nodes / 3600
    elif stage.parallel == "cpu":
        per_item = mid[0] / 1000 if mid else 0.0
        hours = (stage.items * per_item + stage.fixed_seconds) / 3600
    else:
        per_item = gpu_seconds(stage.uses, components, gpu)
        if stage.name == "precompute":  # JPEG decoding on the GPU's share of CPU workers can be the bottleneck
            per_item = max(per_item, measured.host_decode_ms / 1000 / options.cpu_workers)
        efficiency = ASSUMPTIONS["dp_efficiency"].value if stage.parallel == "ddp" and options.gpus > 1 else 1.0
        hours = stage.items * per_item / (options.gpus * efficiency) / 3600
    return Row(
        stage=stage.name,
        items=stage.items,
        item=stage.item,
        gflop_per_item=gflop,
        tiny_ms=tiny[0] if tiny else None,
        mid_ms=mid[0] if mid else None,
        tiny_gflop=tiny[1] if tiny else None,
        mid_gflop=mid[1] if mid else None,
        cpu_gflops=rate,
        cpu_overhead_ms=overhead,
        cpu_hours=cpu_hours,
        gpu_basis=_basis(stage, components, gpu, options),
        seconds_per_item=per_item,
        parallel=stage.parallel,
        hours=hours,
        disk_gb=stage.disk_bytes / GB,
    )


def total_row(rows: list[Row], options: RunOptions) -> Row:
    """Everything one stage after another; disk is everything kept."""
    return Row(
        stage="total",
        items=0,
        item="all stages one after another",
        gflop_per_item=0.0,
        tiny_ms=None,
        mid_ms=None,
        tiny_gflop=None,
        mid_gflop=None,
        cpu_gflops=None,
        cpu_overhead_ms=None,
        cpu_hours=sum(r.cpu_hours or 0.0 for r in rows),
        gpu_basis=f"{sum(r.hours for r in rows if r.parallel in ('ddp', 'split')) * options.gpus:,.0f} GPU-hours",
        seconds_per_item=0.0,
        parallel="",
        hours=sum(r.hours for r in rows),
        disk_gb=sum(r.disk_gb for r in rows),
    )


# -- output -------------------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    """Milliseconds, as seconds from 10 s on (the column stays narrow)."""
    if value is None:
        return "-"
    return f"{value / 1000:,.1f} s" if value >= 10_000 else f"{value:.2g}" if value < 0.1 else f"{value:.2f}"


def _gflop(value: float) -> str:
    return "-" if not value else f"{value:.2g}" if value < 1 else f"{value:,.1f}"


def _hours(value: float | None) -> str:
    return (
        "-"
        if value is None
        else f"{value:,.2f}"
        if value < 10
        else f"{value:,.0f}"
        if value >= 1000
        else f"{value:.1f}"
    )


def print_table(rows: list[Row], options: RunOptions, measured: Measurements) -> None:
    gpu = GPUS[options.gpu]
    print(
        f"paper-scale GILL run on {options.gpus} x {gpu.name} ({gpu.peak_tflops:g} dense TFLOPS each), "
        f"{options.seeds} seed(s); measured on {measured.device}"
    )
    head = (
        f"{'stage':10s} {'items':>11s} {'GFLOP/item':>11s} {'tiny ms':>9s} {'mid ms':>9s} {'CPU GF/s':>8s} "
        f"{'CPU h':>9s}  {'GPU throughput (assumed)':34s} {'hours':>8s} {'disk GB':>8s}"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        items = f"{r.items:,}" if r.items else ""
        cpu_rate = "-" if r.cpu_gflops is None else f"{r.cpu_gflops:.1f}"
        print(
            f"{r.stage:10s} {items:>11s} {_gflop(r.gflop_per_item):>11s} {_ms(r.tiny_ms):>9s} {_ms(r.mid_ms):>9s} "
            f"{cpu_rate:>8s} {_hours(r.cpu_hours):>9s}  {r.gpu_basis:34s} {_hours(r.hours):>8s} {r.disk_gb:8.1f}"
        )
    print(
        "items: see docs/paper-scale.md; tiny/mid ms: per item on the measuring machine (tiny zoo / mid-size "
        "models); CPU h: the paper stage projected on it; hours: the stage on the named GPUs (download: "
        f"{options.download_nodes} node(s) at {options.bandwidth_gbps:g} Gbps; bank: this machine's CPU)."
    )
    for size, check in measured.train_check.items():
        print(
            f"training-sample FLOPs rule / counted real step ({size}, no concat-captions): "
            f"{check.rule_vs_counted:.3f}; counted at concat p = 0.5 / without: {check.concat_vs_padded:.3f} (merged "
            "pairs drop padding; the rule does not)"
        )
    train = next(r for r in rows if r.stage == "train")
    reported = ASSUMPTIONS["paper_training_hours_2xa6000"].value
    print(
        f"training: {train.hours:.1f} h projected here; the paper reports {reported:.0f} h (2 days) on 2 x A6000 "
        f"({'this hardware' if options.hardware == '2 x a6000' else 'other hardware'})"
    )


COLUMNS = (
    ("hardware", "VARCHAR", "GPUs costed, '<n> x <gpu>' (a run replaces every row of its hardware)."),
    ("stage", "VARCHAR", "Stage: download, precompute, train, bank, candidates, vist, visdial, cc3m-fid or total."),
    ("gpu", "VARCHAR", "GPU key (bench/paper_scale.py GPUS: a100, a6000, h100, h100-pcie, h200)."),
    ("gpus", "INTEGER", "Number of GPUs."),
    ("seeds", "INTEGER", "Benchmark seeds (eval items scale with it)."),
    ("items", "BIGINT", "Items of the stage (0 for total)."),
    ("item", "VARCHAR", "What one item is."),
    ("gflop_per_item", "DOUBLE", "GFLOPs per item for the paper's models (counted from the shipped configs)."),
    ("tiny_ms", "DOUBLE", "Measured ms per item with the tiny zoo on the measuring machine."),
    ("mid_ms", "DOUBLE", "Measured ms per item with the mid-size models on the measuring machine."),
    ("tiny_gflop", "DOUBLE", "Counted GFLOPs per item of the tiny measurement."),
    ("mid_gflop", "DOUBLE", "Counted GFLOPs per item of the mid-size measurement."),
    ("cpu_gflops", "DOUBLE", "Achieved GFLOP/s of the measuring machine on this stage (tiny-to-mid slope)."),
    ("cpu_overhead_ms", "DOUBLE", "Per-item time the FLOPs do not explain (intercept), ms."),
    ("cpu_hours", "DOUBLE", "The paper-scale stage projected on the measuring machine, hours."),
    ("gpu_basis", "VARCHAR", "The per-GPU throughput the projection assumes, in the stage's own units."),
    ("seconds_per_item", "DOUBLE", "Seconds per item on one GPU (GPU stages), one node (download) or the CPU (bank)."),
    ("parallel", "VARCHAR", "How it spreads: ddp, split (independent items over GPUs), cpu or network."),
    ("hours", "DOUBLE", "Projected wall hours of the stage on the hardware."),
    ("disk_gb", "DOUBLE", "GB the stage writes."),
    ("measured_on", "VARCHAR", "The machine of the tiny/mid measurements (or the stored figures' machine)."),
    ("settings", "JSON", "The run options (download nodes, bandwidth, CPU workers, paper_exact)."),
    ("created", "TIMESTAMP", "When the row was written (UTC)."),
)
ASSUMPTION_COLUMNS = (
    ("name", "VARCHAR", "Assumption (or gpu_peak_<key>)."),
    ("value", "DOUBLE", "Its value."),
    ("unit", "VARCHAR", "Its unit."),
    ("source", "VARCHAR", "URL it was read from, a file of this repository, or 'assumption'."),
    ("quote", "VARCHAR", "The quoted passage, or the derivation of an assumption."),
)


def _create(con, table: str, comment: str, columns, key: tuple[str, ...]) -> None:
    parts = [f"{name} {kind}{' NOT NULL' if name in key else ''}" for name, kind, _ in columns]
    con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(parts)}, PRIMARY KEY ({', '.join(key)}))")
    con.execute(f"COMMENT ON TABLE {table} IS '{comment}'")
    for name, _, text in columns:
        con.execute(f"COMMENT ON COLUMN {table}.{name} IS '{text.replace(chr(39), chr(39) * 2)}'")


def assumption_rows() -> list[dict[str, object]]:
    rows = [dataclasses.asdict(a) for a in ASSUMPTIONS.values()]
    rows += [
        {"name": f"gpu_peak_{g.key}", "value": g.peak_tflops, "unit": f"dense fp16/bf16 TFLOPS, {g.name}",
         "source": g.source, "quote": g.quote}
        for g in GPUS.values()
    ]  # fmt: skip
    return rows


@contextmanager
def _open_db(path: Path, *, gill_schema: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    """A work folder's ``gill.duckdb`` through :func:`flows.store.connect` (its schema, locking and storage format);
    any other file as a plain DuckDB file in the same storage format, holding only the cost tables."""
    if gill_schema:
        with connect(path) as con:
            yield con
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), config={"storage_compatibility_version": STORAGE_VERSION})
    try:
        yield con
    finally:
        con.close()


def write_db(path: Path, rows: list[Row], options: RunOptions, measured: Measurements) -> None:
    """Replace this hardware's rows of ``paper_scale_costs`` and every row of ``paper_scale_assumptions``, in one
    transaction (a crash leaves the previous rows)."""
    settings = json.dumps(dataclasses.asdict(options), sort_keys=True)
    now = datetime.now(UTC).replace(tzinfo=None)
    costs = pd.DataFrame(
        [
            {
                **dataclasses.asdict(r),
                "hardware": options.hardware,
                "gpu": options.gpu,
                "gpus": options.gpus,
                "seeds": options.seeds,
                "measured_on": measured.device,
                "settings": settings,
                "created": now,
            }
            for r in rows
        ]
    )
    assumptions = pd.DataFrame(assumption_rows())
    with _open_db(path, gill_schema=path.name == DATABASE_FILE) as con:
        con.execute("BEGIN TRANSACTION")
        _create(
            con,
            "paper_scale_costs",
            "Cost model of a paper-scale run per hardware and stage (bench/paper_scale.py).",
            COLUMNS,
            ("hardware", "stage"),
        )
        _create(
            con,
            "paper_scale_assumptions",
            "Figures the paper-scale cost model assumes, with their sources.",
            ASSUMPTION_COLUMNS,
            ("name",),
        )
        con.execute("DELETE FROM paper_scale_costs WHERE hardware = ?", [options.hardware])
        con.execute("DELETE FROM paper_scale_assumptions")
        con.register("incoming_costs", costs)
        con.execute("INSERT INTO paper_scale_costs BY NAME SELECT * FROM incoming_costs")
        con.register("incoming_assumptions", assumptions)
        con.execute("INSERT INTO paper_scale_assumptions BY NAME SELECT * FROM incoming_assumptions")
        con.execute("COMMIT")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arguments(parser)
    parser.add_argument("--gpu", default="a6000", choices=sorted(GPUS), help="GPU to project on (default a6000)")
    parser.add_argument("--gpus", type=int, default=2, help="number of GPUs (default 2, the paper's)")
    parser.add_argument("--seeds", type=int, default=1, help="benchmark seeds (default 1: the official seed 42)")
    parser.add_argument("--download-nodes", type=int, default=1, help="machines downloading CC3M in parallel")
    parser.add_argument("--bandwidth-gbps", type=float, default=2.0, help="network per download node (default 2)")
    parser.add_argument("--cpu-workers", type=int, default=8, help="CPU cores decoding JPEGs per GPU in precompute")
    parser.add_argument("--paper-exact", action="store_true", help="cost the official 3-pass training objective")
    parser.add_argument("--no-measure", action="store_true", help="use the stored measurements (STORED), no timing")
    parser.add_argument("--db", type=Path, default=Path("work/paper-scale.duckdb"), help="DuckDB file to write")
    parser.add_argument("--workdir", type=Path, help="also write the tables into W/gill.duckdb")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads for the measurements (default 1, see docstring)"
    )
    parser.add_argument("--list-gpus", action="store_true", help="print the per-GPU throughput assumed, then exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    dev = resolve_device(args)
    options = RunOptions(
        gpu=args.gpu,
        gpus=args.gpus,
        seeds=args.seeds,
        download_nodes=args.download_nodes,
        bandwidth_gbps=args.bandwidth_gbps,
        cpu_workers=args.cpu_workers,
        paper_exact=args.paper_exact,
    )
    problems = options.problems() + ([f"--threads {args.threads}: must be >= 1"] if args.threads < 1 else [])
    if problems:
        error = InputError("bench/paper_scale.py: invalid options", problems, hint="see --help")
        print(f"error: {error.render()}", file=sys.stderr)
        raise SystemExit(error.exit_code)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    components = paper_components(options.paper_exact)
    if args.list_gpus:
        print_throughputs(components)
        return
    measured = STORED if args.no_measure else measure(dev)
    stages = build_stages(options, measured, adapter_parameters())
    rows = [cost_stage(s, components, measured, options) for s in stages]
    rows.append(total_row(rows, options))
    print_table(rows, options, measured)
    for path in [args.db] + ([db_path(args.workdir)] if args.workdir else []):
        write_db(path, rows, options, measured)
        print(f"wrote {len(rows)} rows of paper_scale_costs ({options.hardware}) to {path}")


if __name__ == "__main__":
    main()
