"""Optimisation helpers: layer-wise learning-rate decay for MViT, full-model gradient clipping."""

from .grad_clip import AdamWFullModelClip, clip_full_model_gradients
from .lr_decay import MViTLayerDecay

__all__ = ["AdamWFullModelClip", "MViTLayerDecay", "clip_full_model_gradients"]
