"""torch.hub entry points of mvit_det: one per model of ``mvit_det.model_zoo.list_models()``.

::

    import torch

    backbone = torch.hub.load("path/to/mvit_det", "mvitv2_t", source="local")  # random init
    backbone = torch.hub.load("path/to/mvit_det", "mvitv2_b", source="local", pretrained=True)
    detector = torch.hub.load(
        "path/to/mvit_det", "mask_rcnn_mvitv2_t", source="local", weights="model_final.pkl"
    )

Backbones: every preset of every registered family (``mvitv2_t`` .. ``mvitv2_h``, ``vil_t`` ..
``vil_bw``). Detectors: one per shipped config, named by its file name (``mask_rcnn_mvitv2_t``,
``cascade_mask_rcnn_mvitv2_b``, ``mask_rcnn_vil_s_1x``, ...). Each entry point is
``mvit_det.model_zoo.get`` of its name: ``pretrained``, ``weights`` (path or URL),
``device``, ``trust_checkpoint``, and backbone arguments as keywords or detector config
overrides as ``opts``; the entry point's docstring says which weights ``pretrained=True``
loads. ``torch.hub.list`` and ``torch.hub.help`` read GitHub repositories only: for a local
copy, ``mvit_det.model_zoo.list_models()`` and ``mvit_det.model_zoo.describe(name)``.
"""

import typing as _typing

import torch.nn as _nn

from mvit_det import model_zoo as _model_zoo

# What torch.hub checks before it imports this file.
dependencies = ["torch", "torchvision", "detectron2", "fvcore", "omegaconf", "numpy", "cv2", "PIL"]


# Only the entry points are public names here (torch.hub lists every public callable).
def _entry_point(name: str) -> _typing.Callable[..., _nn.Module]:
    """The entry point of one model: ``mvit_det.model_zoo.get(name, ...)``."""

    def entry(
        pretrained: bool = False,
        weights: _typing.Optional[str] = None,
        device: str = "cpu",
        trust_checkpoint: bool = False,
        **kwargs: _typing.Any,
    ) -> _nn.Module:
        return _model_zoo.get(
            name,
            weights,
            device,
            pretrained=pretrained,
            trust_checkpoint=trust_checkpoint,
            **kwargs,
        )

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = _model_zoo.describe(name)
    return entry


for _name in _model_zoo.list_models():
    globals()[_name] = _entry_point(_name)
