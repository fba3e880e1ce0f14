"""Where backbones come from: offline defaults, local resolution and availability checks.

GILL's backbones are large (OPT-6.7B is 13 GB in fp16), and the machines this project runs on may have no
network. The rules here:

* Downloads are **off** unless the user turns them on (``GILL_ALLOW_DOWNLOADS=1``, or by setting
  ``HF_HUB_OFFLINE=0`` themselves). Off means ``HF_HUB_OFFLINE=1`` is set, so a missing model fails in
  milliseconds instead of after ~20 s of Hub retries (:mod:`gill.offline`: the switch and the front ends'
  process defaults, which import nothing heavy).
* A :class:`~gill.config.ModelRef` resolves to a local directory: the tiny zoo in gill's cache for the symbolic
  ``gill-tiny/<component>`` ids (:func:`resolve_model_id`, the one place they are resolved), the path itself when
  it is one, otherwise the snapshot in the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``).
* :func:`check_backbones` reports, per role, whether the model is complete on disk;
  :func:`require_backbones` raises one :class:`~gill.errors.MissingWeightsError` naming every missing model
  id and how to get it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from gill.config import BackbonesConfig, ModelRef, looks_like_path
from gill.errors import GillError, MissingWeightsError
from gill.offline import downloads_allowed
from gill.presets import legacy_tiny_component, tiny_component, tiny_model_id, tiny_zoo_dir
from gill.zoo import ensure_tiny_zoo

logger = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "*.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")  # transformers<5 / >=5 layouts

REQUIRED_LAYOUT: dict[str, tuple[str, ...]] = {
    # role -> sub-folders that must each hold a config and weights ("" = the model folder itself)
    "lm": ("",),
    "vision": ("",),
    "clip_metric": ("",),
    "sd": ("unet", "vae", "text_encoder"),
}


def hub_kwargs() -> dict[str, Any]:
    """``from_pretrained`` keywords for gill's own loads: ``local_files_only`` unless downloads are allowed, so the
    library stays offline without touching the process's environment."""
    return {} if downloads_allowed() else {"local_files_only": True}


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache in use (``HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home).expanduser() / "hub"


@dataclass(frozen=True, kw_only=True)
class BackboneStatus:
    """Whether one backbone can be loaded from local disk."""

    role: str
    """Role in :class:`~gill.config.BackbonesConfig` (``lm``, ``vision``, ``sd``, ``clip_metric``)."""
    ref: ModelRef
    """The model asked for."""
    local_dir: Path | None
    """Directory it loads from, when found."""
    problem: str | None
    """Why it cannot be loaded, or None."""

    @property
    def available(self) -> bool:
        """True when the model is complete on disk."""
        return self.problem is None


def resolve_model_id(model_id: str) -> str:
    """What ``from_pretrained`` loads for a backbone id: the one place gill's own ids become local folders.

    * ``gill-tiny/<component>`` (``opt``, ``clip``, ``sd``): that folder of the tiny zoo in this machine's cache
      (:func:`gill.presets.tiny_zoo_dir`), installed there first when the cache lacks it (a checked copy of the
      zoo that ships with gill);
    * a tiny zoo path of the current builder version recorded before the symbolic ids existed
      (``/home/me/.cache/gill/tiny-zoo-v5/opt``): the path when it exists, else the zoo in this machine's cache;
    * anything else (a Hub id, a local folder): unchanged.

    Raises:
        InputError: the tiny zoo is needed but cannot be installed (the shipped weights are damaged).
    """

    component = tiny_component(model_id)
    if component is None:
        component = legacy_tiny_component(model_id)
        if component is None or Path(model_id).expanduser().is_dir():
            return model_id

    zoo = tiny_zoo_dir()
    ensure_tiny_zoo(zoo)
    return str(zoo / component)


def canonical_model_id(model_id: str) -> str:
    """``model_id`` in the form configs record: ``gill-tiny/<component>`` for the tiny zoo's models (also when
    given as a path into a tiny zoo of the current version), else unchanged. Two ids name the same backbone when
    their canonical forms are equal."""

    component = tiny_component(model_id) or legacy_tiny_component(model_id)
    return tiny_model_id(component) if component is not None else model_id


def is_tiny_model_id(model_id: str) -> bool:
    """True for the symbolic ``gill-tiny/<component>`` ids."""

    return tiny_component(model_id) is not None


def locate(ref: ModelRef) -> tuple[Path | None, str | None]:
    """Find ``ref`` on disk: returns ``(directory, None)`` or ``(None, why_not)``. Never touches the network.

    Resolves ``ref.id`` with :func:`resolve_model_id` first (installing the tiny zoo when it names it)."""
    try:
        model_id = resolve_model_id(ref.id)
    except GillError as err:
        return None, "the tiny zoo cannot be installed: " + "; ".join([err.message, *err.problems])
    if looks_like_path(model_id):
        path = Path(model_id).expanduser()
        if path.is_dir():
            return path, None
        return None, f"local path {str(path)!r} does not exist or is not a directory"

    try:
        return Path(snapshot_download(ref.id, revision=ref.revision, local_files_only=True)), None
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None, f"not in the Hugging Face cache at {hub_cache_dir()} (revision {ref.revision!r})"


def _has_weights(folder: Path) -> bool:
    return any(next(folder.glob(pattern), None) is not None for pattern in WEIGHT_PATTERNS)


def missing_parts(role: str, folder: Path) -> list[str]:
    """Files a model folder lacks to be loadable for ``role`` (empty when complete)."""
    missing = []
    for sub in REQUIRED_LAYOUT[role]:
        part = folder / sub if sub else folder
        label = f"{sub}/" if sub else ""
        if not (part / "config.json").is_file():
            missing.append(f"{label}config.json")
        if not _has_weights(part):
            missing.append(f"{label}weights (*.safetensors or pytorch_model*.bin)")
    if role == "sd" and not (folder / "model_index.json").is_file():
        missing.append("model_index.json")
    if role == "lm" and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json or vocab.json)")
    if role in ("vision", "clip_metric") and not any((folder / f).is_file() for f in PROCESSOR_FILES):
        missing.append("preprocessor_config.json (the CLIP image processor)")
    return missing


def check_backbone(role: str, ref: ModelRef) -> BackboneStatus:
    """Report whether the backbone in ``role`` is complete on local disk."""
    folder, why = locate(ref)
    if folder is None:
        return BackboneStatus(role=role, ref=ref, local_dir=None, problem=why)
    missing = missing_parts(role, folder)
    problem = f"incomplete at {folder}: missing {', '.join(missing)}" if missing else None
    return BackboneStatus(role=role, ref=ref, local_dir=folder, problem=problem)


def check_backbones(backbones: BackbonesConfig, roles: Iterable[str] | None = None) -> list[BackboneStatus]:
    """Check every backbone (or the given roles) without loading anything."""
    wanted = list(roles) if roles is not None else list(backbones.roles())
    return [check_backbone(role, ref) for role, ref in backbones.roles().items() if role in wanted]


def require_backbones(
    backbones: BackbonesConfig, roles: Iterable[str] | None = None, preset: str | None = None
) -> dict[str, Path]:
    """Return the local directory of each backbone, or raise one error naming every missing model."""
    statuses = check_backbones(backbones, roles)
    missing = [s for s in statuses if not s.available]
    if missing:
        raise missing_weights_error(missing, preset)
    return {s.role: s.local_dir for s in statuses if s.local_dir is not None}


def missing_weights_error(missing: list[BackboneStatus], preset: str | None) -> MissingWeightsError:
    """Build the one error that names each missing model id once, with the roles that need it."""
    by_id: dict[str, list[BackboneStatus]] = {}
    for status in missing:
        by_id.setdefault(status.ref.id, []).append(status)
    problems = [
        f"{ref_id} (needed as {', '.join(s.role for s in group)}): {group[0].problem}"
        for ref_id, group in by_id.items()
    ]
    hub_ids = [i for i, g in by_id.items() if not g[0].ref.is_local_path and not is_tiny_model_id(i)]
    where = f" for preset {preset!r}" if preset else ""
    mode = "" if downloads_allowed() else " Downloads are off (HF_HUB_OFFLINE=1)."
    hint_lines = ["How to fix (any one):"]
    if hub_ids:
        hint_lines.append(
            "  1. on a machine with network, download them into a Hugging Face cache: "
            + "; ".join(f"`hf download {i}`" for i in hub_ids)
            + ", then copy that cache here and point HF_HOME (or HF_HUB_CACHE) at it;"
        )
        hint_lines.append("  2. or allow downloads on this machine: GILL_ALLOW_DOWNLOADS=1;")
    hint_lines.append(
        "  3. or pass local folders saved with save_pretrained: --lm DIR --vision DIR --sd DIR --clip-metric DIR "
        "(or backbones.<role>.id in a --config JSON);"
    )
    hint_lines.append("  4. or run on the built-in tiny models: --preset tiny.")
    return MissingWeightsError(
        f"Missing model weights{where}.{mode} Checked {hub_cache_dir()}", problems, "\n".join(hint_lines)
    )
