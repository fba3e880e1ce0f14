"""Read ``data_manifests/datasets.json`` (sources, formats, licences) and verify the files shipped with gill."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import data_manifests
from gill.utils.io import sha256_file


def manifests_dir() -> Path:
    """The installed ``data_manifests`` folder."""

    return Path(data_manifests.__file__).parent


def dataset_manifest() -> dict[str, Any]:
    """Every dataset gill knows, keyed by name."""
    return json.loads((manifests_dir() / "datasets.json").read_text(encoding="utf-8"))


def shipped_file(dataset: str, name: str) -> Path:
    """Path of a file shipped with gill, e.g. ``shipped_file("partiprompts_votes", "alignment")``."""
    return manifests_dir() / dataset_manifest()[dataset]["files"][name]["path"]


def verify_shipped_files() -> list[str]:
    """Problems with the shipped files (missing, or sha256 not as recorded); empty when all are intact."""
    problems = []
    for dataset, entry in dataset_manifest().items():
        if not entry.get("shipped"):
            continue
        for name, spec in entry["files"].items():
            path = manifests_dir() / spec["path"]
            if not path.is_file():
                problems.append(f"{dataset}.{name}: {path} is missing")
            elif sha256_file(path) != spec["sha256"]:
                problems.append(f"{dataset}.{name}: {path} does not match its recorded sha256")
    return problems
