"""The models behind the benchmark metrics: CLIP similarity, LPIPS and FID features, loaded offline.

What each reproduces (docs/official-gill.md §6):

* :class:`ClipScorer`: the official ``compute_clip_similarity_vist.py``: ``CLIPModel`` + ``CLIPProcessor``
  (default processor: resize the short side, center crop, normalise), ``get_image_features`` (the *projected*
  embedding, 768-d for ``openai/clip-vit-large-patch14``), cosine per generated/ground-truth pair.
* :class:`LpipsScorer`: the official ``lpips_2dirs.py``: ``lpips.LPIPS(net='alex', version='0.1')``, each image
  RGB -> ``lpips.im2tensor`` ([-1, 1]) -> ``torchvision.transforms.functional.resize(.., (256, 256),
  antialias=True)``.
* :class:`FidFeatureExtractor`: clean-fid (Parmar et al. 2022) ``mode="clean"`` features; the official repo has
  no FID (official §6.3), clean-fid's Inception torchscript is the common reference.

Nothing here downloads. The real weights (paper / custom presets) must be on disk: the metric CLIP in the Hugging
Face cache or a local folder, torchvision's AlexNet checkpoint for LPIPS, clean-fid's Inception torchscript for
FID. :func:`resolve_metric_models` checks all of them before loading anything and raises one
:class:`~gill.errors.MissingWeightsError` naming every missing file, never swapping in random weights. Only the
``tiny`` preset uses stand-ins (random seeded AlexNet, tiny-CLIP features for FID), and their names say so.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import transformers
from torchvision.transforms.functional import resize

from eval.metrics import cosine_similarity_rows
from gill.config import GILLConfig, ModelRef
from gill.errors import InputError, MissingWeightsError
from gill.hub import check_backbone, downloads_allowed, hub_cache_dir, hub_kwargs

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

Device = str | torch.device

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
"""torchvision's ImageNet AlexNet checkpoint, the LPIPS v0.1 'alex' backbone."""
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_FILE}"
ALEXNET_SHA256_PREFIX = "7be5be79"
"""torchvision names checkpoints after the first hex digits of their SHA-256."""
INCEPTION_FILE = "inception-2015-12-05.pt"
"""clean-fid's Inception-v3 torchscript (the TF FID network, ported by NVlabs)."""
INCEPTION_URL = f"https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/{INCEPTION_FILE}"

LPIPS_NAME = "lpips-alex-v0.1"
INCEPTION_NAME = "clean-fid-inception-2015-12-05 (mode clean)"
TINY_NOTE = "tiny preset: not comparable to paper numbers"
LPIPS_SIZE = 256
"""``lpips_2dirs.py`` resizes both images to 256x256 before LPIPS."""


def default_alexnet_path() -> Path:
    """Where torchvision (and so ``lpips``) caches the AlexNet checkpoint: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def default_inception_path() -> Path:
    """Where clean-fid caches the Inception torchscript (``cleanfid/features.py``: ``/tmp``, ``./`` on Windows)."""
    return Path("./" if platform.system() == "Windows" else "/tmp") / INCEPTION_FILE


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _check_pairs(images_a: Sequence[Image.Image], images_b: Sequence[Image.Image], metric: str) -> None:
    if len(images_a) != len(images_b):
        raise InputError(
            f"{metric} compares images in pairs, but the two lists differ in length",
            [f"images_a has {len(images_a)} images, images_b has {len(images_b)}"],
            hint="pass one generated and one ground-truth image per example, in the same order",
        )


def _tensor_features(output: Any) -> torch.Tensor:
    """transformers 5 may return an output object from ``get_*_features``: its ``pooler_output`` is the tensor."""
    return output if torch.is_tensor(output) else output.pooler_output


# --- CLIP similarity ---------------------------------------------------------------------------------------------


class ClipScorer:
    """Projected, L2-normalised CLIP image/text embeddings and per-pair cosine (``compute_clip_similarity_vist.py``).

    Features come back as float32 CPU tensors whatever the device the model runs on.
    """

    def __init__(self, model: Any, processor: Any, *, name: str, device: Device = "cpu", batch_size: int = 32) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.name = name
        self.batch_size = batch_size
        self.dtype = next(self.model.parameters()).dtype

    @classmethod
    def from_pretrained(
        cls, source: str | Path, *, name: str, revision: str = "main", device: Device = "cpu", batch_size: int = 32
    ) -> ClipScorer:
        """Load ``CLIPModel`` + ``CLIPProcessor`` from a local folder (or a Hub id when downloads are allowed)."""

        transformers.utils.logging.set_verbosity_error()
        model = transformers.CLIPModel.from_pretrained(str(source), revision=revision, **hub_kwargs())
        processor = transformers.CLIPProcessor.from_pretrained(str(source), revision=revision, **hub_kwargs())
        return cls(model, processor, name=name, device=device, batch_size=batch_size)

    @property
    def max_text_length(self) -> int:
        """Token limit of the text tower (77 for OpenAI CLIP): longer texts are truncated, as CLIP does."""
        limit = self.model.config.text_config.max_position_embeddings
        return min(int(self.processor.tokenizer.model_max_length), int(limit))

    def _unit(self, features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, P) normalised ``get_image_features`` of RGB images, through the model's default processor."""
        chunks = [torch.empty(0, self.model.config.projection_dim)]
        for batch in _batches(images, self.batch_size):
            pixels = self.processor(images=[im.convert("RGB") for im in batch], return_tensors="pt").pixel_values
            output = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
            chunks.append(self._unit(_tensor_features(output)))
        return torch.cat(chunks)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, P) normalised ``get_text_features``, truncated at :attr:`max_text_length` tokens."""
        chunks = [torch.empty(0, self.model.config.projection_dim)]
        for batch in _batches(list(texts), self.batch_size):
            tokens = self.processor.tokenizer(
                list(batch), padding=True, truncation=True, max_length=self.max_text_length, return_tensors="pt"
            )
            output = self.model.get_text_features(
                input_ids=tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(self.device)
            )
            chunks.append(self._unit(_tensor_features(output)))
        return torch.cat(chunks)

    @torch.no_grad()
    def projection_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Projected, normalised embeddings from the vision tower's ``pooler_output`` (post-layernorm CLS).

        Equal to :meth:`image_features` when ``pooled`` came from this model's vision tower, so GILL's precomputed
        ``vision.npy`` features can be scored without re-reading the images (when the metric CLIP is the vision
        backbone).
        """
        return self._unit(self.model.visual_projection(pooled.to(self.device, self.dtype)))

    def similarity(self, images_a: Sequence[Image.Image], images_b: Sequence[Image.Image]) -> torch.Tensor:
        """(N,) cosine between the CLIP embeddings of ``images_a[i]`` and ``images_b[i]``."""
        _check_pairs(images_a, images_b, "CLIP similarity")
        return cosine_similarity_rows(self.image_features(images_a), self.image_features(images_b))


# --- LPIPS -------------------------------------------------------------------------------------------------------


def _lpips_backbone_params(net: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """LPIPS' AlexNet parameters keyed as in torchvision's ``alexnet().state_dict()`` (``features.<i>.*``).

    ``lpips.pretrained_networks.alexnet`` splits ``tv.alexnet().features`` into ``slice1..5`` keeping each child's
    original index, so ``net.slice2.3.weight`` is ``features.3.weight``.
    """
    trunk = net.net
    slices = [getattr(trunk, f"slice{i}") for i in range(1, trunk.N_slices + 1)]
    return {f"features.{name}": param for part in slices for name, param in part.named_parameters()}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file gets the same explanation
        raise InputError(
            f"cannot read the LPIPS AlexNet weights {path}",
            [f"{path}: {type(exc).__name__}: {exc}"],
            hint=f"pass torchvision's {ALEXNET_FILE} (from {ALEXNET_URL}) with --lpips-weights",
        ) from exc
    if not isinstance(state, dict):
        raise InputError(
            f"the LPIPS AlexNet weights {path} are not a state dict",
            [f"{path}: holds a {type(state).__name__}"],
            hint=f"pass torchvision's {ALEXNET_FILE} (a state dict of alexnet()) with --lpips-weights",
        )
    return state


def load_alexnet_weights(net: torch.nn.Module, path: Path) -> None:
    """Copy a torchvision AlexNet state dict into an ``lpips.LPIPS(net='alex')`` trunk and verify every tensor."""
    state = _read_state_dict(path)
    params = _lpips_backbone_params(net)
    problems = [f"{key}: missing from the file" for key in params if key not in state]
    problems += [
        f"{key}: shape {tuple(state[key].shape)} in the file, LPIPS expects {tuple(p.shape)}"
        for key, p in params.items()
        if key in state and state[key].shape != p.shape
    ]
    if problems:
        raise InputError(
            f"{path} is not a torchvision AlexNet checkpoint", problems, hint=f"use {ALEXNET_FILE} from {ALEXNET_URL}"
        )
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(state[key])
    unloaded = [key for key, param in _lpips_backbone_params(net).items() if not torch.equal(param, state[key])]
    if unloaded:
        raise RuntimeError(f"LPIPS AlexNet tensors not loaded from {path}: {unloaded}")
    _warn_if_not_torchvision_file(path)


def _warn_if_not_torchvision_file(path: Path) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(ALEXNET_SHA256_PREFIX):
        logger.warning(
            "%s is a valid AlexNet state dict but not torchvision's %s (sha256 %s..., expected %s...): "
            "LPIPS values will not match published ones",
            path,
            ALEXNET_FILE,
            digest.hexdigest()[:8],
            ALEXNET_SHA256_PREFIX,
        )


def _check_linear_heads(net: torch.nn.Module) -> None:
    """The LPIPS v0.1 linear heads ship in the wheel and are loaded with ``strict=False``: make sure they were."""
    import lpips

    heads_file = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    heads = torch.load(heads_file, map_location="cpu", weights_only=True)
    state = net.state_dict()
    wrong = [key for key, value in heads.items() if key not in state or not torch.equal(state[key], value)]
    if wrong or not heads:
        raise RuntimeError(f"LPIPS linear heads from {heads_file} were not loaded: {wrong or 'empty file'}")


def build_lpips(alexnet_weights: Path | None, seed: int = 0) -> torch.nn.Module:
    """``lpips.LPIPS(net='alex', version='0.1')`` without any download.

    The trunk is built random (``pnet_rand=True``) under ``seed`` (the global RNG is left untouched), then
    overwritten from ``alexnet_weights`` when given. The linear heads load from the ``lpips`` wheel.
    """
    import lpips

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision deprecates the `pretrained=` lpips passes
        torch.manual_seed(seed)
        net = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
    _check_linear_heads(net)
    if alexnet_weights is not None:
        load_alexnet_weights(net, alexnet_weights)
    return net.eval()


def lpips_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, 256, 256) in [-1, 1]: ``lpips.im2tensor`` of the RGB pixels, resized with antialias (lpips_2dirs.py)."""
    import lpips

    tensor = lpips.im2tensor(np.asarray(image.convert("RGB")))
    return resize(tensor, [LPIPS_SIZE, LPIPS_SIZE], antialias=True)


class LpipsScorer:
    """LPIPS distance per image pair (``lpips_2dirs.py``); lower is more similar.

    Args:
        alexnet_weights: torchvision's ``alexnet-owt-7be5be79.pth``; None gives a random AlexNet trunk seeded with
            ``seed`` (tiny preset only: the values mean nothing against the paper's).
        seed: seed of the random trunk (ignored when weights are given).
        device: where the network runs; distances come back on the CPU.
        batch_size: image pairs per forward pass.
    """

    def __init__(
        self, *, alexnet_weights: Path | None = None, seed: int = 0, device: Device = "cpu", batch_size: int = 16
    ) -> None:
        self.device = torch.device(device)
        self.net = build_lpips(alexnet_weights, seed).to(self.device)
        self.batch_size = batch_size
        self.name = (
            LPIPS_NAME if alexnet_weights is not None else f"{LPIPS_NAME}/random-alexnet-seed{seed} ({TINY_NOTE})"
        )

    @torch.no_grad()
    def distance(self, images_a: Sequence[Image.Image], images_b: Sequence[Image.Image]) -> torch.Tensor:
        """(N,) LPIPS between ``images_a[i]`` and ``images_b[i]`` (any sizes: both are resized to 256x256)."""
        _check_pairs(images_a, images_b, "LPIPS")
        out = [torch.empty(0)]
        for start in range(0, len(images_a), self.batch_size):
            a = torch.cat([lpips_tensor(im) for im in images_a[start : start + self.batch_size]]).to(self.device)
            b = torch.cat([lpips_tensor(im) for im in images_b[start : start + self.batch_size]]).to(self.device)
            out.append(self.net(a, b).reshape(-1).float().cpu())
        return torch.cat(out)


# --- FID features ------------------------------------------------------------------------------------------------


class InceptionClean(torch.nn.Module):
    """clean-fid's ``InceptionV3W(resize_inside=False)`` over a torchscript file at any path (no download).

    Input: float (B, 3, 299, 299) in [0, 255] (clean-fid's resize does the 299); output (B, 2048) pool features.
    """

    def __init__(self, path: Path, device: Device = "cpu") -> None:
        super().__init__()
        try:
            self.base = torch.jit.load(str(path), map_location=torch.device(device)).eval()
        except Exception as exc:  # any unreadable file gets the same explanation
            raise InputError(
                f"cannot load the Inception torchscript {path}",
                [f"{path}: {type(exc).__name__}: {exc}"],
                hint=f"pass clean-fid's {INCEPTION_FILE} (from {INCEPTION_URL}) with --inception-weights",
            ) from exc
        if not hasattr(self.base, "layers"):
            raise InputError(
                f"{path} is not clean-fid's Inception torchscript",
                [f"{path}: the scripted module has no `layers` submodule"],
                hint=f"use {INCEPTION_FILE} from {INCEPTION_URL}",
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2:] != (299, 299):
            raise ValueError(f"Inception features need 299x299 inputs (clean-fid resizes them), got {tuple(x.shape)}")
        return self.base.layers.forward((x - 128) / 128).reshape(x.shape[0], -1)


class TinyClipPooler(torch.nn.Module):
    """Tiny-preset FID stand-in: a CLIP vision tower's ``pooler_output`` on clean-fid's [0, 255] 299x299 input.

    The image is resized (bicubic, antialias) to the tower's input size and normalised with its processor's
    mean/std here, since clean-fid hands every extractor 299x299 pixels.
    """

    def __init__(self, vision_model: torch.nn.Module, image_processor: Any) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.size = int(image_processor.crop_size["height"])
        self.register_buffer("mean", torch.tensor(image_processor.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_processor.image_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(
            x / 255.0, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False
        )
        x = (x.clamp(0.0, 1.0) - self.mean) / self.std
        dtype = next(self.vision_model.parameters()).dtype
        return self.vision_model(pixel_values=x.to(dtype)).pooler_output.float()


class FidFeatureExtractor:
    """Image features for FID, computed by clean-fid (``mode="clean"``: PIL bicubic resize to 299x299).

    Use :meth:`inception` for the real network, :meth:`tiny_clip` for the tiny preset.
    """

    def __init__(self, module: torch.nn.Module, *, name: str, device: Device = "cpu", batch_size: int = 32) -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.name = name
        self.batch_size = batch_size

    @classmethod
    def inception(cls, path: Path, *, device: Device = "cpu", batch_size: int = 32) -> FidFeatureExtractor:
        """clean-fid's Inception torchscript from ``path`` (2048-d features)."""
        return cls(InceptionClean(path, device), name=INCEPTION_NAME, device=device, batch_size=batch_size)

    @classmethod
    def tiny_clip(cls, clip: ClipScorer, *, batch_size: int = 32) -> FidFeatureExtractor:
        """The metric CLIP's vision ``pooler_output`` (tiny preset: not Inception, not comparable)."""
        module = TinyClipPooler(clip.model.vision_model, clip.processor.image_processor)
        name = f"{clip.name.split(' (')[0]}-vision-pooler (not Inception; {TINY_NOTE})"
        return cls(module, name=name, device=clip.device, batch_size=batch_size)

    def folder_features(self, folder: Path) -> np.ndarray:
        """(N, D) features of every image under ``folder`` (recursive, sorted by path, as clean-fid lists them)."""
        from cleanfid.fid import get_folder_features
        from cleanfid.utils import EXTENSIONS

        folder = Path(folder)
        if not folder.is_dir() or not any(p.suffix[1:] in EXTENSIONS for p in folder.rglob("*") if p.is_file()):
            raise InputError(
                "FID needs a folder of images",
                [f"{folder}: {'has no images' if folder.is_dir() else 'is not a directory'}"],
                hint=f"point it at a folder holding image files ({', '.join(sorted(EXTENSIONS))})",
            )
        return get_folder_features(
            str(folder),
            model=self.module,
            num_workers=0,
            batch_size=self.batch_size,
            device=self.device,
            mode="clean",
            verbose=False,
        )

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, D) features of in-memory images, with the same clean resize as :meth:`folder_features`."""
        from cleanfid.resize import build_resizer

        resize = build_resizer("clean")
        chunks = []
        for batch in _batches(images, self.batch_size):
            arrays = [resize(np.asarray(im.convert("RGB"))) for im in batch]  # float32 (299, 299, 3) in [0, 255]
            pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(self.device)
            chunks.append(self.module(pixels).cpu().numpy())
        return np.concatenate(chunks) if chunks else np.empty((0, 0), dtype=np.float32)


# --- resolution --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricModelSpec:
    """User overrides of the metric models (command-line flags); None means "from the preset"."""

    clip: str | None = None
    """Hub id or local folder of the CLIP for CLIP similarity (``--clip-model``)."""
    lpips_weights: str | None = None
    """Local torchvision ``alexnet-owt-7be5be79.pth`` for LPIPS (``--lpips-weights``)."""
    inception_weights: str | None = None
    """Local clean-fid ``inception-2015-12-05.pt`` torchscript for FID (``--inception-weights``)."""


@dataclass
class MetricModels:
    """The loaded metric models of one benchmark run."""

    clip: ClipScorer
    """CLIP similarity."""
    lpips: LpipsScorer
    """LPIPS distance."""
    fid: FidFeatureExtractor | None = None
    """FID features (None unless requested)."""

    @property
    def names(self) -> dict[str, str]:
        """Metric name -> the model that computed it (``clip_sim``, ``lpips`` and, when loaded, ``fid``)."""
        names = {"clip_sim": self.clip.name, "lpips": self.lpips.name}
        if self.fid is not None:
            names["fid"] = self.fid.name
        return names


@dataclass
class _Plan:
    """What to load, decided (and checked on disk) before anything heavy is loaded."""

    clip_source: str = ""
    clip_revision: str = "main"
    clip_name: str = ""
    alexnet: Path | None = None
    inception: Path | None = None
    problems: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)


def _plan_clip(plan: _Plan, ref: ModelRef, tiny: bool) -> None:
    plan.clip_revision = ref.revision
    plan.clip_name = (
        f"tiny-zoo-clip ({TINY_NOTE})" if tiny else ref.id + ("" if ref.revision == "main" else f"@{ref.revision}")
    )
    status = check_backbone("clip_metric", ref)
    if status.available and status.local_dir is not None:
        plan.clip_source = str(status.local_dir)
        return
    if status.local_dir is None and downloads_allowed() and not ref.is_local_path:
        plan.clip_source = ref.id  # transformers fetches it (GILL_ALLOW_DOWNLOADS=1)
        return
    plan.problems.append(f"CLIP model {ref.id!r} for clip_sim: {status.problem}")
    if ref.is_local_path:
        plan.hints.append(
            f"CLIP: pass a folder holding a full CLIPModel and CLIPProcessor (save_pretrained) as {ref.id}"
        )
    else:
        plan.hints.append(
            f"CLIP: on a machine with network run `hf download {ref.id}`, copy that Hugging Face cache here and point "
            f"HF_HOME (or HF_HUB_CACHE) at it (checked {hub_cache_dir()}); or pass --clip-model DIR; "
            "or allow downloads with GILL_ALLOW_DOWNLOADS=1"
        )


def _plan_file(plan: _Plan, what: str, override: str | None, default: Path, flag: str, url: str) -> Path | None:
    """Return the weights file to use, or record why it is missing and how to get it."""
    path = Path(override).expanduser() if override else default
    if path.is_file():
        return path
    where = f"{flag} {path}: {'is a directory, not a file' if path.is_dir() else 'does not exist'}"
    plan.problems.append(f"{what} ({default.name}): {where if override else f'not found at {path}'}")
    target = f"{default} (or anywhere, then pass {flag} FILE)"
    plan.hints.append(f"{what}: download {url} to {target}")
    return None


def _plan(config: GILLConfig, spec: MetricModelSpec, need_fid: bool) -> _Plan:
    tiny = config.preset == "tiny"
    plan = _Plan()
    _plan_clip(plan, ModelRef(id=spec.clip) if spec.clip else config.backbones.clip_metric, tiny and not spec.clip)
    if spec.lpips_weights or not tiny:
        lpips_what = "LPIPS AlexNet backbone"
        plan.alexnet = _plan_file(
            plan, lpips_what, spec.lpips_weights, default_alexnet_path(), "--lpips-weights", ALEXNET_URL
        )
    if need_fid and (spec.inception_weights or not tiny):
        fid_what = "FID Inception network"
        plan.inception = _plan_file(
            plan, fid_what, spec.inception_weights, default_inception_path(), "--inception-weights", INCEPTION_URL
        )
    return plan


def _missing_error(config: GILLConfig, plan: _Plan) -> MissingWeightsError:
    hints = ["How to get each (nothing is downloaded at run time):", *(f"  - {h}" for h in plan.hints)]
    hints.append("  - or, for a smoke test, --preset tiny (random LPIPS trunk, tiny-CLIP FID features; not comparable)")
    return MissingWeightsError(
        f"Missing metric model weights for preset {config.preset!r} (real weights are required; "
        "random stand-ins are only used by the tiny preset)",
        plan.problems,
        "\n".join(hints),
    )


def check_metric_models(
    config: GILLConfig,
    spec: MetricModelSpec = MetricModelSpec(),  # noqa: B008 - frozen, so a shared default is safe
    *,
    need_fid: bool = False,
) -> None:
    """Raise the :func:`resolve_metric_models` error now, without loading anything (for a pipeline's first step)."""
    plan = _plan(config, spec, need_fid)
    if plan.problems:
        raise _missing_error(config, plan)


def resolve_metric_models(
    config: GILLConfig,
    spec: MetricModelSpec = MetricModelSpec(),  # noqa: B008 - frozen, so a shared default is safe
    *,
    device: Device = "cpu",
    need_fid: bool = False,
) -> MetricModels:
    """Load the metric models for ``config``'s preset, with ``spec``'s overrides; fail at once if any is missing.

    Per model: CLIP comes from ``spec.clip`` or ``config.backbones.clip_metric`` (resolved offline). LPIPS and the
    FID network are the real ones (torchvision AlexNet, clean-fid Inception) unless the preset is ``tiny`` and no
    file was passed for them; then LPIPS gets a seeded random trunk and FID uses the metric CLIP's vision tower.
    Every file is checked before any model loads, and all missing ones are named in one MissingWeightsError.

    Args:
        config: the run's configuration (its ``preset`` and ``backbones.clip_metric``).
        spec: user overrides (Hub id / local paths).
        device: where the metric models run.
        need_fid: also load (and so require) the FID feature network.
    """
    plan = _plan(config, spec, need_fid)
    if plan.problems:
        raise _missing_error(config, plan)
    clip = ClipScorer.from_pretrained(plan.clip_source, name=plan.clip_name, revision=plan.clip_revision, device=device)
    lpips_scorer = LpipsScorer(alexnet_weights=plan.alexnet, device=device)
    fid = None
    if need_fid:
        if plan.inception is not None:
            fid = FidFeatureExtractor.inception(plan.inception, device=device)
        else:
            fid = FidFeatureExtractor.tiny_clip(clip)
    models = MetricModels(clip=clip, lpips=lpips_scorer, fid=fid)
    logger.info("metric models: %s", models.names)
    return models
