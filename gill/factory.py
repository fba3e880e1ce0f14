"""The one module that loads backbone configs and weights (style: model classes do no IO).

Everything goes through ``from_pretrained(local_dir_or_id)``, so the tiny zoo and the real models take the
same code path. Before any weight is read, :func:`load_backbones` checks that every requested backbone is on
disk and otherwise fails at once with one message naming each missing model (:mod:`gill.hub`).

:func:`derive_dims` reads only ``config.json`` files: from the model folder when present, else from the
configs shipped in ``data_manifests/backbones/`` (so the paper preset's shapes are known with no weights).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import transformers
from diffusers import StableDiffusionPipeline
from transformers import AutoConfig, CLIPTextConfig, CLIPVisionConfig

from gill.config import DerivedDims, GILLConfig, ModelRef, check_against_dims
from gill.errors import ConfigError, MissingWeightsError
from gill.hub import downloads_allowed, hub_kwargs, locate, require_backbones
from gill.manifests import manifests_dir

logger = logging.getLogger(__name__)


def quiet_hf_logging() -> None:
    """Keep transformers/diffusers at warning level (transformers 5 logs every save/load at info)."""

    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def shipped_config_dir(ref: ModelRef) -> Path | None:
    """Folder of the config-only copy shipped for a paper backbone (``owner--name``), if there is one."""
    if ref.is_local_path:
        return None
    path = manifests_dir() / "backbones" / ref.id.replace("/", "--")
    return path if path.is_dir() else None


def config_dir(role: str, ref: ModelRef) -> Path:
    """Where to read ``ref``'s configs: its local folder, else the shipped config-only copy."""
    folder, why = locate(ref)
    if folder is not None:
        return folder
    shipped = shipped_config_dir(ref)
    if shipped is not None:
        return shipped
    raise MissingWeightsError(
        f"cannot read the config of backbone {role!r}",
        [f"{ref.id}: {why}; no config-only copy ships for it in data_manifests/backbones/"],
        hint="pass a local folder saved with save_pretrained, or download the model (see `gill models check`).",
    )


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def derive_dims(config: GILLConfig) -> DerivedDims:
    """Read every width GILL needs from the backbones' own configs, and check the config against them."""

    roles = config.backbones
    lm = AutoConfig.from_pretrained(config_dir("lm", roles.lm))
    vision = CLIPVisionConfig.from_pretrained(config_dir("vision", roles.vision))
    sd_dir = config_dir("sd", roles.sd)
    text = CLIPTextConfig.from_pretrained(sd_dir / "text_encoder")
    unet = _read_json(sd_dir / "unet" / "config.json")
    metric = AutoConfig.from_pretrained(config_dir("clip_metric", roles.clip_metric))
    if unet.get("cross_attention_dim") != text.hidden_size:
        raise ConfigError(
            f"SD pipeline {roles.sd.id!r} is inconsistent",
            [
                f"unet cross_attention_dim {unet.get('cross_attention_dim')} != "
                f"text_encoder hidden_size {text.hidden_size}"
            ],
        )
    dims = DerivedDims(
        lm_hidden=getattr(lm, "word_embed_proj_dim", None) or lm.hidden_size,
        lm_vocab_size=lm.vocab_size,
        lm_max_positions=lm.max_position_embeddings,
        lm_num_layers=lm.num_hidden_layers,
        vision_hidden=vision.hidden_size,
        vision_image_size=vision.image_size,
        sd_text_dim=text.hidden_size,
        sd_text_tokens=text.max_position_embeddings,
        clip_projection_dim=metric.projection_dim,
    )
    check_against_dims(config, dims)
    return dims


@dataclass(kw_only=True)
class LoadedBackbones:
    """The frozen models of one config, loaded (each is None when its role was not requested)."""

    tokenizer: Any = None
    """The LM's tokenizer (without [IMG] tokens; see :func:`gill.tokenization.add_img_tokens`)."""
    lm: Any = None
    """``AutoModelForCausalLM`` in eval mode."""
    vision: Any = None
    """``CLIPVisionModel`` in eval mode."""
    image_processor: Any = None
    """The vision model's ``CLIPImageProcessor``."""
    sd: Any = None
    """``StableDiffusionPipeline``."""
    clip_metric: Any = None
    """``CLIPModel`` for metrics, in eval mode."""
    clip_processor: Any = None
    """``CLIPProcessor`` of the metric model."""


_HF_LOADERS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    # role -> (LoadedBackbones field, transformers class, is a model to put in eval mode)
    "lm": (("tokenizer", "AutoTokenizer", False), ("lm", "AutoModelForCausalLM", True)),
    "vision": (("vision", "CLIPVisionModel", True), ("image_processor", "AutoImageProcessor", False)),
    "clip_metric": (("clip_metric", "CLIPModel", True), ("clip_processor", "CLIPProcessor", False)),
}


def resolve_sources(config: GILLConfig, roles: Iterable[str]) -> dict[str, str]:
    """Local folder for each role, after checking all of them at once (downloads allowed: hub ids pass through).

    Call it first when loading several backbones one after another, so a missing model is reported together
    with every other missing one instead of after the first loads.
    """
    roles = list(roles)
    if downloads_allowed():
        return {role: str(locate(ref)[0] or ref.id) for role, ref in config.backbones.roles().items() if role in roles}
    return {role: str(path) for role, path in require_backbones(config.backbones, roles, config.preset).items()}


def load_backbones(config: GILLConfig, roles: Iterable[str] = ("lm", "vision"), dtype: Any = None) -> LoadedBackbones:
    """Load the requested backbones (``lm``, ``vision``, ``sd``, ``clip_metric``); fail at once if any is missing.

    Args:
        config: the configuration naming the backbones.
        roles: which backbones to load.
        dtype: torch dtype for the weights (default: as stored, float32 for the tiny zoo).
    Returns:
        A :class:`LoadedBackbones` with the requested fields filled.
    """

    roles = list(roles)
    config.backbones.check_roles(roles)
    src = resolve_sources(config, roles)
    quiet_hf_logging()
    out = LoadedBackbones()
    for role in roles:
        revision = config.backbones.roles()[role].revision
        if role == "sd":
            out.sd = load_sd_pipeline(src[role], revision, dtype)
            continue
        for attr, class_name, is_model in _HF_LOADERS[role]:
            kw = {"dtype": dtype} if is_model and dtype is not None else {}
            loaded = getattr(transformers, class_name).from_pretrained(
                src[role], revision=revision, **kw, **hub_kwargs()
            )
            setattr(out, attr, loaded.eval() if is_model else loaded)
    return out


def load_sd_pipeline(source: str, revision: str = "main", dtype: Any = None) -> Any:
    """Load a ``StableDiffusionPipeline`` with its progress bar off."""

    kw = {"torch_dtype": dtype} if dtype is not None else {}
    pipe = StableDiffusionPipeline.from_pretrained(source, revision=revision, **kw, **hub_kwargs())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass(kw_only=True)
class SDTextEncoder:
    """Only the text side of a Stable Diffusion pipeline: what GILL's generation targets come from."""

    tokenizer: Any
    """SD's ``CLIPTokenizer`` (pads to 77, truncates on the right)."""
    text_encoder: Any
    """SD's ``CLIPTextModel`` in eval mode; its ``last_hidden_state`` is the GILLMapper target."""
    source: str
    """Local folder it was loaded from."""


def load_sd_text_encoder(config: GILLConfig, dtype: Any = None) -> SDTextEncoder:
    """Load SD's tokenizer and text encoder without the UNet/VAE (a few hundred MB instead of GBs)."""

    source = resolve_sources(config, ["sd"])["sd"]
    revision = config.backbones.sd.revision
    quiet_hf_logging()
    kw = {"dtype": dtype} if dtype is not None else {}
    tokenizer = transformers.CLIPTokenizer.from_pretrained(
        source, subfolder="tokenizer", revision=revision, **hub_kwargs()
    )
    encoder = transformers.CLIPTextModel.from_pretrained(
        source, subfolder="text_encoder", revision=revision, **kw, **hub_kwargs()
    )
    return SDTextEncoder(tokenizer=tokenizer, text_encoder=encoder.eval(), source=source)
