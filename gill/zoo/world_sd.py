"""A Stable Diffusion trained from scratch on the shapes world: the tiny zoo's image generator.

GILL's premise (paper sections 1 and 3.2) is that a frozen text-to-image model conditioned by a CLIP text encoder
reads *one* caption well but not a long, multi-sentence context, while a frozen LLM, trained on long text, does;
so mapping the LLM's ``[IMG]`` states into the text encoder's space lets the image model use the context. This
module builds that situation in miniature, with the classes of real SD v1.5:

* ``AutoencoderKL`` with a 4x latent factor (64 px -> 16x16x4), trained to reconstruct rendered scenes;
* ``CLIPTextModel`` (the SD text encoder), first pre-trained contrastively against a small vision tower on
  renders (as SD's text encoder is CLIP's), then fine-tuned gently with the ``UNet2DConditionModel``, which is
  trained from scratch on rendered scenes and their **single CC3M-style captions** only: like CLIP's 77-token
  text tower, SD's text encoder never sees a story or a dialogue. The tiny OPT, by contrast, is pre-trained on
  the world's captions, stories and dialogues (:mod:`gill.zoo.pretrain`), as real LLMs are on long text;
* the v-prediction objective with a zero-terminal-SNR rescale of SD v1.5's noise schedule (Lin et al. 2024;
  :attr:`WorldSDConfig.zero_terminal_snr` says why) and a ``DPMSolverMultistepScheduler`` (DPM-Solver++,
  2nd order, trailing timesteps) for sampling, so 10-20 steps suffice.

The result is saved as a ``StableDiffusionPipeline`` and loaded with ``from_pretrained`` exactly like real SD.

Held-out scenes: a fixed 10% of all possible scenes (by a hash of the scene, :func:`is_held_out`) are never
rendered for training, so quality can be measured on captions whose exact scene the model never saw.

Building takes tens of minutes on two CPU cores, so the trained weights ship with the repository
(``data_manifests/tiny_zoo/world_sd``, written by ``gill models build-world-sd``) and the tiny zoo copies them;
the build is deterministic for a seed and a thread count (:data:`THREADS`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig

from gill.errors import InputError
from gill.manifests import manifests_dir
from gill.synth.render import render_scene
from gill.synth.scenes import Scene, changed_scene, sample_scene
from gill.synth.text import cc3m_caption
from gill.utils.io import atomic_directory, atomic_write_json, sha256_file

logger = logging.getLogger(__name__)

THREADS = 1
"""Intra-op threads during the build: CPU reductions then split the same way every time (repeatable weights on
any machine; one thread also leaves a core free for other work during the long build)."""
SD15_SCHEDULE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}
"""Stable Diffusion v1.5's noise schedule (its ``scheduler_config.json``)."""


@dataclass(frozen=True, kw_only=True)
class WorldSDConfig:
    """Sizes and training lengths of the world SD. The defaults are the shipped build."""

    seed: int = 0
    image_size: int = 64
    held_out_percent: int = 10
    """Percent of all scenes (chosen by a hash of the scene) never rendered for training."""
    # -- VAE
    vae_channels: tuple[int, ...] = (16, 32, 32)
    """One encoder block per entry; the latent factor is 2 ** (len - 1)."""
    latent_channels: int = 4
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_shape_weight: float = 20.0
    """Loss weight of shape pixels (shapes cover ~3% of an image; unweighted, their colour gets lost)."""
    vae_kl_weight: float = 1e-6
    # -- text encoder
    text_width: int = 32
    text_layers: int = 3
    text_heads: int = 4
    text_pretrain_steps: int = 1500
    """Contrastive (CLIP) pre-training steps of the text encoder against a small vision tower on renders, before
    the UNet: like real SD, whose text encoder is CLIP's. Trained jointly from scratch instead, the text encoder
    never learns the words the UNet does not use yet (position), and the UNet never learns to use them."""
    text_pretrain_batch: int = 128
    """Half random scenes, half the same scenes with one attribute changed (hard negatives)."""
    text_lr_scale: float = 0.1
    """Learning-rate factor of the text encoder while the UNet trains (0: frozen, as in SD). Fine-tuning it a
    little binds the position words: frozen, the 3x3 cell was right 46% of the time after 2,500 steps; at 0.1,
    98% (one-shape held-out captions)."""
    # -- UNet
    unet_channels: tuple[int, ...] = (32, 64, 64, 64)
    unet_attention: tuple[bool, ...] = (False, True, True, True)
    """Cross-attention in each resolution level (16, 8, 4, 2 latent pixels); none at 16 (it doubles the cost)."""
    unet_layers_per_block: int = 1
    unet_heads: int = 4
    pool_size: int = 24000
    """Training scenes rendered and encoded once; each draw pairs one with a freshly templated caption."""
    unet_steps: int = 4000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    unet_warmup: int = 200
    latent_shape_weight: float = 5.0
    """Loss weight of latent cells under a shape."""
    caption_dropout: float = 0.1
    """Share of captions replaced by the empty prompt (classifier-free guidance's unconditional branch)."""
    single_shape_start: float = 0.8
    """Share of one-shape scenes at the start (falls linearly to the world's own mix at half of the run)."""
    prediction_type: str = "v_prediction"
    """``v_prediction`` (SD 2.x) or ``epsilon`` (SD 1.x)."""
    zero_terminal_snr: bool = True
    """Rescale SD's betas so the last step is pure noise (Lin et al. 2024). With SD's own schedule the last step
    keeps 7% of the image, and on a world of flat backgrounds and blobs that leak carries the background and the
    layout: the model then reads them from the noise instead of the text, and ignores the text for them."""
    min_snr_gamma: float | None = None
    """Min-SNR loss weighting (Hang et al. 2023); None: plain MSE on the prediction target."""
    ema_decay: float = 0.999
    log_every: int = 100


@dataclass(frozen=True, kw_only=True)
class BuildReport:
    """What a build did: losses and seconds per stage."""

    config: dict
    vae_loss: tuple[float, float]
    """First and last-100-mean loss of the VAE."""
    unet_loss: tuple[float, float]
    seconds: dict[str, float] = field(default_factory=dict)


# -- scenes ------------------------------------------------------------------------------------------------------


def scene_key(scene: Scene) -> str:
    """A canonical JSON text of a scene (shape order included: it is part of the caption)."""
    return json.dumps(scene.to_dict(), sort_keys=True, separators=(",", ":"))


def is_held_out(scene: Scene, percent: int = 10) -> bool:
    """Whether ``scene`` belongs to the fixed held-out share of all scenes (never trained on)."""
    digest = hashlib.sha256(scene_key(scene).encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 < percent


def sample_training_scene(rng: random.Random, single_prob: float, held_out_percent: int) -> Scene:
    """A world scene that is not held out: one shape with probability ``single_prob``, else the world's mix."""
    while True:
        scene = sample_scene(rng, 1) if rng.random() < single_prob else sample_scene(rng)
        if not is_held_out(scene, held_out_percent):
            return scene


def sample_held_out_scenes(n: int, seed: int, held_out_percent: int = 10, n_shapes: int | None = None) -> list[Scene]:
    """``n`` distinct held-out scenes (the world's mix, or ``n_shapes`` shapes each)."""
    rng = random.Random(f"world-sd-held-out-{seed}")
    scenes: dict[str, Scene] = {}
    while len(scenes) < n:
        scene = sample_scene(rng, n_shapes)
        if is_held_out(scene, held_out_percent):
            scenes.setdefault(scene_key(scene), scene)
    return list(scenes.values())


def render_batch(scenes: list[Scene], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, S, S) images in [-1, 1] and (B, 1, S, S) shape masks (1 where a shape is drawn)."""
    images, masks = [], []
    for scene in scenes:
        full = np.asarray(render_scene(scene, size), dtype=np.float32)
        empty = np.asarray(render_scene(Scene(background=scene.background, shapes=()), size), dtype=np.float32)
        images.append(full / 127.5 - 1.0)
        masks.append((np.abs(full - empty).max(axis=-1) > 24).astype(np.float32))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (B, 3, S, S)
    return pixels, torch.from_numpy(np.stack(masks))[:, None]  # (B, 1, S, S)


@contextmanager
def fixed_threads(n: int = THREADS) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- models ------------------------------------------------------------------------------------------------------


def make_vae(config: WorldSDConfig) -> AutoencoderKL:
    """The world VAE (SD's ``AutoencoderKL`` class, smaller, 4x latent factor by default)."""
    n = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=config.latent_channels,
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        sample_size=config.image_size,
    )


def make_text_encoder(config: WorldSDConfig, tokenizer) -> CLIPTextModel:
    """SD's text encoder class (``CLIPTextModel``), sized for the world's captions."""
    return CLIPTextModel(_text_config(config, tokenizer))


def _text_config(config: WorldSDConfig, tokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_width,
        intermediate_size=4 * config.text_width,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=config.text_width,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def make_unet(config: WorldSDConfig) -> UNet2DConditionModel:
    """SD's ``UNet2DConditionModel``, with cross-attention at the levels ``unet_attention`` selects."""
    factor = 2 ** (len(config.vae_channels) - 1)
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.unet_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.unet_attention))
    return UNet2DConditionModel(
        sample_size=config.image_size // factor,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        layers_per_block=config.unet_layers_per_block,
        block_out_channels=config.unet_channels,
        norm_num_groups=8,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=config.text_width,
        attention_head_dim=config.unet_heads,
    )


def make_noise_schedule(config: WorldSDConfig) -> DDPMScheduler:
    """The training noise schedule: SD's betas, optionally rescaled to zero terminal SNR."""
    return DDPMScheduler(
        **SD15_SCHEDULE, prediction_type=config.prediction_type, rescale_betas_zero_snr=config.zero_terminal_snr
    )


def make_scheduler(config: WorldSDConfig) -> DPMSolverMultistepScheduler:
    """DPM-Solver++ (2nd order) over the training schedule, with trailing timesteps: good images in 10-20 steps."""
    return DPMSolverMultistepScheduler(
        **SD15_SCHEDULE,
        algorithm_type="dpmsolver++",
        solver_order=2,
        prediction_type=config.prediction_type,
        rescale_betas_zero_snr=config.zero_terminal_snr,
        timestep_spacing="trailing" if config.zero_terminal_snr else "linspace",
        steps_offset=0 if config.zero_terminal_snr else 1,
    )


# -- VAE ---------------------------------------------------------------------------------------------------------


def vae_loss(
    vae: AutoencoderKL, pixels: torch.Tensor, masks: torch.Tensor, config: WorldSDConfig, generator: torch.Generator
) -> torch.Tensor:
    """Shape-weighted L1 + L2 reconstruction plus a small KL term (SD's VAE objective without the GAN)."""
    posterior = vae.encode(pixels).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator)
    latents = posterior.mean + posterior.std * noise  # (B, C, h, w)
    recon = vae.decode(latents).sample  # (B, 3, S, S)
    weight = 1.0 + (config.vae_shape_weight - 1.0) * masks  # (B, 1, S, S)
    diff = recon - pixels
    rec = (weight * (diff.abs() + diff.pow(2))).sum() / (weight.sum() * 3)
    return rec + config.vae_kl_weight * posterior.kl().mean()


def train_vae(config: WorldSDConfig, progress: Callable[[str], None]) -> tuple[AutoencoderKL, tuple[float, float]]:
    """Train the VAE on freshly rendered training scenes; return it and (first, last) loss."""
    torch.manual_seed(config.seed)
    vae = make_vae(config)
    rng = random.Random(f"world-sd-vae-{config.seed}")
    generator = torch.Generator().manual_seed(config.seed)
    optim = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    schedule = _cosine(config.vae_steps, warmup=100)
    losses: list[float] = []
    vae.train()
    for step in range(config.vae_steps):
        scenes = [sample_training_scene(rng, 0.5, config.held_out_percent) for _ in range(config.vae_batch)]
        pixels, masks = render_batch(scenes, config.image_size)
        loss = vae_loss(vae, pixels, masks, config, generator)
        _step(optim, loss, vae.parameters(), lr=config.vae_lr * schedule(step))
        losses.append(loss.item())
        if (step + 1) % config.log_every == 0:
            progress(f"vae step {step + 1}/{config.vae_steps} loss {np.mean(losses[-config.log_every :]):.4f}")
    vae.eval()
    return vae, (losses[0], float(np.mean(losses[-100:])))


@torch.no_grad()
def encode_pool(vae: AutoencoderKL, scenes: list[Scene], size: int, chunk: int = 256) -> tuple[torch.Tensor, ...]:
    """Unscaled latent means (N, C, h, w) and latent-resolution shape masks (N, 1, h, w) of ``scenes``."""
    latents, masks = [], []
    for i in range(0, len(scenes), chunk):
        pixels, mask = render_batch(scenes[i : i + chunk], size)
        mean = vae.encode(pixels).latent_dist.mean  # (b, C, h, w)
        latents.append(mean)
        masks.append((F.adaptive_max_pool2d(mask, mean.shape[-2:]) > 0).float())
    return torch.cat(latents), torch.cat(masks)


# -- text encoder pre-training (CLIP) ------------------------------------------------------------------------------


def make_clip(config: WorldSDConfig, tokenizer) -> CLIPModel:
    """A CLIP whose text tower is the SD text encoder's shape, with a small vision tower (32 px, patch 4)."""
    vision = CLIPVisionConfig(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=4,
        projection_dim=config.text_width,
    )
    text = _text_config(config, tokenizer)
    return CLIPModel(
        CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=config.text_width)
    )


def pretrain_text_encoder(
    config: WorldSDConfig, tokenizer, progress: Callable[[str], None]
) -> tuple[CLIPTextModel, tuple[float, float]]:
    """CLIP-train a text tower on (caption, render) pairs with hard negatives; return it as ``CLIPTextModel``."""
    torch.manual_seed(config.seed + 3)
    clip = make_clip(config, tokenizer)
    rng = random.Random(f"world-sd-text-{config.seed}")
    optim = torch.optim.AdamW(clip.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = _cosine(config.text_pretrain_steps, warmup=100)
    losses: list[float] = []
    clip.train()
    half = config.text_pretrain_batch // 2
    for step in range(config.text_pretrain_steps):
        base = [sample_training_scene(rng, 0.7, config.held_out_percent) for _ in range(half)]
        scenes = base + [changed_scene(s, rng) for s in base]
        pixels, _ = render_batch(scenes, 32)
        ids = tokenize(tokenizer, [cc3m_caption(s, rng) for s in scenes])
        loss = clip(input_ids=ids, pixel_values=pixels, return_loss=True).loss
        _step(optim, loss, clip.parameters(), lr=2e-3 * schedule(step))
        losses.append(loss.item())
        if (step + 1) % config.log_every == 0:
            recent = np.mean(losses[-config.log_every :])
            progress(f"text step {step + 1}/{config.text_pretrain_steps} loss {recent:.4f}")
    text_encoder = CLIPTextModel(_text_config(config, tokenizer))
    text_encoder.load_state_dict(clip.text_model.state_dict())
    return text_encoder.eval(), (losses[0], float(np.mean(losses[-100:])))


# -- UNet + text encoder -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LatentPool:
    """The UNet's training set: scenes, their scaled latents and latent shape masks, split by shape count."""

    scenes: list[Scene]
    latents: torch.Tensor
    """(N, C, h, w), already multiplied by the VAE's scaling factor."""
    masks: torch.Tensor
    """(N, 1, h, w)."""
    single: torch.Tensor
    """Indices of one-shape scenes."""
    mixed: torch.Tensor
    """Indices of the world-mix scenes."""


def build_pool(vae: AutoencoderKL, config: WorldSDConfig) -> LatentPool:
    """Render and encode ``pool_size`` training scenes (half one-shape, half the world's mix)."""
    rng = random.Random(f"world-sd-pool-{config.seed}")
    half = config.pool_size // 2
    scenes = [sample_training_scene(rng, 1.0, config.held_out_percent) for _ in range(half)]
    scenes += [sample_training_scene(rng, 0.0, config.held_out_percent) for _ in range(config.pool_size - half)]
    latents, masks = encode_pool(vae, scenes, config.image_size)
    std = float(latents.std())
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    logger.info("world SD: latent std %.4f -> scaling factor %.5f", std, vae.config.scaling_factor)
    index = torch.arange(len(scenes))
    return LatentPool(
        scenes=scenes, latents=latents * vae.config.scaling_factor, masks=masks, single=index[:half], mixed=index[half:]
    )


def _draw_indices(pool: LatentPool, batch: int, single_prob: float, generator: torch.Generator) -> torch.Tensor:
    """(B,) pool rows: from the one-shape half with probability ``single_prob``, else from the mixed half."""
    use_single = torch.rand(batch, generator=generator) < single_prob
    single = pool.single[torch.randint(len(pool.single), (batch,), generator=generator)]
    mixed = pool.mixed[torch.randint(len(pool.mixed), (batch,), generator=generator)]
    return torch.where(use_single, single, mixed)


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """(B, 77) ids padded to the tokenizer's max length, as ``StableDiffusionPipeline.encode_prompt`` does."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """(B,) Min-SNR weights: min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v; ones when gamma is None."""
    if gamma is None:
        return torch.ones(len(timesteps))
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas).clamp(min=1e-8)
    denominator = snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr.clamp(min=1e-8)
    return torch.clamp(snr, max=gamma) / denominator


class WorldSDTrainer:
    """Joint training of the SD text encoder and UNet on the latent pool (epsilon objective, EMA weights)."""

    def __init__(
        self, config: WorldSDConfig, tokenizer, pool: LatentPool, text_encoder: CLIPTextModel | None = None
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.pool = pool
        torch.manual_seed(config.seed + 1)
        self.text_encoder = text_encoder if text_encoder is not None else make_text_encoder(config, tokenizer)
        self.text_encoder.requires_grad_(config.text_lr_scale > 0)
        self.unet = make_unet(config)
        self.ema = {"text_encoder": copy.deepcopy(self.text_encoder), "unet": copy.deepcopy(self.unet)}
        self.noise = make_noise_schedule(config)
        groups = [{"params": list(self.unet.parameters()), "scale": 1.0}]
        if config.text_lr_scale > 0:
            groups.append({"params": list(self.text_encoder.parameters()), "scale": config.text_lr_scale})
        self.optim = torch.optim.AdamW(groups, lr=config.unet_lr, weight_decay=0.01)
        self.generator = torch.Generator().manual_seed(config.seed + 2)
        self.rng = random.Random(f"world-sd-captions-{config.seed}")
        self.schedule = _cosine(config.unet_steps, warmup=config.unet_warmup)

    def single_prob(self, step: int) -> float:
        """Share of one-shape scenes at ``step``: ``single_shape_start`` falling to 0.4 (the world's) at half-run."""
        frac = min(1.0, step / max(1, self.config.unet_steps // 2))
        return self.config.single_shape_start + frac * (0.4 - self.config.single_shape_start)

    def captions(self, rows: torch.Tensor) -> list[str]:
        """A freshly templated caption per row, or the empty prompt (``caption_dropout`` of the time)."""
        out = []
        for row in rows.tolist():
            caption = cc3m_caption(self.pool.scenes[row], self.rng)
            out.append("" if self.rng.random() < self.config.caption_dropout else caption)
        return out

    def loss(self, step: int) -> torch.Tensor:
        """Min-SNR- and shape-weighted epsilon MSE of one batch."""
        cfg = self.config
        rows = _draw_indices(self.pool, cfg.unet_batch, self.single_prob(step), self.generator)
        latents, masks = self.pool.latents[rows], self.pool.masks[rows]  # (B, C, h, w), (B, 1, h, w)
        noise = torch.randn(latents.shape, generator=self.generator)
        timesteps = torch.randint(0, self.noise.config.num_train_timesteps, (len(rows),), generator=self.generator)
        noisy = self.noise.add_noise(latents, noise, timesteps)
        with torch.set_grad_enabled(cfg.text_lr_scale > 0):
            states = self.text_encoder(tokenize(self.tokenizer, self.captions(rows)))[0]  # (B, 77, Dt)
        pred = self.unet(noisy, timesteps, encoder_hidden_states=states).sample
        target = noise if cfg.prediction_type == "epsilon" else self.noise.get_velocity(latents, noise, timesteps)
        weight = 1.0 + (cfg.latent_shape_weight - 1.0) * masks  # (B, 1, h, w)
        per_sample = (weight * (pred - target).pow(2)).mean(dim=(1, 2, 3)) / weight.mean(dim=(1, 2, 3))  # (B,)
        return (per_sample * min_snr_weights(self.noise, timesteps, cfg.min_snr_gamma)).mean()

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """EMA of both models, with the usual warm-up of the decay."""
        decay = min(self.config.ema_decay, (1 + step) / (10 + step))
        pairs = [("unet", self.unet)] + ([("text_encoder", self.text_encoder)] if self.config.text_lr_scale > 0 else [])
        for name, live in pairs:
            for ema_p, p in zip(self.ema[name].parameters(), live.parameters(), strict=True):
                ema_p.lerp_(p, 1 - decay)

    def train(self, progress: Callable[[str], None]) -> tuple[float, float]:
        """Run every step; return (first, last-100-mean) loss."""
        cfg = self.config
        losses: list[float] = []
        self.text_encoder.train()
        self.unet.train()
        if cfg.text_lr_scale == 0:
            self.text_encoder.eval()
        for step in range(cfg.unet_steps):
            loss = self.loss(step)
            params = [p for group in self.optim.param_groups for p in group["params"]]
            _step(self.optim, loss, params, lr=cfg.unet_lr * self.schedule(step))
            self.update_ema(step)
            losses.append(loss.item())
            if (step + 1) % cfg.log_every == 0:
                progress(f"unet step {step + 1}/{cfg.unet_steps} loss {np.mean(losses[-cfg.log_every :]):.4f}")
        for model in self.ema.values():
            model.eval()
        return losses[0], float(np.mean(losses[-100:]))


def _cosine(total: int, warmup: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up, then cosine decay to 10%."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _step(optim: torch.optim.Optimizer, loss: torch.Tensor, params, lr: float) -> None:
    for group in optim.param_groups:
        group["lr"] = lr * group.get("scale", 1.0)
    optim.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(params), 1.0)
    optim.step()


# -- build -------------------------------------------------------------------------------------------------------


def assemble_pipeline(vae, text_encoder, tokenizer, unet, config: WorldSDConfig) -> StableDiffusionPipeline:
    """The components as a stock ``StableDiffusionPipeline`` (no safety checker: the world has no people)."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=make_scheduler(config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def train_world_sd(
    tokenizer, config: WorldSDConfig = WorldSDConfig(), progress: Callable[[str], None] = logger.info
) -> tuple[StableDiffusionPipeline, BuildReport]:
    """Train the VAE, then the text encoder and UNet; return the pipeline (EMA weights) and a report."""
    seconds: dict[str, float] = {}
    with fixed_threads():
        start = time.perf_counter()
        vae, vae_losses = train_vae(config, progress)
        seconds["vae"] = time.perf_counter() - start
        start = time.perf_counter()
        pool = build_pool(vae, config)
        seconds["pool"] = time.perf_counter() - start
        start = time.perf_counter()
        text_encoder, _ = pretrain_text_encoder(config, tokenizer, progress)
        seconds["text_encoder"] = time.perf_counter() - start
        start = time.perf_counter()
        trainer = WorldSDTrainer(config, tokenizer, pool, text_encoder)
        unet_losses = trainer.train(progress)
        seconds["unet"] = time.perf_counter() - start
    pipe = assemble_pipeline(vae, trainer.ema["text_encoder"], tokenizer, trainer.ema["unet"], config)
    report = BuildReport(
        config=asdict(config),
        vae_loss=vae_losses,
        unet_loss=unet_losses,
        seconds={k: round(v, 1) for k, v in seconds.items()},
    )
    return pipe, report


@torch.no_grad()
def generate(
    pipe: StableDiffusionPipeline,
    captions: list[str],
    *,
    steps: int = 20,
    guidance: float = 7.5,
    seed: int = 0,
    batch: int = 32,
) -> list[Image.Image]:
    """Images for ``captions`` (one seeded generator per caption, so an image does not depend on its batch)."""
    images: list[Image.Image] = []
    for i in range(0, len(captions), batch):
        chunk = captions[i : i + batch]
        generators = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        out = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=generators, output_type="pil")
        images += out.images
    return images


def save_world_sd(pipe: StableDiffusionPipeline, report: BuildReport, out: str | Path) -> Path:
    """``save_pretrained`` the pipeline into ``out`` with a ``build.json`` report beside it."""
    out = Path(out)
    pipe.save_pretrained(out)
    (out / "build.json").write_text(json.dumps(asdict(report), indent=2, sort_keys=True) + "\n")
    return out


# -- the shipped weights -----------------------------------------------------------------------------------------

SHIPPED_FOLDER = "tiny_zoo/world_sd"
"""Where the trained pipeline ships, relative to ``data_manifests``."""
SHIPPED_MANIFEST = "tiny_zoo/world_sd.json"
"""Its manifest: the sha256 of every file, the build settings and how long the build took."""
REBUILD_HINT = (
    "rebuild them with `gill models build-world-sd` (tens of minutes on 2 CPU cores), or restore the "
    "files from a clean checkout of gill"
)


def shipped_paths() -> tuple[Path, Path]:
    """(pipeline folder, manifest file) of the shipped world SD."""

    return manifests_dir() / SHIPPED_FOLDER, manifests_dir() / SHIPPED_MANIFEST


def folder_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative posix path (sorted)."""

    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def verify_world_sd(folder: Path | None = None, manifest: Path | None = None) -> list[str]:
    """Problems with a world SD folder against its manifest (missing, changed or unlisted files); [] when intact."""
    shipped_folder, shipped_manifest = shipped_paths()
    folder, manifest = folder or shipped_folder, manifest or shipped_manifest
    if not manifest.is_file():
        return [f"{manifest}: the world SD manifest is missing"]
    expected = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    actual = folder_hashes(folder) if folder.is_dir() else {}
    problems = [f"{folder / name}: missing" for name in expected if name not in actual]
    problems += [
        f"{folder / name}: sha256 differs from {manifest.name}"
        for name in expected
        if name in actual and actual[name] != expected[name]
    ]
    problems += [f"{folder / name}: not listed in {manifest.name}" for name in actual if name not in expected]
    return problems


def require_world_sd() -> None:
    """Raise InputError naming every missing or changed file of the shipped world SD (nothing when intact)."""

    problems = verify_world_sd()
    if problems:
        raise InputError(
            "the shipped world-trained Stable Diffusion weights are not intact", problems, hint=REBUILD_HINT
        )


def install_world_sd(dest: Path) -> None:
    """Copy the shipped, verified world SD pipeline to ``dest`` (raises InputError naming every bad file)."""

    require_world_sd()
    shutil.copytree(shipped_paths()[0], dest)


def write_shipped(pipe: StableDiffusionPipeline, report: BuildReport, folder: Path, manifest: Path) -> dict:
    """Save the pipeline into ``folder`` (replacing it atomically) and its manifest into ``manifest``.

    The UNet and the VAE are stored in float16 (half the bytes; ``from_pretrained`` loads them as float32, as it
    does SD's fp16 variants); the small text encoder stays float32.
    """

    pipe.unet.to(torch.float16)
    pipe.vae.to(torch.float16)
    with atomic_directory(folder) as tmp:
        pipe.save_pretrained(tmp)
        hashes = folder_hashes(tmp)
    document = {
        "format": 1,
        "files": hashes,
        "build": asdict(report),
        "rebuild": "gill models build-world-sd --seed {seed}".format(seed=report.config["seed"]),
    }
    atomic_write_json(manifest, document)
    return document
