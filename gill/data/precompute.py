"""Precompute GILL's frozen training targets, once, as one aligned feature shard per image shard.

GILL trains only adapters (paper section 3; docs/official-gill.md §1.1, 1.4): the CLIP vision encoder and the Stable
Diffusion text encoder are frozen, so their outputs are computed once here and read by the trainer
(:mod:`gill.data.reader`), which then needs no pixels at all:

* ``vision.npy``: (N, Dv) the vision encoder's ``pooler_output`` (post-layernorm CLS, before CLIP's projection;
  1024-d for ViT-L/14), from the encoder's own image processor;
* ``sd_text.npy``: (N, 77, Dt) SD's text-encoder ``last_hidden_state`` of the caption, tokenised as SD 1.5 does
  (pad to ``model_max_length``, truncate on the right, no attention mask; official §3.1);
* ``keys.json``: ``{"keys": [...], "captions": [...]}``, the row order of both arrays (sorted by key);
* ``manifest.json``: encoder identity (ids, revisions, sha256 of configs, tokenizer files and weights, image
  processor settings; a model folder inside ``portable_root`` is named relative to it), dtypes, shapes, count,
  how it ran (device, the forward's torch threads, duration), the source tar's sha256, the **fingerprint**
  (sha256 of the canonical JSON of every input that determines the arrays) and ``files``: size, sha256 and mtime
  of each of the three files above.

Verification of the outputs: a re-run keeps a shard only when its fingerprint matches *and* its files are intact.
Sizes are compared on every run (free: a ``stat``); the sha256 is recomputed when a file's size matches but its
modification time differs from the recorded one (the file was rewritten or edited in place, which is suspicious),
so an untouched shard costs no read. A damaged shard (missing, truncated, grown or edited file) is recomputed.
Corruption that keeps both size and mtime (bit rot) is not looked for; :func:`output_problems` with
``checksums=True`` checks every byte. Shards written before ``files`` was recorded are recomputed once. Leftover
temporary shard folders of a killed run (``.<shard>.<8 chars>.tmp``) are removed by the next run.

Storage dtype: ``fp32`` stores float32; ``fp16`` and ``bf16`` store float16 (numpy has no bfloat16; bf16 values
fit fp16's range for these post-layernorm outputs and lose no mantissa bits, and a non-finite value after the
cast is an error). On CPU the forward always runs in float32; on CUDA it runs under autocast in the requested
dtype. The effective compute dtype and the storage dtype are both part of the fingerprint; the device, the batch
size and the path of a local model folder (its file hashes identify it) are not.

Throughput: the stage has two parts, preparing batches (read the members, decode the JPEGs, image processor,
tokenizer) and the forward. With a GPU they use different hardware and the stage runs at the slower part's speed:
batches are prepared ahead of the forward in ``threads`` background threads (default 1) or in ``num_workers``
worker processes (a GPU encodes faster than one core decodes JPEGs). On a CPU they share the cores: ``processes``
shard processes each precompute whole shards (:func:`shard_processes`), or, in one process, the forward runs on
all of torch's threads with batches prepared inline or on one thread fewer per preparer with batches prepared in
the background, whichever its first measured batches find faster (:class:`PipelineBalance`). The image processor
runs once per batch of same-sized images instead of once per image (:class:`BatchPreprocessor`, bit-identical
output, so stored features and the fingerprint do not change). ``bench/precompute.py`` measures each part alone,
the bound and each layout against it.

Fixes over the official ``scripts/preprocess_sd_embeddings.py`` (official §3.1, 8): one memory-mappable file
per shard instead of one ``.npy`` per caption; resume by fingerprint instead of by file existence (whose
``str.strip('.npy')`` mis-skipped ids); every write atomic, so a crash never leaves half a shard.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm
from transformers.image_processing_backends import TorchvisionBackend

from gill.config import GILLConfig, looks_like_path
from gill.data.shards import (
    WORKER_CONTEXT,
    ShardIndex,
    ShardSample,
    SplitFolders,
    complete_image_shards,
    index_shard,
    read_samples,
    read_stats,
    stats_path,
)
from gill.errors import ConfigError, InputError
from gill.factory import load_backbones, load_sd_text_encoder, resolve_sources
from gill.hub import locate
from gill.presets import tiny_component
from gill.utils.io import atomic_directory, atomic_write_json, remove_stale_temp_dirs, sha256_file
from gill.utils.process_farm import ProcessFarm, cores, worker_context

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bump when the layout or the computation changes (it is part of the fingerprint)."""
VISION_FILE = "vision.npy"
SD_TEXT_FILE = "sd_text.npy"
KEYS_FILE = "keys.json"
MANIFEST_FILE = "manifest.json"
OUTPUT_FILES = (VISION_FILE, SD_TEXT_FILE, KEYS_FILE)
"""The files of a feature shard that ``manifest.json["files"]`` records (size, sha256, mtime)."""

DTypeName = Literal["fp16", "bf16", "fp32"]
TORCH_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
STORAGE_DTYPES: dict[str, np.dtype] = {
    "fp16": np.dtype("float16"),
    "bf16": np.dtype("float16"),
    "fp32": np.dtype("float32"),
}
TORCH_STORAGE: dict[np.dtype, torch.dtype] = {np.dtype("float16"): torch.float16, np.dtype("float32"): torch.float32}
"""The torch dtype that converts to each storage dtype (converted in torch: half the time of numpy's astype)."""
_SHA256_NAME = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")


# -- options and results ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PrecomputeOptions:
    """How to run the precompute stage (none of these but ``dtype`` changes what is stored)."""

    batch_size: int = 64
    """Images (and captions) per forward pass."""
    device: str = "cpu"
    """Torch device for both encoders (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    dtype: DTypeName = "fp16"
    """Compute dtype on accelerators; ``fp16``/``bf16`` store float16, ``fp32`` stores float32. CPU computes fp32."""
    prefetch: int = 2
    """Batches prepared ahead of the forward (per worker process, or in one background thread; 0: no overlap)."""
    num_workers: int = 0
    """Processes that read, decode, preprocess and tokenise (0: ``threads`` background threads instead). Started
    with the first shard and kept while the encoders are loaded. With a GPU, whose forward is far faster than JPEG
    decoding, give them most CPU cores; on a CPU they also keep preparing from slowing the forward down through
    Python's GIL, which threads share."""
    threads: int = 1
    """Background threads that read, decode, preprocess and tokenise batches when ``num_workers`` is 0 (each
    prepares whole batches; JPEG decoding and torch's resize release the GIL)."""
    forward_threads: int = 0
    """Torch intra-op threads while a shard's forward runs, with batches prepared in the background. 0:
    automatic: on a CPU device two settings are tried on a few batches of the first shard and the faster is kept
    (:class:`PipelineBalance`): the forward on torch's threads (by default one per core) with batches prepared
    inline, or on one thread fewer per preparer with batches prepared in the background."""
    processes: int = 1
    """Processes that each precompute whole shards (``gill data precompute`` and the pipeline's stage; the
    ``precompute-targets`` flow spreads shards over its task runner instead). Each loads its own copy of the
    encoders, runs its forward on ``cores // processes`` torch threads and prepares its batches inline: on a CPU,
    where the forward and the preparation share the cores, this keeps every core busy with no hand-over between
    threads and no shared GIL, which a pipeline inside one process cannot (``bench/precompute.py`` measures both).
    1: this process, with the pipeline set by the options above. CPU only: with a GPU, use ``num_workers``."""
    pin_cores: bool = True
    """With ``processes`` > 1: run each shard process on its own ``cores // processes`` cores (Linux), so that
    the scheduler does not move them between cores. Turn it off when other jobs share the machine's cores."""
    batched_preprocess: bool = True
    """Preprocess a batch's same-sized images with one call of each of the image processor's own torchvision ops
    instead of image by image; used only where its output is bit-identical to the processor's (checked when the
    encoders load), so stored features do not depend on it. False: the processor, image by image."""

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            problems.append(f"batch_size: must be a positive int, got {self.batch_size!r}")
        if self.dtype not in TORCH_DTYPES:
            problems.append(f"dtype: must be one of {sorted(TORCH_DTYPES)}, got {self.dtype!r}")
        if isinstance(self.processes, bool) or not isinstance(self.processes, int) or self.processes < 1:
            problems.append(f"processes: must be an int >= 1, got {self.processes!r}")
        elif self.processes > 1 and not str(self.device).startswith("cpu"):
            problems.append(
                f"processes: {self.processes} processes run on the CPU only, got device {self.device!r} "
                "(with a GPU keep processes=1 and let num_workers processes prepare the batches)"
            )
        for name in ("prefetch", "num_workers", "forward_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{name}: must be an int >= 0, got {value!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            problems.append(f"threads: must be an int >= 1, got {self.threads!r}")
        for name in ("batched_preprocess", "pin_cores"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}: must be true or false, got {getattr(self, name)!r}")
        problems += _device_problems(self.device)
        if problems:
            raise ConfigError("invalid PrecomputeOptions", problems)

    @property
    def compute_dtype(self) -> torch.dtype:
        """float32 on CPU (half-precision CPU kernels are slow and inexact); the requested dtype elsewhere."""
        return torch.float32 if torch.device(self.device).type == "cpu" else TORCH_DTYPES[self.dtype]

    @property
    def storage_dtype(self) -> np.dtype:
        """numpy dtype of the stored arrays (float16 for fp16 and bf16, float32 for fp32)."""
        return STORAGE_DTYPES[self.dtype]


def _device_problems(device: str) -> list[str]:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        return [f"device: not a torch device string ({err}), got {device!r}; use 'cpu', 'cuda' or 'cuda:N'"]
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            return [f"device: {device!r} requested but CUDA is not available on this machine; use device='cpu'"]
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            return [f"device: {device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible"]
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        return [f"device: {device!r} requested but MPS is not available; use device='cpu'"]
    elif parsed.type not in ("cpu", "cuda", "mps"):
        return [f"device: must be cpu, cuda[:N] or mps, got {device!r}"]
    return []


@dataclass(frozen=True, kw_only=True)
class ShardResult:
    """What precomputing one image shard did."""

    split: str
    """Dataset split (``train``, ``val``)."""
    shard: str
    """Shard name (the tar's stem, ``00000``)."""
    count: int
    """Rows in the feature shard."""
    fingerprint: str
    """sha256 of every input that determines the stored arrays (see module docstring)."""
    duration_s: float
    """Wall time of the computation (for a skipped shard: of the run that wrote it)."""
    samples_per_s: float
    """``count / duration_s`` of that computation."""
    skipped: bool
    """True when an up-to-date feature shard already existed."""

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], *, skipped: bool) -> ShardResult:
        """The result recorded in a feature shard's ``manifest.json``."""
        fields = ("split", "shard", "count", "fingerprint", "duration_s", "samples_per_s")
        return cls(**{name: manifest[name] for name in fields}, skipped=skipped)

    def row(self) -> dict[str, Any]:
        """Row for the DuckDB table ``precompute_shards``."""
        return {
            "split": self.split,
            "shard": self.shard,
            "count": self.count,
            "fingerprint": self.fingerprint,
            "duration_s": self.duration_s,
            "samples_per_s": self.samples_per_s,
        }


# -- batched preprocessing ------------------------------------------------------------------------------

BATCHED_PIXEL_TOLERANCE = 0.0
"""Largest absolute difference of normalised pixels allowed between :class:`BatchPreprocessor`'s batched path and
the image processor called on the same images: none. The batched path runs the processor's own torchvision ops
(the same antialiased resize kernel, centre crop and fused rescale+normalise) once on a stack of same-sized images
instead of once per image, which changes no arithmetic; so stored features do not depend on it and the format
version stays. Where it would differ (another backend, a processor with other steps) the processor is used."""

_PIXEL_SETTINGS = (
    "do_convert_rgb",
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
)
"""The processor settings :meth:`TorchvisionBackend._preprocess` reads (besides padding, which is not batched)."""
_PROCESSOR_STEPS = ("preprocess", "_preprocess_image_like_inputs", "_prepare_image_like_inputs", "_preprocess")
"""Methods whose torchvision-backend versions the batched path re-enacts; a processor overriding one is not batched."""
_PROBE_SIZES = ((256, 256), (256, 256), (300, 171), (171, 300), (47, 33), (5, 300), (16, 16))
"""(width, height) of the noise images checked at load: a same-sized pair, both orientations, odd and tiny sizes."""


class BatchPreprocessor:
    """The vision model's image processor applied to a batch at once (picklable: runs in worker processes).

    transformers' ``CLIPImageProcessor`` (torchvision backend) handles images one at a time on a CPU: it converts
    each to a channels-first tensor (a strided copy), then resizes, crops and normalises it with a handful of
    small torch calls, about 0.5 ms per 256 px image. Here a batch's same-sized RGB images are stacked as one
    channels-last uint8 tensor (one copy, the layout the antialiased resize kernel works in) and each of the
    processor's own ops runs once per stack, in the processor's order: resize, centre crop, rescale+normalise.
    Images that are not plain RGB (grayscale, alpha, palette transparency) are converted by the processor's own
    ``process_image``. :func:`batch_preprocessor` uses this path only after it has checked that the output is
    bit-identical to the processor's (:data:`BATCHED_PIXEL_TOLERANCE`).
    """

    def __init__(self, image_processor: Any, settings: dict[str, Any] | None = None) -> None:
        self.image_processor = image_processor
        self.settings = settings
        """The processor's resolved settings (:data:`_PIXEL_SETTINGS`); None: call the processor image by image."""

    @property
    def batched(self) -> bool:
        """True when same-sized images go through the processor's ops as one stack."""
        return self.settings is not None

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """Resize, crop and normalise as the processor does -> (B, 3, H, W) float32, in input order."""
        if self.settings is None:
            return preprocess_images(self.image_processor, images)
        arrays = [self._channels_last(image) for image in images]  # each (H, W, C) uint8
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, array in enumerate(arrays):
            groups.setdefault(array.shape, []).append(i)
        out: list[torch.Tensor | None] = [None] * len(arrays)
        for rows in groups.values():
            stack = torch.from_numpy(np.stack([arrays[i] for i in rows])).permute(0, 3, 1, 2)  # (b, C, H, W)
            for i, pixels in zip(rows, self._transform(stack), strict=True):
                out[i] = pixels
        return torch.stack(out)  # (B, C, h, w)

    def _channels_last(self, image: Image.Image) -> np.ndarray:
        """(H, W, C) uint8 pixels as the processor's ``process_image`` would give them (channels last)."""
        if isinstance(image, Image.Image) and image.mode == "RGB" and "transparency" not in image.info:
            return np.asarray(image)  # what process_image reads from a plain RGB image
        chw = self.image_processor.process_image(image, do_convert_rgb=self.settings["do_convert_rgb"])
        return chw.permute(1, 2, 0).numpy()

    def _transform(self, stack: torch.Tensor) -> torch.Tensor:
        """The processor's ``_preprocess`` steps on one stack of same-sized images -> (b, C, h, w) contiguous."""
        s, processor = self.settings, self.image_processor
        if s["do_resize"]:
            stack = processor.resize(image=stack, size=s["size"], resample=s["resample"])
        if s["do_center_crop"]:
            stack = processor.center_crop(stack, s["crop_size"])
        stack = processor.rescale_and_normalize(
            stack, s["do_rescale"], s["rescale_factor"], s["do_normalize"], s["image_mean"], s["image_std"]
        )
        return stack.contiguous()


def batch_preprocessor(image_processor: Any) -> BatchPreprocessor:
    """A batched preprocessor when the processor's steps are known and a probe batch comes out bit-identical to
    the processor's own output; otherwise one that calls the processor (logged, with the reason)."""
    problems = _batching_problems(image_processor)
    if not problems:
        candidate = BatchPreprocessor(image_processor, _resolved_settings(image_processor))
        difference = batched_difference(candidate, probe_images())
        if difference <= BATCHED_PIXEL_TOLERANCE:
            return candidate
        problems = [f"the batched output differs from the processor's by {difference:.3g} on probe images"]
    logger.info("preprocessing image by image with %s: %s", type(image_processor).__name__, "; ".join(problems))
    return BatchPreprocessor(image_processor)


def _batching_problems(image_processor: Any) -> list[str]:
    if not isinstance(image_processor, TorchvisionBackend):
        return [f"{type(image_processor).__name__} is not a torchvision-backend image processor"]
    problems = [
        f"{type(image_processor).__name__}.{name} has its own steps"
        for name in _PROCESSOR_STEPS
        if getattr(type(image_processor), name) is not getattr(TorchvisionBackend, name)
    ]
    if getattr(image_processor, "do_pad", None):
        problems.append("it pads images")
    return problems


def _resolved_settings(image_processor: Any) -> dict[str, Any]:
    """The settings as the processor's ``preprocess`` resolves and validates them before ``_preprocess``."""
    kwargs = {name: getattr(image_processor, name, None) for name in image_processor._valid_kwargs_names}
    kwargs = image_processor._standardize_kwargs(**kwargs)
    image_processor._validate_preprocess_kwargs(**kwargs)
    return {name: kwargs.get(name) for name in _PIXEL_SETTINGS}


def probe_images(seed: int = 0) -> list[Image.Image]:
    """Uniform-noise RGB images of :data:`_PROBE_SIZES` plus a grayscale and an RGBA one (noise is the hardest
    input for a resize: every output pixel depends on every tap)."""
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for w, h in _PROBE_SIZES]
    images.append(Image.fromarray(rng.integers(0, 256, (40, 64), dtype=np.uint8), "L"))
    images.append(Image.fromarray(rng.integers(0, 256, (64, 40, 4), dtype=np.uint8), "RGBA"))
    return images


def batched_difference(pixels: BatchPreprocessor, images: list[Image.Image]) -> float:
    """Largest absolute difference of normalised pixels between ``pixels`` and its image processor called on
    ``images`` (inf when the shapes differ or the batched path fails)."""
    want = preprocess_images(pixels.image_processor, images)
    try:
        got = pixels(images)
    except (RuntimeError, ValueError, TypeError) as err:
        logger.warning("batched preprocessing failed on probe images: %s", err)
        return float("inf")
    if got.shape != want.shape or got.dtype != want.dtype:
        return float("inf")
    return float((got.double() - want.double()).abs().max()) if got.numel() else 0.0


# -- encoders ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class EncodedBatch:
    """Frozen-encoder outputs of one batch, on the encoders' device."""

    vision: torch.Tensor
    """(B, Dv) ``pooler_output``."""
    sd_text: torch.Tensor
    """(B, T, Dt) SD text-encoder ``last_hidden_state`` (T = 77)."""


@dataclass(kw_only=True)
class FrozenEncoders:
    """The two frozen encoders GILL's targets come from, on one device, plus what identifies them."""

    vision: Any
    """``CLIPVisionModel`` in eval mode."""
    image_processor: Any
    """The vision model's own ``CLIPImageProcessor``."""
    sd_tokenizer: Any
    """SD's ``CLIPTokenizer``."""
    sd_text_encoder: Any
    """SD's ``CLIPTextModel`` in eval mode."""
    identity: dict[str, Any]
    """Ids, revisions, file hashes and processor settings (JSON-ready); the encoder part of the fingerprint."""
    device: torch.device
    """Where both models live."""
    compute_dtype: torch.dtype
    """Dtype of the forward (float32 on CPU)."""
    pixels: BatchPreprocessor
    """``image_processor`` applied to a batch at once where that is bit-identical (see :class:`BatchPreprocessor`)."""
    pipeline_balances: dict[tuple[int, int, bool], PipelineBalance] = dataclasses.field(
        default_factory=dict, repr=False
    )
    """The :class:`PipelineBalance` of these encoders per (threads, preparers, worker processes): its trial goes on
    over as many shards as it needs, and later shards run on the setting it kept."""

    @property
    def vision_dim(self) -> int:
        """Dv: width of ``pooler_output``."""
        return int(self.vision.config.hidden_size)

    @property
    def text_shape(self) -> tuple[int, int]:
        """(T, Dt) of one caption's SD target."""
        return int(self.sd_tokenizer.model_max_length), int(self.sd_text_encoder.config.hidden_size)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """Resize, crop and normalise as the vision model's own processor does -> (B, 3, H, W) float32."""
        return self.pixels(images)

    def preprocessor(self, options: PrecomputeOptions) -> BatchPreprocessor:
        """The batched preprocessor, or the processor image by image when ``options.batched_preprocess`` is off."""
        return self.pixels if options.batched_preprocess else BatchPreprocessor(self.image_processor)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """SD 1.5 tokenisation: pad to ``model_max_length`` (77), truncate right -> (B, 77) ids."""
        return sd_input_ids(self.sd_tokenizer, captions)

    def encode(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> EncodedBatch:
        """Both forwards, without gradients; autocast in ``compute_dtype`` off CPU."""
        autocast = self.device.type != "cpu" and self.compute_dtype != torch.float32
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=autocast):
            pixels = pixel_values.to(self.device, non_blocking=True)  # (B, 3, H, W)
            ids = input_ids.to(self.device, non_blocking=True)  # (B, 77); no attention mask, as SD 1.5
            vision = self.vision(pixel_values=pixels).pooler_output  # (B, Dv)
            sd_text = self.sd_text_encoder(input_ids=ids).last_hidden_state  # (B, 77, Dt)
        return EncodedBatch(vision=vision, sd_text=sd_text)


def load_encoders(config: GILLConfig, options: PrecomputeOptions = PrecomputeOptions()) -> FrozenEncoders:
    """Load the frozen CLIP vision encoder and SD text encoder of ``config`` onto ``options.device``."""

    resolve_sources(config, ("vision", "sd"))  # one error naming every missing encoder, before loading any
    vision = load_backbones(config, roles=("vision",))
    sd = load_sd_text_encoder(config)
    device = torch.device(options.device)
    vision_dir = locate(config.backbones.vision)[0] or Path(vision.vision.name_or_path)
    identity = {
        "vision": _model_identity(
            config.backbones.vision.id, config.backbones.vision.revision, vision_dir, [Path("config.json")], [Path(".")]
        ),
        "image_processor": _jsonable(vision.image_processor.to_dict()),
        "sd_text": _model_identity(
            config.backbones.sd.id,
            config.backbones.sd.revision,
            Path(sd.source),
            [Path("text_encoder/config.json"), *_tokenizer_files(Path(sd.source))],
            [Path("text_encoder")],
        ),
        "tokenizer_max_length": int(sd.tokenizer.model_max_length),
        "outputs": {"vision": "pooler_output", "sd_text": "last_hidden_state", "sd_attention_mask": False},
    }
    return FrozenEncoders(
        vision=vision.vision.to(device),
        image_processor=vision.image_processor,
        sd_tokenizer=sd.tokenizer,
        sd_text_encoder=sd.text_encoder.to(device),
        identity=identity,
        device=device,
        compute_dtype=options.compute_dtype,
        pixels=batch_preprocessor(vision.image_processor),
    )


def _tokenizer_files(sd_dir: Path) -> list[Path]:
    return sorted(p.relative_to(sd_dir) for p in (sd_dir / "tokenizer").iterdir() if p.is_file())


def _model_identity(model_id: str, revision: str, folder: Path, files: list[Path], weight_dirs: list[Path]) -> dict:
    """Id, revision, resolved Hub commit (when loaded from the HF cache) and sha256 of configs and weights."""
    weights = [w.relative_to(folder) for d in weight_dirs for w in _weight_files(folder / d)]
    return {
        "id": model_id,
        "revision": revision,
        "local": looks_like_path(model_id) or tiny_component(model_id) is not None,  # identified by its files
        "resolved_commit": folder.name if folder.parent.name == "snapshots" else None,
        "files_sha256": {p.as_posix(): _content_sha256(folder / p) for p in [*files, *weights]},
    }


def _recorded_identity(identity: dict[str, Any], portable_root: Path | None) -> dict[str, Any]:
    """The identity as a manifest records it: a local model folder inside ``portable_root`` is named relative to
    it (posix), so that folder can be moved as a whole; the fingerprint never holds such a path."""
    out = dict(identity)
    if portable_root is None:
        return out
    root = Path(portable_root).resolve()
    for role in ("vision", "sd_text"):
        if out[role].get("local") and looks_like_path(out[role]["id"]):
            folder = Path(out[role]["id"]).expanduser().resolve()
            if folder.is_relative_to(root):
                out[role] = {**out[role], "id": folder.relative_to(root).as_posix()}
    return out


def _fingerprinted(identity: dict[str, Any]) -> dict[str, Any]:
    """The identity without where a local model folder happens to live (its file hashes identify it)."""
    out = dict(identity)
    for role in ("vision", "sd_text"):
        if out[role].get("local"):
            out[role] = {k: v for k, v in out[role].items() if k not in ("id", "revision")}
    return out


def _weight_files(folder: Path) -> list[Path]:
    """The weights ``from_pretrained`` reads: safetensors when present, else ``.bin``."""
    safetensors = sorted(folder.glob("*.safetensors"))
    return safetensors or sorted(folder.glob("*.bin"))


def _content_sha256(path: Path) -> str:
    """sha256 of a file; free for Hub-cache LFS files, whose blob is named by it; cached per (size, mtime)."""
    if path.is_symlink() and _SHA256_NAME.fullmatch(path.resolve().name):
        return path.resolve().name
    stat = path.stat()
    return _cached_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hashing multi-GB local weights once per process, even when every shard task loads the encoders."""
    return sha256_file(path)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def canonical_sha256(obj: Any) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace) of ``obj``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint_inputs(encoders: FrozenEncoders, options: PrecomputeOptions, source_sha256: str | None) -> dict:
    """Every input that determines a feature shard's arrays (``source_sha256=None``: the encoder part only)."""
    inputs = {
        "format_version": FORMAT_VERSION,
        "encoders": _fingerprinted(encoders.identity),
        "compute_dtype": str(encoders.compute_dtype).removeprefix("torch."),
        "storage_dtype": options.storage_dtype.name,
    }
    return inputs if source_sha256 is None else {**inputs, "source_sha256": source_sha256}


# -- manifests -------------------------------------------------------------------------------------------


def read_feature_manifest(folder: Path) -> dict[str, Any] | None:
    """The ``manifest.json`` of a feature shard, or None when absent or unreadable."""
    try:
        return json.loads((Path(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# -- one shard --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class PreparedBatch:
    """Encoder inputs of one batch, ready for the forward."""

    keys: list[str]
    """Sample keys, in row order."""
    captions: list[str]
    """Captions, in row order."""
    pixel_values: torch.Tensor
    """(B, 3, H, W) preprocessed images."""
    input_ids: torch.Tensor
    """(B, 77) SD token ids."""

    def __getstate__(self) -> dict[str, Any]:
        """Tensors travel from a worker process as numpy arrays: plain bytes in the pickle, where torch's own
        reduction would move each tensor through shared memory and a file-descriptor hand-over that the receiving
        process runs in Python, taking the GIL from the forward."""
        state = dict(self.__dict__)
        state["pixel_values"], state["input_ids"] = self.pixel_values.numpy(), self.input_ids.numpy()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["pixel_values"] = torch.from_numpy(state["pixel_values"])
        state["input_ids"] = torch.from_numpy(state["input_ids"])
        self.__dict__.update(state)


def decode_image(sample: ShardSample, shard: str) -> Image.Image:
    """Decode a sample's JPEG to RGB; a broken image is an :class:`InputError` naming shard and key."""
    try:
        with Image.open(io.BytesIO(sample.jpeg)) as image:
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB")  # convert would copy an RGB image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise InputError(f"image shard {shard}: cannot decode the image of sample {sample.key!r}", [str(err)]) from err


def preprocess_images(image_processor: Any, images: list[Image.Image]) -> torch.Tensor:
    """Resize, crop and normalise with the vision model's own processor -> (B, 3, H, W) float32."""
    return image_processor(images=images, return_tensors="pt")["pixel_values"]


_TOKENIZER_LOCK = threading.Lock()
"""One caption batch at a time through a tokenizer: a Rust tokenizer shared by threads can fail with "Already
borrowed" when two calls overlap (huggingface/tokenizers#537); tokenising is a small part of a batch's cost."""


def sd_input_ids(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """SD 1.5 tokenisation: pad to ``model_max_length`` (77), truncate right, no mask -> (B, 77) ids.

    The ids come back as lists and become one tensor here: the tokenizer's own ``return_tensors="pt"`` checks and
    flattens the nested lists in Python first, which took half the tokenising time (same ids, same int64 dtype)."""
    max_length = tokenizer.model_max_length
    with _TOKENIZER_LOCK:
        enc = tokenizer(captions, padding="max_length", max_length=max_length, truncation=True)
    return torch.tensor(enc["input_ids"], dtype=torch.long)


class ShardBatches:
    """Batch ``i`` of a shard's keys, read, decoded, preprocessed and tokenised (picklable: runs in workers)."""

    def __init__(
        self, index: ShardIndex, keys: list[str], pixels: BatchPreprocessor, sd_tokenizer: Any, batch_size: int
    ) -> None:
        self.index, self.keys, self.batch_size = index, keys, batch_size
        self.pixels, self.sd_tokenizer = pixels, sd_tokenizer

    def __len__(self) -> int:
        return (len(self.keys) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int) -> PreparedBatch:
        samples = read_samples(self.index, self.keys[i * self.batch_size : (i + 1) * self.batch_size])
        images = [decode_image(s, self.index.tar.name) for s in samples]
        captions = [s.caption for s in samples]
        return PreparedBatch(
            keys=[s.key for s in samples],
            captions=captions,
            pixel_values=self.pixels(images),  # (B, 3, H, W)
            input_ids=sd_input_ids(self.sd_tokenizer, captions),  # (B, 77)
        )


class BatchFeed:
    """A shard's batches in order, each prepared either inline (by the caller, between two forwards) or ahead of
    time in the background (threads or worker processes); which one may change from one batch to the next.

    ``get(i, background=True)`` keeps batches ``i`` .. ``i + ahead`` submitted, so background preparers always
    have work; ``get(i, background=False)`` prepares batch ``i`` itself unless it is already under way. An error
    in preparing a batch is raised when that batch is asked for; closing cancels what has not started.
    """

    def __init__(
        self,
        make: Callable[[int], PreparedBatch],
        count: int,
        submit: Callable[[int], Future[PreparedBatch]] | None = None,
        ahead: int = 0,
        close: Callable[[], None] = lambda: None,
        broken: Callable[[], None] = lambda: None,
    ) -> None:
        self.make, self.count, self.submit, self.ahead = make, count, submit, ahead
        self._close, self._broken = close, broken
        self.pending: dict[int, Future[PreparedBatch]] = {}

    def __len__(self) -> int:
        return self.count

    def get(self, i: int, background: bool = True) -> PreparedBatch:
        """Batch ``i``, from the background when it was submitted there, else prepared here."""
        try:
            if background and self.submit is not None:
                for j in range(i, min(self.count, i + 1 + self.ahead)):
                    if j not in self.pending:
                        self.pending[j] = self.submit(j)
            future = self.pending.pop(i, None)
            return future.result() if future is not None else self.make(i)
        except BrokenProcessPool:
            self._broken()  # a worker died: the next shard starts new ones
            raise

    def __iter__(self) -> Iterator[PreparedBatch]:
        return (self.get(i) for i in range(self.count))

    def close(self) -> None:
        """Cancel the batches not started and release the preparing threads (worker processes are kept)."""
        for future in self.pending.values():
            future.cancel()
        self.pending.clear()
        self._close()

    def __enter__(self) -> BatchFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prepared_batches(
    index: ShardIndex, keys: list[str], encoders: FrozenEncoders, options: PrecomputeOptions
) -> BatchFeed:
    """Encoder inputs of ``keys`` in order (a :class:`BatchFeed`), prepared ahead of the forward by ``threads``
    threads, ``max(prefetch, threads)`` batches ahead, or by the encoders' ``num_workers`` processes, ``prefetch``
    per worker ahead; ``prefetch`` 0: inline only. JPEG decoding, torch's resize and the Rust tokenizer release the
    GIL, so threads overlap with the forward; processes also leave it the GIL."""
    batches = ShardBatches(index, keys, encoders.preprocessor(options), encoders.sd_tokenizer, options.batch_size)
    if options.prefetch == 0:
        return BatchFeed(batches.__getitem__, len(batches))
    if options.num_workers == 0:
        threads = ThreadPoolExecutor(max_workers=options.threads, thread_name_prefix="precompute-prepare")
        return BatchFeed(
            batches.__getitem__,
            len(batches),
            submit=lambda i: threads.submit(batches.__getitem__, i),
            ahead=max(options.prefetch, options.threads),
            close=lambda: threads.shutdown(wait=False, cancel_futures=True),
        )
    pool, size = worker_pool(encoders, options), batches.batch_size

    def submit(i: int) -> Future[PreparedBatch]:
        chunk = keys[i * size : (i + 1) * size]
        members = ShardIndex(tar=index.tar, members={k: index.members[k] for k in chunk})  # small to send
        return pool.submit(_prepare_in_worker, members, chunk)

    return BatchFeed(
        batches.__getitem__,
        len(batches),
        submit=submit,
        ahead=max(options.prefetch, 1) * options.num_workers,
        broken=lambda: _close_pool(_pool_key(encoders, options)),
    )


# -- worker processes -------------------------------------------------------------------------------------

_WORKER_STATE: dict[str, Any] = {}
"""In a worker process: the preprocessor and tokenizer its batches use (set once, when it starts)."""


def _start_worker(pixels: BatchPreprocessor, sd_tokenizer: Any, started: Any) -> None:
    torch.set_num_threads(1)  # the worker is one of the preparers: one core's worth
    _WORKER_STATE.update(pixels=pixels, sd_tokenizer=sd_tokenizer)
    started.wait(WORKER_START_TIMEOUT_S)  # every worker up before any takes a batch


def _prepare_in_worker(index: ShardIndex, keys: list[str]) -> PreparedBatch:
    """One batch, in a worker process (``index`` holds only this batch's members)."""
    return ShardBatches(index, keys, _WORKER_STATE["pixels"], _WORKER_STATE["sd_tokenizer"], len(keys))[0]


WORKER_START_TIMEOUT_S = 300.0
"""How long a worker process waits for the others to start."""
_POOLS: dict[tuple[int, int, bool], ProcessPoolExecutor] = {}
"""(id of the encoders, workers, batched) -> their worker pool, kept while the encoders live."""
_POOLS_LOCK = threading.Lock()


def _pool_key(encoders: FrozenEncoders, options: PrecomputeOptions) -> tuple[int, int, bool]:
    return id(encoders), options.num_workers, options.batched_preprocess


def worker_pool(encoders: FrozenEncoders, options: PrecomputeOptions) -> ProcessPoolExecutor:
    """The ``options.num_workers`` preparing processes of ``encoders``: started with the first shard that asks
    for them and kept for every later shard (starting a process and importing torch there takes seconds, as
    long as preparing thousands of tiny-preset samples), shut down when the encoders are garbage collected."""
    key = _pool_key(encoders, options)
    with _POOLS_LOCK:
        if (pool := _POOLS.get(key)) is None:
            context = worker_context(WORKER_CONTEXT, preload=(__name__,))
            pool = ProcessPoolExecutor(
                max_workers=options.num_workers,
                mp_context=context,
                initializer=_start_worker,
                initargs=(encoders.preprocessor(options), encoders.sd_tokenizer, context.Barrier(options.num_workers)),
            )
            _POOLS[key] = pool
            weakref.finalize(encoders, _close_pool, key)
            # start every process now (one task each makes the pool spawn them all; none runs a task before all
            # have started): a process importing torch beside the first batches would slow them down and mislead
            # the balance's trial of the background setting
            for started in [pool.submit(os.getpid) for _ in range(options.num_workers)]:
                started.result()
        return pool


def _close_pool(key: tuple[int, int, bool]) -> None:
    with _POOLS_LOCK:
        pool = _POOLS.pop(key, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


# -- balancing the two parts on a CPU -------------------------------------------------------------------

BALANCE_MARGIN = 0.05
"""The first setting (all threads, inline) is kept only when it is at least this much faster than the second:
at equal speed, fewer forward threads leave a core to whatever else runs on the machine."""


@dataclass(frozen=True)
class PipelineSetting:
    """How a shard's two parts share a CPU."""

    threads: int
    """torch's intra-op threads for the forward."""
    background: bool
    """Batches prepared ahead in the background (True) or inline between forwards (False)."""


@dataclass(kw_only=True)
class PipelineBalance:
    """Automatic sharing of a CPU between preparing batches and the forward (``forward_threads=0``): two settings
    are tried one after the other, each for at least ``trial`` batches and ``trial_s`` seconds, after the first
    batch (which carries the start-up; so does the first in the background, which waits for the pipeline to fill
    and worker processes to start), and the one whose pipeline took less time per sample (waiting for the
    batch, forward, storing) is kept.

    * **inline**: the forward on all of torch's threads, each batch prepared between two forwards. Right for a
      large encoder on few cores: preparing is a few percent of the work, and a preparer running beside the
      forward would stall its parallel ops (one preempted thread holds up all of them) more than it saves.
    * **background**: the forward on one thread fewer per preparer, batches prepared ahead by the preparers on
      the cores left. Right for a small encoder (decoding a JPEG costs more than encoding it), and for many cores.

    Which holds depends on the models, the cores and what else runs on the machine, so it is measured on the first
    batches of a set of loaded encoders, over as many shards as the trial needs (``FrozenEncoders.pipeline_balances``;
    the first batch of every shard is not counted), and later shards run on the kept setting: the trial's slower
    batches are paid once per process, not per shard. The minimum time keeps a trial of
    fast batches (a few milliseconds each) from being decided by one hiccup of a shared machine.
    """

    threads: int
    """torch's intra-op threads when the shard started."""
    preparers: int
    """Batches prepared in parallel in the background: threads or worker processes."""
    processes: bool = False
    """The preparers are worker processes."""
    trial: int = 2
    """Batches measured per setting, at least."""
    trial_s: float = 0.3
    """Seconds measured per setting, at least."""
    totals: dict[PipelineSetting, tuple[float, int, int]] = dataclasses.field(default_factory=dict)
    """Setting -> (seconds, samples, batches) of its trial."""
    skip_next: bool = True
    """The next batch is not counted: the first of a shard, and the first after a switch to the background."""
    chosen: PipelineSetting | None = None
    """The setting kept, once decided."""

    @property
    def key(self) -> tuple[int, int, bool]:
        """What the choice depends on besides the encoders: the key of ``FrozenEncoders.pipeline_balances``."""
        return self.threads, self.preparers, self.processes

    @property
    def inline(self) -> PipelineSetting:
        return PipelineSetting(threads=self.threads, background=False)

    @property
    def background(self) -> PipelineSetting:
        return PipelineSetting(threads=max(1, self.threads - self.preparers), background=True)

    @property
    def seconds_per_sample(self) -> dict[PipelineSetting, float]:
        """Measured time per sample of each setting tried so far."""
        return {setting: seconds / samples for setting, (seconds, samples, _) in self.totals.items()}

    @property
    def current(self) -> PipelineSetting:
        """The setting to run on now: the kept one, or the one on trial."""
        if self.chosen is not None:
            return self.chosen
        return self.background if self.background in self.totals else self.inline

    def start_shard(self) -> None:
        """A shard begins: its first batch carries the shard's start-up and is not counted."""
        self.skip_next = True

    def observe(self, seconds: float, samples: int) -> PipelineSetting | None:
        """Record the batch just done; return the setting for the next batches when it changes, else None."""
        if self.chosen is not None:
            return None
        current = self.current
        if self.skip_next:  # a shard's first batch, or the first in the background (waits for the pipeline to fill)
            self.skip_next = False
            return None
        spent, counted, batches = self.totals.get(current, (0.0, 0, 0))
        self.totals[current] = spent + seconds, counted + samples, batches + 1
        if batches + 1 < self.trial or spent + seconds < self.trial_s:
            return None
        if current == self.inline:
            self.totals[self.background] = (0.0, 0, 0)
            self.skip_next = True
            return self.background  # inline measured: now in the background
        per_sample = self.seconds_per_sample
        inline_faster = per_sample[self.inline] < (1 - BALANCE_MARGIN) * per_sample[self.background]
        self.chosen = self.inline if inline_faster else self.background
        return self.inline if inline_faster else None


def pipeline_balance(options: PrecomputeOptions, device: torch.device) -> PipelineBalance | None:
    """The automatic balance of a shard's pipeline, or None where it does not apply: forward threads set
    explicitly, no overlap asked for, or a device whose forward does not run on torch's CPU threads (there the
    batches are always prepared in the background)."""
    preparers = options.num_workers or options.threads
    if options.forward_threads > 0 or options.prefetch == 0 or device.type != "cpu":
        return None
    return PipelineBalance(threads=torch.get_num_threads(), preparers=preparers, processes=options.num_workers > 0)


_THREADS_LOCK = threading.Lock()
_threads_state = {"users": 0, "before": 0}
"""How many shard forwards run under :func:`torch_threads` now, and torch's setting before the first of them."""


def set_torch_threads(count: int) -> None:
    """Change torch's intra-op threads inside a :func:`torch_threads` block (restored when the block ends)."""
    with _THREADS_LOCK:
        torch.set_num_threads(count)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` while the block runs (0: left as they are).

    The setting is process-wide: shards computed at the same time (a flow's tasks in threads) share it, and the
    setting from before the first of them is restored when the last one ends.
    """
    if count <= 0:
        yield
        return
    with _THREADS_LOCK:
        if _threads_state["users"] == 0:
            _threads_state["before"] = torch.get_num_threads()
        _threads_state["users"] += 1
        torch.set_num_threads(count)
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads_state["users"] -= 1
            if _threads_state["users"] == 0:
                torch.set_num_threads(_threads_state["before"])


def _open_array(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A writable ``.npy`` on disk (memory-mapped, so a large shard never sits in RAM)."""
    if shape[0] == 0:
        np.save(path, np.zeros(shape, dtype))
        return np.zeros(shape, dtype)
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def _to_storage(values: torch.Tensor, dtype: np.dtype, shard: str, what: str) -> np.ndarray:
    stored = values.float().cpu().to(TORCH_STORAGE[dtype])  # via float32, like numpy's astype: same bits
    if not bool(torch.isfinite(stored).all()):
        raise InputError(
            f"feature shard {shard}: {what} has non-finite values in storage dtype {dtype.name}",
            ["use dtype='fp32' (values overflow float16) or check the encoder weights"],
        )
    return stored.numpy()


@dataclass(frozen=True, kw_only=True)
class ComputedArrays:
    """What :func:`compute_arrays` reports besides the files it wrote."""

    captions: list[str]
    """Captions in row order."""
    forward_threads: int
    """torch's intra-op threads the forward ran on at the end of the shard (after any :class:`PipelineBalance`)."""


def compute_arrays(
    folder: Path,
    index: ShardIndex,
    keys: list[str],
    encoders: FrozenEncoders,
    options: PrecomputeOptions,
    on_batch: Callable[[int], None] | None = None,
) -> ComputedArrays:
    """Write ``vision.npy`` (N, Dv) and ``sd_text.npy`` (N, 77, Dt) of ``keys`` into ``folder``."""
    n, dtype, shard = len(keys), options.storage_dtype, index.tar.stem
    vision = _open_array(folder / VISION_FILE, (n, encoders.vision_dim), dtype)  # (N, Dv)
    sd_text = _open_array(folder / SD_TEXT_FILE, (n, *encoders.text_shape), dtype)  # (N, 77, Dt)
    row, captions = 0, []
    setting = PipelineSetting(threads=options.forward_threads, background=True)
    if (balance := pipeline_balance(options, encoders.device)) is not None:
        balance = encoders.pipeline_balances.setdefault(balance.key, balance)  # a trial goes on over shards
        balance.start_shard()
        setting = balance.current
    deciding = balance is not None and balance.chosen is None
    with prepared_batches(index, keys, encoders, options) as feed, torch_threads(setting.threads):
        last = time.perf_counter()
        for i in range(len(feed)):
            batch = feed.get(i, background=setting.background)
            out = encoders.encode(batch.pixel_values, batch.input_ids)
            size = len(batch.keys)
            vision[row : row + size] = _to_storage(out.vision, dtype, shard, "vision")  # (b, Dv)
            sd_text[row : row + size] = _to_storage(out.sd_text, dtype, shard, "sd_text")  # (b, 77, Dt)
            row += size
            captions += batch.captions
            if on_batch is not None:
                on_batch(size)
            now = time.perf_counter()
            if balance is not None and (change := balance.observe(now - last, size)) is not None:
                setting = change
                set_torch_threads(setting.threads)
            last = now
        forward_threads = torch.get_num_threads()
    if deciding and balance.chosen is not None:
        logger.info("shard %s: %s (measured s/sample: %s)", shard, balance.chosen, balance.seconds_per_sample)
    for array in (vision, sd_text):
        if isinstance(array, np.memmap):
            array.flush()
    del vision, sd_text
    return ComputedArrays(captions=captions, forward_threads=forward_threads)


def _manifest(
    split: str,
    portable_root: Path | None,
    shard_tar: Path,
    keys: list[str],
    encoders: FrozenEncoders,
    options: PrecomputeOptions,
    source_sha256: str,
    duration_s: float,
) -> dict[str, Any]:
    inputs = fingerprint_inputs(encoders, options, source_sha256)
    n, (t, dt) = len(keys), encoders.text_shape
    return {
        "format_version": FORMAT_VERSION,
        "split": split,
        "shard": shard_tar.stem,
        "count": n,
        "fingerprint": canonical_sha256(inputs),
        "encoder_fingerprint": canonical_sha256(fingerprint_inputs(encoders, options, None)),
        "source": {"tar": shard_tar.name, "sha256": source_sha256, "size": shard_tar.stat().st_size},
        "encoders": _recorded_identity(encoders.identity, portable_root),
        "dtype": {"option": options.dtype, "compute": inputs["compute_dtype"], "storage": inputs["storage_dtype"]},
        "arrays": {
            "vision": {"file": VISION_FILE, "shape": [n, encoders.vision_dim], "dtype": inputs["storage_dtype"]},
            "sd_text": {"file": SD_TEXT_FILE, "shape": [n, t, dt], "dtype": inputs["storage_dtype"]},
        },
        "keys_file": KEYS_FILE,
        "device": str(encoders.device),
        "duration_s": round(duration_s, 4),
        "samples_per_s": round(n / duration_s, 2) if duration_s > 0 else 0.0,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """``manifest.json["files"]``: size, sha256 and mtime of each output file of a written shard folder."""
    records = {}
    for name in OUTPUT_FILES:
        stat = (folder / name).stat()
        records[name] = {"size": stat.st_size, "sha256": sha256_file(folder / name), "mtime_ns": stat.st_mtime_ns}
    return records


def output_problems(folder: Path, manifest: dict[str, Any], *, checksums: bool | None = None) -> dict[str, str]:
    """What is wrong with a feature shard's files against ``manifest["files"]``: file name -> problem (empty: intact).

    Args:
        checksums: True: compare every file's sha256; False: sizes only; None (default): sizes, and the sha256
            of a file whose mtime differs from the recorded one.
    """
    records = manifest.get("files")
    if not isinstance(records, dict) or set(records) != set(OUTPUT_FILES):
        return {MANIFEST_FILE: f"{MANIFEST_FILE} records no sizes and checksums of its files (an older gill's)"}
    problems = {}
    for name, record in sorted(records.items()):
        path = folder / name
        try:
            stat = path.stat()
        except OSError:
            problems[name] = f"{name} is missing ({path})"
            continue
        if stat.st_size != record.get("size"):
            problems[name] = (
                f"{name} is {stat.st_size} bytes, {MANIFEST_FILE} records {record.get('size')} "
                f"(truncated or damaged: {path})"
            )
        elif (checksums or (checksums is None and stat.st_mtime_ns != record.get("mtime_ns"))) and (
            sha256_file(path) != record.get("sha256")
        ):
            problems[name] = f"{name} does not match its sha256 in {MANIFEST_FILE} (damaged: {path})"
    return problems


def _up_to_date(folder: Path, fingerprint: str) -> dict[str, Any] | None:
    """The manifest of an intact feature shard with this fingerprint, else None (a damaged one is logged)."""
    manifest = read_feature_manifest(folder)
    if manifest is None or manifest.get("fingerprint") != fingerprint:
        return None
    if problems := output_problems(folder, manifest):
        logger.warning("feature shard %s is damaged, recomputing it: %s", folder, "; ".join(problems.values()))
        return None
    return manifest


def _previous_shard(
    out: Path, encoders: FrozenEncoders, options: PrecomputeOptions, source_sha256: Future[str]
) -> dict[str, Any] | None:
    """The manifest of an intact feature shard at ``out`` with this fingerprint, else None; the source tar's hash
    is awaited only when there is a manifest to compare with (otherwise it is computed beside the forward)."""
    if read_feature_manifest(out) is None:
        return None
    return _up_to_date(out, canonical_sha256(fingerprint_inputs(encoders, options, source_sha256.result())))


def precompute_shard(
    shard_tar: Path,
    split: SplitFolders,
    encoders: FrozenEncoders,
    options: PrecomputeOptions = PrecomputeOptions(),
    *,
    portable_root: Path | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ShardResult:
    """Write (or keep, when its fingerprint is unchanged and its files are intact) the feature shard of one
    complete image shard into ``split.features/<shard>``, after removing temporary folders a killed run left of it.

    One unit of work: a flow can fan out one task per shard. ``on_batch(n)`` is called after each batch. A local
    model folder inside ``portable_root`` is recorded relative to it in the manifest.
    """
    shard_tar, shard, name = Path(shard_tar), Path(shard_tar).stem, split.name
    out = split.features / shard
    remove_stale_temp_dirs(out.parent, target=shard)  # what a killed run left of this shard
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="precompute-hash") as hashing:
        source = hashing.submit(sha256_file, shard_tar)  # hashlib releases the GIL: overlaps with the forward
        if (previous := _previous_shard(out, encoders, options, source)) is not None:
            logger.info("feature shard %s/%s is up to date (%d rows), skipping", name, shard, previous["count"])
            if on_batch is not None:
                on_batch(previous["count"])
            return ShardResult.from_manifest(previous, skipped=True)
        index = index_shard(shard_tar)
        keys = index.image_keys
        start = time.perf_counter()
        with atomic_directory(out) as tmp:
            computed = compute_arrays(tmp, index, keys, encoders, options, on_batch)
            atomic_write_json(tmp / KEYS_FILE, {"keys": keys, "captions": computed.captions}, indent=0)
            source_sha256 = source.result()
            duration = time.perf_counter() - start
            manifest = _manifest(name, portable_root, shard_tar, keys, encoders, options, source_sha256, duration)
            manifest["forward_threads"] = computed.forward_threads  # how it ran, like device and duration_s
            manifest["files"] = file_records(tmp)
            atomic_write_json(tmp / MANIFEST_FILE, manifest)
    result = ShardResult.from_manifest(manifest, skipped=False)
    logger.info(
        "precomputed %s/%s: %d rows in %.2f s (%.1f samples/s)", name, shard, len(keys), duration, result.samples_per_s
    )
    return result


# -- shard processes (CPU) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardTask:
    """One shard for a shard process."""

    shard_tar: Path
    split: SplitFolders
    portable_root: Path | None = None


def shard_process_options(options: PrecomputeOptions) -> PrecomputeOptions:
    """What each of ``options.processes`` shard processes runs with: its share of the cores for the forward,
    batches prepared inline, no processes of its own."""
    threads = max(1, cores() // options.processes)
    return dataclasses.replace(options, processes=1, num_workers=0, prefetch=0, forward_threads=threads)


def _load_in_process(config: GILLConfig, options: PrecomputeOptions) -> tuple[FrozenEncoders, PrecomputeOptions]:
    return load_encoders(config, options), options


def _shard_in_process(
    state: tuple[FrozenEncoders, PrecomputeOptions], task: ShardTask, report: Callable[[int], None]
) -> ShardResult:
    encoders, options = state
    return precompute_shard(
        task.shard_tar, task.split, encoders, options, portable_root=task.portable_root, on_batch=report
    )


def shard_processes(
    config: GILLConfig, options: PrecomputeOptions
) -> ProcessFarm[tuple[FrozenEncoders, PrecomputeOptions], ShardTask, ShardResult]:
    """``options.processes`` processes that each load the encoders once and precompute whole shards
    (:func:`shard_process_options`); enter it to start them, then ``map`` :class:`ShardTask` items."""
    child = shard_process_options(options)
    return ProcessFarm(
        options.processes,
        _load_in_process,
        (config, child),
        _shard_in_process,
        threads=child.forward_threads,
        pin=options.pin_cores,
        context=WORKER_CONTEXT,
    )


# -- one split --------------------------------------------------------------------------------------------


def _expected_count(shard_tar: Path) -> int:
    return (read_stats(stats_path(shard_tar)) or {}).get("successes", 0)


def _warn_orphans(folder: Path, shards: Iterable[Path]) -> None:
    names = {s.stem for s in shards}
    for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
        if sub.is_dir() and not sub.name.startswith(".") and sub.name not in names:
            logger.warning("feature shard %s has no complete image shard; the reader will refuse it", sub)


def _require_image_shards(split: SplitFolders) -> list[Path]:
    shards = complete_image_shards(split.images)
    if not shards:
        raise InputError(
            f"no complete image shards for split {split.name!r}",
            [f"{split.images} holds no <shard>.tar with its _stats.json"],
            hint="download the images first (gill data download)",
        )
    return shards


def precompute_split(
    split: SplitFolders,
    config: GILLConfig,
    options: PrecomputeOptions = PrecomputeOptions(),
    *,
    portable_root: Path | None = None,
    progress: bool = True,
) -> list[ShardResult]:
    """Precompute every complete image shard in ``split.images`` into ``split.features`` (skipping intact
    up-to-date ones), with one progress bar.

    Temporary shard folders left in the feature folder by a killed run are removed first. A local model folder
    inside ``portable_root`` is recorded relative to it in the manifests (the application passes its work folder).

    Raises:
        InputError: when the split has no complete image shard, or an image does not decode.
    """

    shards = _require_image_shards(split)
    remove_stale_temp_dirs(split.features)  # temporary shard folders of a killed run
    _warn_orphans(split.features, shards)
    total = sum(_expected_count(s) for s in shards)
    desc = f"precompute {split.name}"
    if options.processes > 1:
        with shard_processes(config, options) as farm:
            logger.info("%d shard processes ready in %.1f s", options.processes, farm.startup_s)
            start = time.perf_counter()
            with tqdm(total=total, unit="img", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
                results = farm.map([ShardTask(s, split, portable_root) for s in shards], on_progress=bar.update)
    else:
        encoders = load_encoders(config, options)
        start, results = time.perf_counter(), []
        with tqdm(total=total, unit="img", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
            for shard_tar in shards:
                results.append(
                    precompute_shard(
                        shard_tar, split, encoders, options, portable_root=portable_root, on_batch=bar.update
                    )
                )
    wall, done = time.perf_counter() - start, sum(r.count for r in results if not r.skipped)
    logger.info(
        "precomputed split %s: %d shards (%d skipped), %d new rows in %.1f s (%.1f samples/s)",
        split.name,
        len(results),
        sum(r.skipped for r in results),
        done,
        wall,
        done / wall if wall else 0.0,
    )
    return results
