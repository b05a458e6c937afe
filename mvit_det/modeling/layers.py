"""Layers and helpers that every backbone family shares: the MLP, the initialisation, input
checks, and the small shape helpers that keep code traceable and exportable."""

from typing import List, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "Mlp",
    "ceil_div",
    "check_images",
    "init_transformer_weights",
    "is_tracing_or_exporting",
    "unflatten_dim",
    "zero_pad_end",
]


class Mlp(nn.Module):
    """Two-layer MLP: Linear -> activation -> Linear."""

    def __init__(
        self, in_features: int, hidden_features: int, act_layer: Type[nn.Module] = nn.GELU
    ) -> None:
        """
        Args:
            in_features: input and output channels.
            hidden_features: hidden channels.
            act_layer: activation.
        """
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def init_transformer_weights(m: nn.Module) -> None:
    """
    The initialisation of the backbones' transformer layers, for ``module.apply``: linear
    weights from a truncated normal with std 0.02 and zero biases, LayerNorms as the identity.
    """
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def ceil_div(a: int, b: int) -> int:
    """
    ``ceil(a / b)`` for a >= 0, b > 0, with floor divisions of non-negative numbers only.

    ``-(-a // b)`` gives the same for Python ints, but exporters may translate the floor division
    of a negative size into a truncating one (the legacy ONNX exporter does), which is off by one.
    """
    return (a + b - 1) // b


def is_tracing_or_exporting() -> bool:
    """
    True under ``torch.jit.trace`` (also used by the legacy ONNX exporter), ``torch.export`` (the
    dynamo ONNX exporter) and in ``torch.jit.script``: shapes are then symbolic, so the code must
    not branch on them in Python.
    """
    if torch.jit.is_scripting():
        return True
    return torch.jit.is_tracing() or _is_exporting()


@torch.jit.unused
def _is_exporting() -> bool:
    return torch.compiler.is_exporting()


def unflatten_dim(x: torch.Tensor, dim: int, sizes: List[int]) -> torch.Tensor:
    """
    ``x.unflatten(dim, sizes)`` in a way that exports at dynamic sizes: the legacy ONNX exporter
    gives ``unflatten`` a target shape its shape inference cannot follow, then takes the traced
    example's sizes as fixed (the graph serves that size only). Under tracing/export this is a
    ``reshape`` to the sizes of every dimension; in eager (and compiled) code ``unflatten``.

    Args:
        x: any tensor.
        dim: the dimension to split (may be negative).
        sizes: its new sizes (one may be -1; ints or traced sizes).

    Returns:
        the view (or copy) of ``x`` with ``dim`` split into ``sizes``.
    """
    if not is_tracing_or_exporting():
        return x.unflatten(dim, sizes)
    d = dim % x.dim()
    shape = list(x.shape)
    return x.reshape(shape[:d] + list(sizes) + shape[d + 1 :])


def zero_pad_end(x: torch.Tensor, dim: int, amount: int) -> torch.Tensor:
    """
    Appends ``amount`` zeros to ``x`` along ``dim`` in a way that traces: a traced ``F.pad``
    freezes its pad widths, so under tracing/export the zeros are built with the traced size and
    concatenated.

    Args:
        x: any tensor.
        dim: the dimension to extend.
        amount: number of zeros to append (>= 0; an int, or a traced size).

    Returns:
        ``x`` extended to ``x.shape[dim] + amount`` along ``dim``.
    """
    if not is_tracing_or_exporting():
        return F.pad(x, [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, amount])
    shape = list(x.shape)
    shape[dim] = amount
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


@torch.jit.unused
def check_images(x: torch.Tensor, weight: torch.Tensor, name: str) -> None:
    """
    Checks a backbone input: a floating-point (N, C, H, W) tensor with the channels and dtype of
    the first conv (``weight``), non-empty.

    Args:
        x: the input.
        weight: the weight of the backbone's first conv, (out, C, kh, kw).
        name: the backbone's name for messages.

    Raises:
        ValueError: naming what is wrong and how to fix it.
    """
    if is_tracing_or_exporting():
        return  # shapes are symbolic: a check would be frozen into the graph as a constant
    in_chans = weight.shape[1]
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != in_chans:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"{name} expects images of shape (N, {in_chans}, H, W), got {shape}; "
            "batch images into one NCHW tensor (e.g. ImageList.from_tensors)"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"{name} expects floating-point images, got dtype {x.dtype}; convert with "
            "x.float() and normalise the pixel values"
        )
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name} got an empty image of shape {tuple(x.shape)}")
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(
            f"{name} got images of dtype {x.dtype} but its weights are {weight.dtype}; convert "
            f"the images (x.to({weight.dtype})) or the model, or run under torch.autocast"
        )
