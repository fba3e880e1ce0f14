"""Stage ``world``: the synthetic shapes world, the embedded default data (CC3M, VIST and VisDial formats)."""

from __future__ import annotations

from pathlib import Path

from flows.workdir import Workdir
from gill.synth import SynthConfig, WorldSummary, synthesize_world


def run(workdir: Workdir, options: SynthConfig, progress: bool = False) -> WorldSummary:
    """Build (or reuse, when its manifest matches ``options``) the world under ``<workdir>/world``."""
    return build(workdir.world, options, progress=progress)


def build(folder: Path, options: SynthConfig, progress: bool = False) -> WorldSummary:
    """The world in any ``folder`` (``gill data synth --out``)."""
    return synthesize_world(folder, options, progress=progress)
