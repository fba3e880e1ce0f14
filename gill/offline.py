"""gill's offline-friendly Hugging Face defaults: whether Hub downloads are allowed, and the front ends' process
defaults (:func:`configure_environment`).

Standard library only, so a front end sets the defaults before anything imports ``huggingface_hub`` (which reads
some of them on import) and a command that never touches a model does not import the model stack for them. The
rest of the Hub rules (local resolution, availability checks) are in :mod:`gill.hub`.
"""

from __future__ import annotations

import os
import sys

_TRUE = {"1", "true", "yes", "on"}


def downloads_allowed() -> bool:
    """True when the user has opted in to Hub downloads (``GILL_ALLOW_DOWNLOADS=1`` or ``HF_HUB_OFFLINE=0``)."""
    if os.environ.get("GILL_ALLOW_DOWNLOADS", "").lower() in _TRUE:
        return True
    explicit = os.environ.get("HF_HUB_OFFLINE")
    return explicit is not None and explicit.lower() not in _TRUE


def configure_environment() -> None:
    """Set offline-friendly defaults for the Hugging Face libraries (never overriding what the user set).

    Called by the front ends (the ``gill`` command, the flows' entry point) for their own process; importing the
    library never calls it (a host program's own Hub use stays as it configured it).
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if downloads_allowed():
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # imported before gill: its module-level flag is already frozen
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
