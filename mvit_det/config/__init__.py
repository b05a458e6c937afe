"""Config helpers for yacs-config (``get_cfg()``) users."""

from .defaults import add_mvit_config, apply_mvit_preset

__all__ = ["add_mvit_config", "apply_mvit_preset"]
