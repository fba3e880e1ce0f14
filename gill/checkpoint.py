"""Our checkpoint format: a folder with ``config.json`` and the *trainable* weights only (style.md item 6).

Layout written by :func:`save_pretrained` and read back by :func:`load_adapters`::

    <dir>/config.json            format + version, the GILLConfig, backbone ids and revisions, the [IMG]
                                 tokenizer additions, provenance (gill version, git sha, time), extra
    <dir>/adapters.safetensors   GILLAdapters state dict (input_proj, img_embeddings, retrieval, mapper)
    <dir>/decision.safetensors   optional DecisionHead state dict

The frozen backbones are never stored: they are named (id + revision) and loaded by :mod:`gill.factory`. The
names hold no path that ties a checkpoint to one machine: the tiny zoo's models are ``gill-tiny/<component>``
(resolved through the cache, :func:`gill.hub.resolve_model_id`), and a backbone folder inside the work folder is
recorded relative to the checkpoint (:meth:`~gill.config.GILLConfig.with_backbones_relative_to`), so a work folder
copied to another machine or user loads there.
Loading is strict: every missing, unexpected and mis-shaped tensor is listed in one
:class:`~gill.errors.InputError`. :func:`check_backbones` tells whether a checkpoint fits a config's backbones.

``config.json["files_sha256"]`` records the sha256 of every weights file; loading verifies them, so a damaged
copy is reported as "checkpoint corrupted" naming the file (not as a mismatch further on). Checkpoints written
before the record existed load without the check.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import gill
from gill.adapters import DecisionHead, GILLAdapters, build_adapters
from gill.config import DerivedDims, GILLConfig
from gill.errors import ConfigError, InputError
from gill.factory import derive_dims
from gill.hub import canonical_model_id
from gill.tokenization import ImgTokens
from gill.utils.io import atomic_directory, atomic_write_json, sha256_file

logger = logging.getLogger(__name__)

FORMAT = "gill-adapters"
"""Value of ``config.json["format"]``."""
FORMAT_VERSION = 1
"""Bump when the layout changes; loaders refuse newer versions."""
CONFIG_FILE = "config.json"
ADAPTERS_FILE = "adapters.safetensors"
DECISION_FILE = "decision.safetensors"
CHECKSUMS_KEY = "files_sha256"
"""Key of ``config.json`` mapping each weights file's name to its sha256."""
CHECKED_ROLES = ("lm", "vision", "sd")
"""Backbones the adapters' weights depend on (the metric CLIP does not)."""


@dataclass(kw_only=True)
class LoadedCheckpoint:
    """What :func:`load_adapters` returns."""

    config: GILLConfig
    """The configuration the checkpoint was saved with."""
    adapters: GILLAdapters
    """The trained adapters (on CPU, dtype as stored)."""
    img_tokens: ImgTokens
    """The [IMG] strings and the ids they had at save time (empty ids: unknown, e.g. an import without tokenizer)."""
    decision_head: DecisionHead | None = None
    """The decision head, when the checkpoint has one."""
    record: dict[str, Any] = field(default_factory=dict)
    """The whole ``config.json`` (provenance, extra)."""


# -- save ---------------------------------------------------------------------------------------------------------


def source_git_sha() -> str | None:
    """The commit of the gill source tree, or None without git or outside a repository."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = proc.stdout.strip()
    return sha if proc.returncode == 0 and sha else None


def _tensors(module: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(device="cpu", dtype=dtype).contiguous() for k, v in module.state_dict().items()}


def _record(
    config: GILLConfig,
    img_tokens: ImgTokens,
    decision_head: DecisionHead | None,
    dtype: torch.dtype,
    num_parameters: int,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    decision = None
    if decision_head is not None:
        decision = {
            "file": DECISION_FILE,
            "with_retrieval_score": decision_head.with_retrieval_score,
            "in_features": decision_head.linear.in_features,
        }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "backbones": {role: {"id": ref.id, "revision": ref.revision} for role, ref in config.backbones.roles().items()},
        "img_tokens": {"strings": list(img_tokens.strings), "ids": list(img_tokens.ids)},
        "weights": {
            "adapters": ADAPTERS_FILE,
            "dtype": str(dtype).removeprefix("torch."),
            "num_parameters": num_parameters,
            "decision_head": decision,
        },
        "provenance": {
            "gill_version": gill.__version__,
            "git_sha": source_git_sha(),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
        "extra": extra or {},
    }


def save_pretrained(
    out_dir: str | os.PathLike[str],
    adapters: GILLAdapters,
    config: GILLConfig,
    img_tokens: ImgTokens,
    extra: dict[str, Any] | None = None,
    *,
    decision_head: DecisionHead | None = None,
    dtype: torch.dtype = torch.float32,
    portable_root: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the adapters (and optionally a decision head) of ``config`` to ``out_dir`` atomically.

    Args:
        out_dir: the checkpoint folder (replaced if it exists).
        adapters: the trained adapters; they must have been built from ``config.adapters``.
        config: the configuration (backbones and adapter sizes) they belong to.
        img_tokens: the [IMG] tokens as added to the tokenizer.
        extra: JSON-serialisable additions (training step, data-manifest hash, ...).
        decision_head: optional retrieve-or-generate classifier.
        dtype: storage dtype (float32 by default).
        portable_root: a folder holding the checkpoint (e.g. the work folder): backbone folders inside it are
            recorded relative to the checkpoint (read back by :func:`load_adapters`), so it can be moved as a whole.
    Returns:
        The checkpoint folder.
    """

    if getattr(adapters, "config", config.adapters) != config.adapters:
        raise InputError(
            "the adapters were built from a different adapter config than the one being saved",
            [f"adapters: {adapters.config}", f"config.adapters: {config.adapters}"],
        )
    tensors = _tensors(adapters, dtype)
    if portable_root is not None:
        config = config.with_backbones_relative_to(out_dir, within=portable_root)
    record = _record(config, img_tokens, decision_head, dtype, sum(t.numel() for t in tensors.values()), extra)
    with atomic_directory(out_dir) as tmp:
        save_file(tensors, str(tmp / ADAPTERS_FILE), metadata={"format": FORMAT})
        if decision_head is not None:
            save_file(_tensors(decision_head, dtype), str(tmp / DECISION_FILE), metadata={"format": FORMAT})
        atomic_write_json(tmp / CONFIG_FILE, {**record, CHECKSUMS_KEY: _checksums(tmp, record)})
    logger.info("saved %d adapter tensors to %s", len(tensors), out_dir)
    return Path(out_dir)


def _weight_files(record: dict[str, Any]) -> list[str]:
    """The weights files a checkpoint record names (adapters, and the decision head when there is one)."""
    decision = record["weights"].get("decision_head")
    return [record["weights"]["adapters"], *([decision["file"]] if decision else [])]


def _checksums(ckpt_dir: Path, record: dict[str, Any]) -> dict[str, str]:
    return {name: sha256_file(ckpt_dir / name) for name in _weight_files(record)}


def record_checksums(ckpt_dir: str | os.PathLike[str]) -> Path:
    """Re-record the sha256 of a checkpoint's weights files in its ``config.json`` (after replacing a file on
    purpose, e.g. with a byte-identical copy); returns the config path."""
    ckpt_dir = Path(ckpt_dir)
    record = _read_record(ckpt_dir)
    return atomic_write_json(ckpt_dir / CONFIG_FILE, {**record, CHECKSUMS_KEY: _checksums(ckpt_dir, record)})


def verify_checksum(
    ckpt_dir: str | os.PathLike[str], name: str, actual: str | None = None, record: dict[str, Any] | None = None
) -> None:
    """Raise "checkpoint corrupted" when file ``name`` does not have the sha256 its ``config.json`` records.

    Args:
        actual: the file's sha256 when the caller has it (else it is computed).
        record: the parsed ``config.json`` (else it is read; a folder without one is not checked).
    """
    ckpt_dir = Path(ckpt_dir)
    if record is None:
        if not (ckpt_dir / CONFIG_FILE).is_file():
            return
        record = _read_record(ckpt_dir)
    expected = (record.get(CHECKSUMS_KEY) or {}).get(name)
    if expected is None:  # written before checksums were recorded
        return
    path = ckpt_dir / name
    if not path.is_file():
        raise InputError(
            f"checkpoint incomplete: {str(path)!r} is missing",
            [f"{CONFIG_FILE} lists {name}"],
            hint="copy the whole checkpoint folder again",
        )
    actual = actual or sha256_file(path)
    if actual != expected:
        raise InputError(
            f"checkpoint corrupted: {str(path)!r} does not match its recorded checksum",
            [f"{name}: sha256 {actual[:16]}..., {CONFIG_FILE} records {expected[:16]}..."],
            hint="the file changed after it was saved (a damaged copy or disk): copy the checkpoint again or "
            "re-export it from its run",
        )


# -- strict loading -----------------------------------------------------------------------------------------------


def _shape(shape: Any) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def state_dict_problems(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Every missing, unexpected and mis-shaped key of ``state`` against ``module`` (empty when it fits)."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    problems = [f"missing: {k} {_shape(expected[k])}" for k in sorted(expected.keys() - state.keys())]
    problems += [f"unexpected: {k} {_shape(state[k].shape)}" for k in sorted(state.keys() - expected.keys())]
    problems += [
        f"shape mismatch: {k}: checkpoint {_shape(state[k].shape)}, expected {_shape(expected[k])}"
        for k in sorted(expected.keys() & state.keys())
        if tuple(state[k].shape) != expected[k]
    ]
    return problems


SAME_RUN_HINT = "the weights and config.json must come from the same run"


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str, hint: str = SAME_RUN_HINT) -> nn.Module:
    """Load ``state`` into ``module`` (assigning the tensors) or raise one InputError listing every problem."""
    problems = state_dict_problems(module, state)
    if problems:
        raise InputError(f"{source} does not fit the model of its config", problems, hint=hint)
    module.load_state_dict(state, strict=True, assign=True)
    return module


def adapters_from_state_dict(
    config: GILLConfig,
    dims: DerivedDims,
    state: dict[str, torch.Tensor],
    source: str = "state dict",
    hint: str = SAME_RUN_HINT,
) -> GILLAdapters:
    """Build ``config``'s adapters around ``state`` (no random init: the modules are made on the meta device)."""
    with torch.device("meta"):
        adapters = build_adapters(config, dims)
    return load_strict(adapters, state, source, hint)  # type: ignore[return-value]


def _read_record(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / CONFIG_FILE
    if not path.is_file():
        raise InputError(
            f"{str(ckpt_dir)!r} is not a gill checkpoint",
            [f"{CONFIG_FILE} not found"],
            hint="pass a folder written by save_pretrained or `gill import-official`",
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{str(path)!r} is not valid JSON", [str(err)]) from err
    if record.get("format") != FORMAT or not isinstance(record.get("format_version"), int):
        raise InputError(f"{str(path)!r} is not a {FORMAT} config", [f"format: {record.get('format')!r}"])
    if record["format_version"] > FORMAT_VERSION:
        raise InputError(
            f"{str(path)!r} has format version {record['format_version']}",
            [f"this gill reads versions <= {FORMAT_VERSION}"],
            hint="upgrade gill",
        )
    return record


def read_checkpoint_config(ckpt_dir: str | os.PathLike[str]) -> GILLConfig:
    """The validated config of a checkpoint, without reading its weights."""
    return _config_of(_read_record(Path(ckpt_dir)), Path(ckpt_dir))


def _config_of(record: dict[str, Any], ckpt_dir: Path) -> GILLConfig:
    """The checkpoint's config, with backbone paths recorded relative to the checkpoint resolved against it."""
    try:
        return GILLConfig.from_dict(record["config"]).with_backbones_resolved_from(ckpt_dir)
    except ConfigError as err:
        raise InputError(f"invalid config in {str(ckpt_dir / CONFIG_FILE)!r}", err.problems) from err


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; an empty, truncated or garbled file is an :class:`InputError` naming it
    (checkpoints written before checksums were recorded reach this point unverified)."""

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise InputError(
            f"checkpoint corrupted: {str(path)!r} cannot be read as safetensors",
            [str(err).splitlines()[0][:200]],
            hint="copy the checkpoint again, or export it again from its run",
        ) from err


def _load_decision_head(ckpt_dir: Path, info: dict[str, Any]) -> DecisionHead:
    head = DecisionHead(info["in_features"] - int(info["with_retrieval_score"]), info["with_retrieval_score"])
    return load_strict(head, _read_weights(ckpt_dir / info["file"]), str(ckpt_dir / info["file"]))  # type: ignore


def load_adapters(
    ckpt_dir: str | os.PathLike[str], dims: DerivedDims | None = None, *, config: GILLConfig | None = None
) -> LoadedCheckpoint:
    """Read a checkpoint written by :func:`save_pretrained`, strictly.

    Args:
        ckpt_dir: the checkpoint folder.
        dims: backbone widths (default: :func:`gill.factory.derive_dims` of the checkpoint's config).
        config: when given, the checkpoint's backbones must equal this config's (:func:`check_backbones`).
    Raises:
        InputError: not a checkpoint, a weights file that does not match its recorded sha256 ("checkpoint
            corrupted"), a mismatching backbone, or missing/unexpected/mis-shaped tensors.
    """
    ckpt_dir = Path(ckpt_dir)
    record = _read_record(ckpt_dir)
    for name in _weight_files(record):
        verify_checksum(ckpt_dir, name, record=record)
    ckpt_config = _config_of(record, ckpt_dir)
    if config is not None:
        check_backbones(ckpt_config, config)
    if dims is None:
        dims = derive_dims(ckpt_config)
    source = str(ckpt_dir / record["weights"]["adapters"])
    adapters = adapters_from_state_dict(ckpt_config, dims, _read_weights(Path(source)), source)
    decision = record["weights"].get("decision_head")
    tokens = record["img_tokens"]
    return LoadedCheckpoint(
        config=ckpt_config,
        adapters=adapters,
        img_tokens=ImgTokens(strings=tuple(tokens["strings"]), ids=tuple(tokens["ids"])),
        decision_head=_load_decision_head(ckpt_dir, decision) if decision else None,
        record=record,
    )


def check_backbones(ckpt_config: GILLConfig, config: GILLConfig) -> None:
    """Raise InputError when the checkpoint's LM, vision or SD backbone differs from ``config``'s (id or revision).

    Ids are compared in their canonical form (:func:`gill.hub.canonical_model_id`): a tiny zoo path recorded by
    an earlier gill equals the ``gill-tiny/...`` id that names the same model now.
    """

    ours, theirs = config.backbones.roles(), ckpt_config.backbones.roles()
    problems = [
        f"{role}: the checkpoint was trained with {theirs[role].id}@{theirs[role].revision}, "
        f"the config uses {ours[role].id}@{ours[role].revision}"
        for role in CHECKED_ROLES
        if (canonical_model_id(theirs[role].id), theirs[role].revision)
        != (canonical_model_id(ours[role].id), ours[role].revision)
    ]
    if problems:
        raise InputError(
            "the checkpoint's backbones differ from the config's",
            problems,
            hint="adapters fit only the backbones they were trained on",
        )
