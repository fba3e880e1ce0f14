"""Tiny random-initialised models of the paper's backbone classes, for tests and the demo."""

from gill.zoo.tiny import ZOO_VERSION, ZooManifest, build_tiny_zoo, ensure_tiny_zoo

__all__ = ["ZOO_VERSION", "ZooManifest", "build_tiny_zoo", "ensure_tiny_zoo"]
