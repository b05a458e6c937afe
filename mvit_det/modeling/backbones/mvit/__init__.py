"""The MViT family: MViTv2 with Hybrid Window Attention (docs/architecture.md).

``model`` (the backbone and its block layout), ``attention`` and ``cores`` (pooling attention and
its explicit and fused cores), ``geometry`` (windows, position tables), ``checks`` (argument
validation), ``presets`` (sizes T-H), ``weights`` (official, timm and Detectron2 checkpoints),
``layer_decay`` (layers for layer-wise learning-rate decay). Importing it registers the family.
"""

from ..registry import BackboneFamily, register_family
from .attention import MultiScaleAttention
from .checks import check_mvit_args
from .cores import ATTN_IMPLS, MVIT_CORES, resolve_attn_impl
from .layer_decay import MViTLayers
from .model import BlockSpec, MViT, MultiScaleBlock, mvit_block_layout
from .presets import MVIT_PRESETS, mvit_preset
from .weights import MVIT_PRETRAINED, adapt_state_dict, describe_backbone, timm_to_flat

__all__ = [
    "ATTN_IMPLS",
    "FAMILY",
    "MVIT_CORES",
    "MVIT_PRESETS",
    "MVIT_PRETRAINED",
    "BlockSpec",
    "MViT",
    "MViTLayers",
    "MultiScaleAttention",
    "MultiScaleBlock",
    "adapt_state_dict",
    "check_mvit_args",
    "describe_backbone",
    "mvit_block_layout",
    "mvit_preset",
    "resolve_attn_impl",
    "timm_to_flat",
]

FAMILY = register_family(
    BackboneFamily(
        name="mvit",
        title="MViT",
        backbone=MViT,
        presets=MVIT_PRESETS,
        preset=mvit_preset,
        size_names=tuple(MVIT_PRESETS),
        check_args=check_mvit_args,
        attention=MVIT_CORES,
        adapt_weights=adapt_state_dict,
        yacs_node="MVIT",
        yacs_default_size="B",
        yacs_builders={"build_mvit_fpn_backbone": "fpn"},
        layer_rule=MViTLayers,
        scriptable=True,
        model_prefix="mvitv2",
        pretrained=MVIT_PRETRAINED,
    )
)
