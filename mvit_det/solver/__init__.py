"""Optimisation helpers: layer-wise learning-rate decay of a backbone, full-model gradient
clipping."""

from .grad_clip import AdamWFullModelClip, clip_full_model_gradients
from .lr_decay import LayerDecay, MViTLayerDecay

__all__ = ["AdamWFullModelClip", "LayerDecay", "MViTLayerDecay", "clip_full_model_gradients"]
