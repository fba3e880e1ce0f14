"""Named configurations: ``paper`` (the published GILL run) and ``tiny`` (CPU-sized, same model classes).

``paper`` follows the released ``model_args.json`` (docs/official-gill.md §7.1): OPT-6.7B, CLIP ViT-L/14,
Stable Diffusion v1.5, 8 [IMG] tokens, 4 visual tokens, 256-d retrieval, GILLMapper (512 wide, 4+4 layers,
4 heads) to 77 tokens. ``tiny`` names the tiny zoo (:mod:`gill.zoo`) by the symbolic ids ``gill-tiny/opt``,
``gill-tiny/clip`` and ``gill-tiny/sd``; :func:`gill.hub.resolve_model_id` maps them to the zoo in this machine's
cache (:func:`tiny_zoo_dir`), built there on first use, so configs and checkpoints that name them hold no path and
load on any machine.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from gill.config import AdapterConfig, BackbonesConfig, GILLConfig, MapperConfig, ModelRef, TrainConfig
from gill.errors import ConfigError
from gill.zoo import ZOO_VERSION, ensure_tiny_zoo

PAPER_LM = "facebook/opt-6.7b"
PAPER_CLIP = "openai/clip-vit-large-patch14"
PAPER_SD = "stable-diffusion-v1-5/stable-diffusion-v1-5"
"""SD v1.5. The official code names ``runwayml/stable-diffusion-v1-5``, which was removed from the Hub in
2024; this is its maintained mirror with identical weights. Pass ``--sd runwayml/stable-diffusion-v1-5`` (or a
local folder) if your cache holds the old id."""


def cache_dir() -> Path:
    """Where gill keeps built artefacts such as the tiny zoo (``GILL_CACHE_DIR``, else ``~/.cache/gill``)."""
    if os.environ.get("GILL_CACHE_DIR"):
        return Path(os.environ["GILL_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))) / "gill"


def tiny_zoo_dir() -> Path:
    """Folder of the tiny zoo for the current builder version."""

    return cache_dir() / f"tiny-zoo-v{ZOO_VERSION}"


TINY_ID_PREFIX = "gill-tiny/"
"""Backbone ids ``gill-tiny/<component>`` name a component of the tiny zoo in the cache (not a Hub repo)."""
TINY_COMPONENTS = ("opt", "clip", "sd")
"""The tiny zoo's model folders."""
_LEGACY_TINY_PATH = re.compile(r"(?:^|[/\\])tiny-zoo-v(\d+)[/\\](opt|clip|sd)[/\\]?$")


def tiny_model_id(component: str) -> str:
    """The symbolic id of a tiny zoo component (``opt`` -> ``gill-tiny/opt``)."""
    if component not in TINY_COMPONENTS:
        raise ConfigError(f"unknown tiny zoo component {component!r}", [f"components: {list(TINY_COMPONENTS)}"])
    return TINY_ID_PREFIX + component


def tiny_component(model_id: str) -> str | None:
    """The component a symbolic ``gill-tiny/<component>`` id names, else None."""
    name = model_id.removeprefix(TINY_ID_PREFIX)
    return name if model_id.startswith(TINY_ID_PREFIX) and name in TINY_COMPONENTS else None


def legacy_tiny_component(model_id: str) -> str | None:
    """The component an absolute tiny zoo path of the current builder version names (``.../tiny-zoo-v5/opt``, as
    configs recorded before the symbolic ids), else None. Paths of other versions name other weights: None."""
    match = _LEGACY_TINY_PATH.search(model_id)
    if match is None:
        return None

    return match.group(2) if int(match.group(1)) == ZOO_VERSION else None


def paper_config() -> GILLConfig:
    """The paper's configuration (every adapter default is the released value)."""
    backbones = BackbonesConfig(
        lm=ModelRef(id=PAPER_LM),
        vision=ModelRef(id=PAPER_CLIP),
        sd=ModelRef(id=PAPER_SD),
        clip_metric=ModelRef(id=PAPER_CLIP),
    )
    return GILLConfig(preset="paper", backbones=backbones, adapters=AdapterConfig(), max_len=32, train=TrainConfig())


def tiny_config(zoo_dir: str | Path | None = None) -> GILLConfig:
    """Same structure as the paper's, with CPU-sized adapters over the tiny zoo.

    The backbones are the symbolic ``gill-tiny/...`` ids (resolved through the cache at load time), or the folders
    of the zoo at ``zoo_dir`` when one is given.
    """
    if zoo_dir is None:
        ids = {name: tiny_model_id(name) for name in TINY_COMPONENTS}
    else:
        ids = {name: str(Path(zoo_dir) / name) for name in TINY_COMPONENTS}
    backbones = BackbonesConfig(
        lm=ModelRef(id=ids["opt"]),
        vision=ModelRef(id=ids["clip"]),
        sd=ModelRef(id=ids["sd"]),
        clip_metric=ModelRef(id=ids["clip"]),
    )
    mapper = MapperConfig(hidden_dim=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, ffn_dim=64)
    adapters = AdapterConfig(num_img_tokens=8, n_visual_tokens=4, ret_emb_dim=32, num_clip_tokens=77, mapper=mapper)
    train = TrainConfig(
        steps=600,
        batch_size=16,
        warmup_steps=20,
        decay_every=400,
        val_every=200,
        ckpt_every=200,
        log_every=5,
        precision="fp32",
    )
    return GILLConfig(preset="tiny", backbones=backbones, adapters=adapters, max_len=32, train=train)


PRESETS: dict[str, Callable[[], GILLConfig]] = {"paper": paper_config, "tiny": tiny_config}


def get_preset(name: str, *, build: bool = True) -> GILLConfig:
    """The named preset. For ``tiny`` with ``build=True`` the tiny zoo is built into the cache if missing."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}", [f"available presets: {sorted(PRESETS)}"])
    config = PRESETS[name]()
    if name == "tiny" and build:
        ensure_tiny_zoo(tiny_zoo_dir())
    return config
