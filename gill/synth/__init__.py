"""Deterministic synthetic "shapes world" written in the real file formats of CC3M, VIST and VisDial.

Images of simple coloured shapes on plain or patterned backgrounds, with captions (CC3M TSV),
five-image stories whose later sentences refer back to earlier ones (VIST SIS JSON) and
ten-round truthful dialogs (VisDial 1.0 JSON). Only Pillow, numpy and the standard library are used.
"""

from gill.synth.text import caption_corpus
from gill.synth.world import SynthConfig, WorldSummary, synthesize_world

__all__ = ["SynthConfig", "WorldSummary", "caption_corpus", "synthesize_world"]
