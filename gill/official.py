"""Import the official GILL release (``kohjingyu/gill``, HF ``jykoh/gill``) into our checkpoint format.

The release folder holds ``model_args.json`` (docs/official-gill.md §7.1), ``pretrained_ckpt.pth.tar`` (``{'state_dict':
...}``, keys ``model.*``, bf16; official §7.2) and optionally ``decision_model.pth.tar`` (``1.weight`` (2, D) and
``1.bias``; (2, D + 1) in the paper-era version; official §5). :func:`import_official` maps the arguments to a
:class:`~gill.config.GILLConfig`, renames the tensors (:data:`KEY_PREFIXES`, :data:`KEY_NAMES`), casts them to
fp32, checks every shape against the widths derived from the config, and writes a :mod:`gill.checkpoint` folder.

Unlike the official ``load_gill`` (official §8.15) every file is read with
``torch.load(map_location="cpu", weights_only=True)``: no CUDA needed, no pickle code execution, and loading is
strict (unknown or missing keys are listed in one error). From the shell::

    gill import-official checkpoints/gill_opt --out work/ckpt/gill-official
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from gill.adapters import DecisionHead, GILLAdapters
from gill.checkpoint import adapters_from_state_dict, load_strict, save_pretrained
from gill.config import AdapterConfig, BackbonesConfig, DerivedDims, GILLConfig, MapperConfig, ModelRef
from gill.errors import ConfigError, InputError
from gill.factory import derive_dims
from gill.hub import hub_kwargs, locate
from gill.presets import PAPER_SD
from gill.tokenization import ImgTokens, add_img_tokens, img_token_strings
from gill.utils.io import sha256_file

logger = logging.getLogger(__name__)

MODEL_ARGS_FILE = "model_args.json"
CKPT_FILE = "pretrained_ckpt.pth.tar"
DECISION_FILE = "decision_model.pth.tar"

KEY_NAMES: dict[str, str] = {
    "model.input_embeddings.weight": "img_embeddings.weight",
    "model.logit_scale": "retrieval.logit_scale",
    "model.gen_text_hidden_fcs.0.query_embs": "mapper.query_embs",
}
"""Official key -> ours, for whole names."""
KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.visual_embeddings.", "input_proj.linear."),
    ("model.visual_fc.", "retrieval.image_proj."),
    ("model.ret_text_hidden_fcs.0.model.", "retrieval.text_proj."),
    ("model.gen_text_hidden_fcs.0.fc.", "mapper.fc."),
    ("model.gen_text_hidden_fcs.0.tfm.", "mapper.tfm."),
    ("model.gen_text_hidden_fcs.0.model.", "mapper.out."),
)
"""Official key prefix -> ours (the rest of the name is kept)."""


@dataclass(frozen=True, kw_only=True)
class ImportReport:
    """What :func:`import_official` wrote."""

    out_dir: Path
    """The checkpoint folder."""
    config: GILLConfig
    """The configuration mapped from ``model_args.json``."""
    num_parameters: int
    """Adapter parameters imported."""
    decision_head: str | None
    """``"D -> 2"`` (or ``"D+1 -> 2"``) when a decision model was imported."""
    img_token_ids: tuple[int, ...]
    """[IMG] ids in *our* tokenizer (no ``<|image|>`` token), empty when the LM tokenizer is not on disk."""

    def render(self) -> str:
        """Human-readable summary."""
        ids = list(self.img_token_ids) or "unknown (tokenizer not on disk; recomputed by add_img_tokens on use)"
        return "\n".join(
            [
                f"imported {self.num_parameters:,} adapter parameters into {self.out_dir}",
                f"  backbones: lm {self.config.backbones.lm.id}, vision {self.config.backbones.vision.id}, "
                f"sd {self.config.backbones.sd.id}",
                f"  mapper: {self.config.adapters.mapper.kind}, [IMG] ids: {ids}",
                f"  decision head: {self.decision_head or 'none'}",
            ]
        )


# -- reading the release files ------------------------------------------------------------------------------------


def read_model_args(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The official ``model_args.json`` as a dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{str(path)!r} not found", hint=f"the release folder must hold {MODEL_ARGS_FILE}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{str(path)!r} is not valid JSON", [str(err)]) from err


def load_official_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """``torch.load`` a release ``.pth.tar`` on CPU with ``weights_only``; unwrap ``state_dict``, strip ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{str(path)!r} not found", hint="download it from the HF repo jykoh/gill")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or non-weights pickles
        raise InputError(f"cannot read {str(path)!r} as a weights-only torch checkpoint", [str(err)]) from err
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{str(path)!r} holds no tensor state dict", ["expected {'state_dict': {name: tensor}}"])
    return {k.removeprefix("module."): v for k, v in state.items()}


# -- mapping ------------------------------------------------------------------------------------------------------


def rename_key(key: str) -> str | None:
    """Our name for an official key (``module.`` already stripped), or None when it is not an adapter tensor."""
    if key in KEY_NAMES:
        return KEY_NAMES[key]
    for official, ours in KEY_PREFIXES:
        if key.startswith(official):
            return ours + key[len(official) :]
    return None


def convert_state_dict(official: dict[str, torch.Tensor], num_img_tokens: int) -> dict[str, torch.Tensor]:
    """Rename official tensors to our names and cast them to fp32.

    Keys that are not adapter tensors keep their official name, so the strict check that follows
    (:func:`gill.checkpoint.load_strict`) lists them as unexpected together with every missing or mis-shaped one.
    An un-pruned training checkpoint holds the whole (V, D) embedding matrix under ``model.input_embeddings.weight``:
    its last ``num_img_tokens`` rows are the [IMG] rows (what the official ``prune_model_ckpt.py`` keeps).
    """
    state = {rename_key(k) or k: v.detach().to(torch.float32).contiguous() for k, v in official.items()}
    table = state.get("img_embeddings.weight")
    if table is not None and table.ndim == 2 and table.shape[0] > num_img_tokens:
        logger.info("taking the last %d rows of the full %s embedding matrix", num_img_tokens, tuple(table.shape))
        state["img_embeddings.weight"] = table[-num_img_tokens:].contiguous()
    return state


def _layer_count(state: dict[str, torch.Tensor], stack: str) -> int:
    pattern = re.compile(rf"^mapper\.tfm\.{stack}\.layers\.(\d+)\.")
    return len({m.group(1) for k in state if (m := pattern.match(k))})


def infer_mapper_config(state: dict[str, torch.Tensor]) -> MapperConfig:
    """The GILLMapper sizes of a converted state dict (the official code hard-codes them; the weights tell).

    Head count and dropout are not visible in weights: they take the official values (MapperConfig defaults).
    """
    need = ("mapper.fc.weight", "mapper.tfm.encoder.layers.0.linear1.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise InputError("the official checkpoint lacks the GILLMapper tensors", [f"missing: {k}" for k in missing])
    return MapperConfig(
        kind="gill_mapper",
        hidden_dim=state["mapper.fc.weight"].shape[0],
        num_encoder_layers=_layer_count(state, "encoder"),
        num_decoder_layers=_layer_count(state, "decoder"),
        ffn_dim=state["mapper.tfm.encoder.layers.0.linear1.weight"].shape[0],
    )


def _model_args_problems(args: dict[str, Any]) -> list[str]:
    problems = []
    required = ("opt_version", "visual_encoder", "n_visual_tokens", "ret_emb_dim", "num_tokens", "num_clip_tokens")
    problems += [f"{key}: required field is missing" for key in required if key not in args]
    checks = (
        ("text_fc_mode", "gill_mapper"),
        ("ret_text_fc_mode", "linear"),
        ("share_ret_gen", True),
        ("freeze_lm", True),
        ("freeze_vm", True),
    )
    problems += [
        f"{key}: only {want!r} (the released model) is supported, got {args[key]!r}"
        for key, want in checks
        if key in args and args[key] != want
    ]
    return problems


def config_from_model_args(
    args: dict[str, Any],
    *,
    mapper: MapperConfig | None = None,
    lm: str | None = None,
    vision: str | None = None,
    sd: str | None = None,
) -> GILLConfig:
    """Map official ``model_args.json`` values to a GILLConfig (official §7.1).

    Args:
        args: the parsed ``model_args.json``.
        mapper: GILLMapper sizes (default: the official hard-coded ones).
        lm, vision: override ``opt_version`` / ``visual_encoder`` (e.g. with local folders of the same models).
        sd: the Stable Diffusion pipeline (``model_args`` does not name it; default: SD v1.5).
    """

    problems = _model_args_problems(args)
    if problems:
        raise InputError("model_args.json is not a supported GILL release", problems)
    vision_ref = ModelRef(id=vision or args["visual_encoder"])
    backbones = BackbonesConfig(
        lm=ModelRef(id=lm or args["opt_version"]),
        vision=vision_ref,
        sd=ModelRef(id=sd or PAPER_SD),
        clip_metric=vision_ref,
    )
    try:
        adapters = AdapterConfig(
            num_img_tokens=args["num_tokens"],
            n_visual_tokens=args["n_visual_tokens"],
            ret_emb_dim=args["ret_emb_dim"],
            num_clip_tokens=args["num_clip_tokens"],
            text_emb_layers=tuple(args.get("text_emb_layers", (-1,))),
            mapper=mapper or MapperConfig(),
        )
    except ConfigError as err:
        raise InputError("model_args.json has invalid values", err.problems) from err
    return GILLConfig(preset="official", backbones=backbones, adapters=adapters)


def load_official_decision_head(path: str | os.PathLike[str], dims: DerivedDims) -> DecisionHead:
    """The official ``decision_model.pth.tar`` (Dropout + Linear as ``1.weight``/``1.bias``) as a DecisionHead."""
    state = load_official_state_dict(path)
    unknown = sorted(set(state) - {"1.weight", "1.bias"})
    missing = sorted({"1.weight", "1.bias"} - set(state))
    if unknown or missing:
        raise InputError(
            f"{str(path)!r} is not a GILL decision model",
            [f"unknown: {k}" for k in unknown] + [f"missing: {k}" for k in missing],
        )
    width = state["1.weight"].shape[-1]
    if state["1.weight"].ndim != 2 or width not in (dims.lm_hidden, dims.lm_hidden + 1):
        raise InputError(
            f"{str(path)!r} does not fit the LM",
            [
                f"1.weight {tuple(state['1.weight'].shape)}: expected (2, {dims.lm_hidden}) or "
                f"(2, {dims.lm_hidden + 1}) (paper-era, with the retrieval-score feature)"
            ],
        )
    head = DecisionHead(dims.lm_hidden, with_retrieval_score=width == dims.lm_hidden + 1)
    weights = {"linear.weight": state["1.weight"].float(), "linear.bias": state["1.bias"].float()}
    return load_strict(head, weights, str(path))  # type: ignore[return-value]


# -- the import ---------------------------------------------------------------------------------------------------


def _img_tokens(config: GILLConfig) -> ImgTokens:
    """[IMG] ids in our tokenizer when the LM's tokenizer is on disk; else strings only."""

    strings = img_token_strings(config.adapters.num_img_tokens)
    folder, _ = locate(config.backbones.lm)
    if folder is None:
        return ImgTokens(strings=strings, ids=())
    try:
        return add_img_tokens(AutoTokenizer.from_pretrained(folder, **hub_kwargs()), config.adapters.num_img_tokens)
    except (OSError, ValueError) as err:
        logger.warning("could not load the tokenizer from %s (%s); [IMG] ids left unknown", folder, err)
        return ImgTokens(strings=strings, ids=())


def _convert_adapters(
    src: Path, args: dict[str, Any], overrides: dict[str, str | None]
) -> tuple[GILLConfig, GILLAdapters, DerivedDims]:

    state = convert_state_dict(load_official_state_dict(src / CKPT_FILE), int(args.get("num_tokens", 0)))
    config = config_from_model_args(args, mapper=infer_mapper_config(state), **overrides)
    dims = derive_dims(config)
    if "gen_emb_dim" in args and args["gen_emb_dim"] != dims.sd_text_dim:
        raise InputError(
            "model_args.json does not fit the SD pipeline",
            [f"gen_emb_dim {args['gen_emb_dim']} != {config.backbones.sd.id} text width {dims.sd_text_dim}"],
        )
    hint = "expected the keys of official §7.2 (official names are listed as unexpected when unknown)"
    return config, adapters_from_state_dict(config, dims, state, str(src / CKPT_FILE), hint=hint), dims


def import_official(
    src_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    lm: str | None = None,
    vision: str | None = None,
    sd: str | None = None,
) -> ImportReport:
    """Convert an official GILL release folder into a :mod:`gill.checkpoint` folder.

    Args:
        src_dir: folder with ``model_args.json``, ``pretrained_ckpt.pth.tar`` and optionally
            ``decision_model.pth.tar``.
        out_dir: where to write our checkpoint (replaced atomically).
        lm, vision, sd: backbone overrides (Hub ids or local folders); default: the release's / SD v1.5.
    Returns:
        An :class:`ImportReport`.
    """
    src = Path(src_dir)
    args = read_model_args(src / MODEL_ARGS_FILE)
    config, adapters, dims = _convert_adapters(src, args, {"lm": lm, "vision": vision, "sd": sd})
    decision = load_official_decision_head(src / DECISION_FILE, dims) if (src / DECISION_FILE).is_file() else None
    tokens = _img_tokens(config)
    files = {
        name: sha256_file(src / name) for name in (MODEL_ARGS_FILE, CKPT_FILE, DECISION_FILE) if (src / name).is_file()
    }
    extra = {
        "imported_from": {
            "source": str(src.resolve()),
            "sha256": files,
            "model_args": args,
            "official_img_token_ids": args.get("gen_token_idx"),
        }
    }
    save_pretrained(out_dir, adapters, config, tokens, extra, decision_head=decision)
    head = None
    if decision is not None:
        score = " (with retrieval score)" if decision.with_retrieval_score else ""
        head = f"{decision.linear.in_features} -> 2{score}"
    return ImportReport(
        out_dir=Path(out_dir),
        config=config,
        decision_head=head,
        img_token_ids=tokens.ids,
        num_parameters=sum(p.numel() for p in adapters.parameters()),
    )


def official_state_dict(adapters: GILLAdapters) -> dict[str, torch.Tensor]:
    """Our adapters under the official key names (the inverse of :func:`convert_state_dict`), e.g. for export."""
    kind = adapters.config.mapper.kind
    if kind != "gill_mapper":
        raise ConfigError("only GILLMapper adapters have official key names", [f"mapper kind: {kind}"])
    inverse_names = {ours: official for official, ours in KEY_NAMES.items()}
    out = {}
    for key, value in adapters.state_dict().items():
        name = inverse_names.get(key)
        if name is None:
            name = next(off + key[len(ours) :] for off, ours in KEY_PREFIXES if key.startswith(ours))
        out[name] = value
    return out
