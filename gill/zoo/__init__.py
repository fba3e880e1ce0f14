"""The tiny model zoo: small models of the paper's backbone classes (OPT, CLIP, Stable Diffusion), pre-trained on
the synthetic shapes world and shipped in ``data_manifests/tiny_zoo`` (the ``tiny`` preset; docs/world-sd.md)."""

from gill.zoo.tiny import ZOO_VERSION, ZooManifest, build_tiny_zoo, ensure_tiny_zoo

__all__ = ["ZOO_VERSION", "ZooManifest", "build_tiny_zoo", "ensure_tiny_zoo"]
