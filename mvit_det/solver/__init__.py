"""Optimisation helpers: layer-wise learning-rate decay for MViT."""

from .lr_decay import MViTLayerDecay

__all__ = ["MViTLayerDecay"]
