"""MViTv2 backbone with Hybrid Window Attention for Detectron2."""

from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Type

import torch
import torch.nn as nn
from detectron2.modeling.backbone import Backbone
from timm.layers import DropPath, to_2tuple
from torch.utils.checkpoint import checkpoint

from ...layers import Mlp, check_images, init_transformer_weights
from .attention import MultiScaleAttention
from .checks import check_mvit_args
from .geometry import resize_abs_pos

__all__ = ["BlockSpec", "MViT", "MultiScaleBlock", "mvit_block_layout"]


class MultiScaleBlock(nn.Module):
    """MViTv2 block: pooling attention with a (projected, max-pooled) skip, then an MLP."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_layer: Type[nn.Module] = nn.LayerNorm,
        act_layer: Type[nn.Module] = nn.GELU,
        qkv_pool_kernel: Tuple[int, int] = (3, 3),
        stride_q: int = 1,
        stride_kv: int = 1,
        residual_pooling: bool = True,
        window_size: int = 0,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: Optional[int] = None,
        attn_impl: str = "auto",
    ) -> None:
        """
        Args:
            dim: input channels.
            dim_out: output channels; when it differs from ``dim`` the skip path is
                ``Linear(dim, dim_out)`` applied to ``norm1(x)``.
            num_heads: attention heads.
            mlp_ratio: MLP hidden channels as a multiple of ``dim_out``.
            qkv_bias: add a learnable bias to the q, k, v projection.
            drop_path: stochastic depth rate of this block.
            norm_layer: normalisation layer.
            act_layer: MLP activation.
            qkv_pool_kernel: kernel of the q, k, v pooling convs.
            stride_q: q pooling stride; > 1 also max-pools the skip path.
            stride_kv: k, v pooling stride.
            residual_pooling: add the pooled q to the attention output.
            window_size: attention window in tokens of the input map, 0 for global attention.
            use_rel_pos: use decomposed relative positions.
            rel_pos_zero_init: zero-initialise the relative-position tables.
            input_size: side of the input token grid at the pretraining size.
            attn_impl: attention core: "auto" or a name of :data:`~.cores.MVIT_CORES`.
        """
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = MultiScaleAttention(
            dim,
            dim_out,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            norm_layer=norm_layer,
            pool_kernel=qkv_pool_kernel,
            stride_q=stride_q,
            stride_kv=stride_kv,
            residual_pooling=residual_pooling,
            window_size=window_size,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=input_size,
            attn_impl=attn_impl,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim_out)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio), act_layer=act_layer)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        self.pool_skip = (
            nn.MaxPool2d(stride_q + 1, stride_q, (stride_q + 1) // 2) if stride_q > 1 else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, H, W, dim) tokens.

        Returns:
            (B, ceil(H / stride_q), ceil(W / stride_q), dim_out) tokens.
        """
        x_norm = self.norm1(x)
        x_attn = self.attn(x_norm)
        if self.proj is not None:
            x = self.proj(x_norm)
        if self.pool_skip is not None:
            # (B, H, W, C) -> (B, C, H, W) -> pool -> (B, H', W', C)
            x = self.pool_skip(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path(x_attn)
        return x + self.drop_path(self.mlp(self.norm2(x)))


@dataclass(frozen=True)
class BlockSpec:
    """
    The structure of one MViT block, as computed by :func:`mvit_block_layout`.

    Attributes:
        index: block index.
        stage: 2..5; the block belongs to the stage whose output is ``scale{stage}``.
        dim: input channels.
        dim_out: output channels (twice ``dim`` in the first block of stages 3-5).
        num_heads: attention heads.
        stride_q: q pooling stride (2 in the first block of stages 3-5).
        stride_kv: k, v pooling stride.
        window: attention window in tokens of the block's input map; 0 for global attention.
        input_size: side of the block's input token grid at the pretraining size (sets the
            relative-position table length).
        drop_path: stochastic depth rate.
    """

    index: int
    stage: int
    dim: int
    dim_out: int
    num_heads: int
    stride_q: int
    stride_kv: int
    window: int
    input_size: int
    drop_path: float


def mvit_block_layout(
    *,
    embed_dim: int,
    depth: int,
    num_heads: int,
    last_block_indexes: Sequence[int],
    global_blocks: Set[int],
    adaptive_kv_stride: int,
    adaptive_window_size: int,
    double_kv_stride_in_last_blocks: bool,
    drop_path_rate: float,
    input_size: int,
) -> List[BlockSpec]:
    """
    The published MViTv2 layout rules as a list of block specs (a pure function).

    - The first block of stages 3-5 doubles the channels and heads and pools q with stride 2.
    - The k, v stride starts at ``adaptive_kv_stride``, halves at each stage (never below 1) and
      doubles in the last block of stages 3 and 4 if ``double_kv_stride_in_last_blocks``.
    - Windows and the pretraining grid are counted in tokens of the block's input map: the first
      block of a stage still sees the previous stage's map, so both halve from its second block.
    - Stochastic depth rises linearly from 0 to ``drop_path_rate`` over the blocks.

    Args:
        embed_dim: channels of the first stage.
        depth: number of blocks.
        num_heads: heads of the first stage.
        last_block_indexes: the last block of each of the four stages (validated).
        global_blocks: blocks with global attention.
        adaptive_kv_stride: k, v stride of the first stage.
        adaptive_window_size: window of the first stage.
        double_kv_stride_in_last_blocks: see :class:`MViT`.
        drop_path_rate: stochastic depth rate of the last block.
        input_size: side of the first stage's token grid at the pretraining size.

    Returns:
        one :class:`BlockSpec` per block.

    Raises:
        ValueError: a window that the q or kv stride of its block does not divide.
    """
    specs: List[BlockSpec] = []
    dim, heads, stage = embed_dim, num_heads, 2
    stride_kv, window = adaptive_kv_stride, adaptive_window_size
    for i in range(depth):
        first_of_stage = i > 0 and i - 1 in last_block_indexes
        dim_out = dim * 2 if first_of_stage else dim
        heads = heads * 2 if first_of_stage else heads
        stride_q = 2 if first_of_stage else 1
        block_kv = stride_kv
        if double_kv_stride_in_last_blocks and i in last_block_indexes[1:3]:
            block_kv *= 2
        block_window = 0 if i in global_blocks else window
        if block_window and (block_window % stride_q or block_window % block_kv):
            raise ValueError(
                f"adaptive_window_size={adaptive_window_size} gives block {i} a window of "
                f"{block_window} tokens, which its q stride {stride_q} and kv stride "
                f"{block_kv} do not divide; use a window size whose halvings stay divisible "
                "by the strides (56, the published value, works)"
            )
        specs.append(
            BlockSpec(
                index=i,
                stage=stage,
                dim=dim,
                dim_out=dim_out,
                num_heads=heads,
                stride_q=stride_q,
                stride_kv=block_kv,
                window=block_window,
                input_size=input_size,
                drop_path=drop_path_rate * i / max(depth - 1, 1),
            )
        )
        dim = dim_out
        if first_of_stage:
            window //= 2
            input_size //= 2
        if i in last_block_indexes:
            stride_kv = max(stride_kv // 2, 1)
            stage += 1
    return specs


class MViT(Backbone):
    """
    Multiscale Vision Transformer v2 backbone (Li et al., "MViTv2: Improved Multiscale Vision
    Transformers for Classification and Detection") with Hybrid Window Attention.

    Tokens are kept as (B, H, W, C). Four stages produce ``scale2``..``scale5`` at strides
    4/8/16/32 with C, 2C, 4C, 8C channels, each normalised by its own LayerNorm and returned NCHW.
    Any input size works: scale ``n`` has ``ceil(H / 2**n) x ceil(W / 2**n)`` positions.
    Parameter names match Detectron2's MViT, so its checkpoints load as they are.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_kernel: Tuple[int, int] = (7, 7),
        patch_stride: Tuple[int, int] = (4, 4),
        patch_padding: Tuple[int, int] = (3, 3),
        in_chans: int = 3,
        embed_dim: int = 96,
        depth: int = 16,
        num_heads: int = 1,
        last_block_indexes: Sequence[int] = (0, 2, 11, 15),
        qkv_pool_kernel: Tuple[int, int] = (3, 3),
        adaptive_kv_stride: int = 4,
        adaptive_window_size: int = 56,
        residual_pooling: bool = True,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
        act_layer: Type[nn.Module] = nn.GELU,
        use_abs_pos: bool = False,
        use_rel_pos: bool = True,
        rel_pos_zero_init: bool = True,
        use_act_checkpoint: bool = False,
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
        out_features: Sequence[str] = ("scale2", "scale3", "scale4", "scale5"),
        attention_mode: str = "hybrid",
        global_block_indexes: Optional[Sequence[int]] = None,
        double_kv_stride_in_last_blocks: bool = True,
        attn_impl: str = "auto",
    ) -> None:
        """
        Args:
            img_size: image size of pretraining; sets the relative-position table lengths.
            patch_kernel: kernel of the patch embedding conv.
            patch_stride: stride of the patch embedding conv.
            patch_padding: padding of the patch embedding conv.
            in_chans: input image channels.
            embed_dim: channels C of the first stage.
            depth: number of blocks.
            num_heads: heads of the first stage (doubled at each stage).
            last_block_indexes: index of the last block of each of the four stages, increasing,
                the last one ``depth - 1``.
            qkv_pool_kernel: kernel of the q, k, v pooling convs (odd).
            adaptive_kv_stride: k, v pooling stride of the first stage, halved at each stage
                (never below 1).
            adaptive_window_size: attention window of the first stage in tokens of the block's
                input map, halved from the second block of each later stage.
            residual_pooling: add the pooled q to the attention output (MViTv2).
            mlp_ratio: MLP hidden channels as a multiple of the block's channels.
            qkv_bias: add a learnable bias to the q, k, v projections.
            drop_path_rate: stochastic depth rate of the last block, rising linearly from 0.
            norm_layer: normalisation layer (default LayerNorm with eps 1e-6, as published).
            act_layer: MLP activation.
            use_abs_pos: add an absolute position embedding after the patch embedding (MViTv1).
            use_rel_pos: use decomposed relative positions in attention (MViTv2).
            rel_pos_zero_init: zero-initialise the relative-position tables.
            use_act_checkpoint: recompute each block in the backward pass (activation
                checkpointing with ``torch.utils.checkpoint``, non-reentrant).
            pretrain_img_size: image size of the pretrained absolute position embedding.
            pretrain_use_cls_token: whether the pretrained absolute position embedding has a
                class-token slot.
            out_features: which of "scale2".."scale5" to return.
            attention_mode: "hybrid" (Hybrid Window Attention: window attention except in the
                blocks of ``global_block_indexes``), "global" (pooling attention everywhere) or
                "window" (window attention everywhere).
            global_block_indexes: blocks with global attention in "hybrid" mode; defaults to the
                last block of stages 3, 4 and 5 (``last_block_indexes[1:]``).
            double_kv_stride_in_last_blocks: double the k, v stride in the last block of stages 3
                and 4, as the detection models do (False matches the classification models).
            attn_impl: attention core: "auto" or a name of :data:`~.cores.MVIT_CORES`.
        """
        super().__init__()
        global_blocks = check_mvit_args(
            img_size=img_size,
            patch_kernel=patch_kernel,
            patch_stride=patch_stride,
            patch_padding=patch_padding,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            last_block_indexes=last_block_indexes,
            qkv_pool_kernel=qkv_pool_kernel,
            adaptive_kv_stride=adaptive_kv_stride,
            adaptive_window_size=adaptive_window_size,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            out_features=out_features,
            attention_mode=attention_mode,
            global_block_indexes=global_block_indexes,
            attn_impl=attn_impl,
        )
        patch_stride = to_2tuple(patch_stride)
        self.block_specs = mvit_block_layout(
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            last_block_indexes=tuple(last_block_indexes),
            global_blocks=global_blocks,
            adaptive_kv_stride=adaptive_kv_stride,
            adaptive_window_size=adaptive_window_size,
            double_kv_stride_in_last_blocks=double_kv_stride_in_last_blocks,
            drop_path_rate=drop_path_rate,
            input_size=img_size // patch_stride[0],
        )

        self.pretrain_use_cls_token = pretrain_use_cls_token
        self.use_act_checkpoint = use_act_checkpoint
        self.patch_embed = PatchEmbed(
            to_2tuple(patch_kernel), patch_stride, to_2tuple(patch_padding), in_chans, embed_dim
        )
        self.pos_embed: Optional[nn.Parameter] = None
        if use_abs_pos:
            grid = (pretrain_img_size // patch_stride[0]) * (pretrain_img_size // patch_stride[1])
            num_positions = grid + 1 if pretrain_use_cls_token else grid
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))

        self.blocks = nn.ModuleList(
            MultiScaleBlock(
                dim=spec.dim,
                dim_out=spec.dim_out,
                num_heads=spec.num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=spec.drop_path,
                norm_layer=norm_layer,
                act_layer=act_layer,
                qkv_pool_kernel=to_2tuple(qkv_pool_kernel),
                stride_q=spec.stride_q,
                stride_kv=spec.stride_kv,
                residual_pooling=residual_pooling,
                window_size=spec.window,
                use_rel_pos=use_rel_pos,
                rel_pos_zero_init=rel_pos_zero_init,
                input_size=spec.input_size,
                attn_impl=attn_impl,
            )
            for spec in self.block_specs
        )
        # Outputs: block index of each stage's last block -> "scale{stage}".
        self._stage_outputs: Dict[int, str] = {}
        self._out_feature_strides: Dict[str, int] = {}
        self._out_feature_channels: Dict[str, int] = {}
        for stage, last in enumerate(last_block_indexes, start=2):
            name = f"scale{stage}"
            # scale{n}_norm: the stage's output norm, None (no parameters) when not an output.
            if name not in out_features:
                setattr(self, f"{name}_norm", None)
                continue
            self._stage_outputs[last] = name
            self._out_feature_channels[name] = self.block_specs[last].dim_out
            self._out_feature_strides[name] = patch_stride[0] * 2 ** (stage - 2)
            self.add_module(f"{name}_norm", norm_layer(self.block_specs[last].dim_out))
        self._out_features = list(out_features)

        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_transformer_weights)

    @property
    def num_layers(self) -> int:
        """Number of blocks (named in load reports)."""
        return len(self.blocks)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: images of shape (N, in_chans, H, W), floating point.

        Returns:
            dict of "scale2".."scale5" (those in ``out_features``) to (N, C_n, ceil(H / 2**n),
            ceil(W / 2**n)) feature maps.
        """
        if not torch.jit.is_scripting():
            check_images(x, self.patch_embed.proj.weight, "MViT")
        x = self.patch_embed(x)  # (N, H/4, W/4, C)
        if self.pos_embed is not None:
            grid = (x.shape[1], x.shape[2])
            x = x + resize_abs_pos(self.pos_embed, self.pretrain_use_cls_token, grid)

        outputs: Dict[str, torch.Tensor] = {}
        recompute = self.use_act_checkpoint and self.training and torch.is_grad_enabled()
        if recompute and torch.jit.is_scripting():
            raise RuntimeError(
                "activation checkpointing (use_act_checkpoint=True) does not run in TorchScript: "
                "use the scripted MViT in eval mode or without gradients"
            )
        for i, blk in enumerate(self.blocks):
            x = self._recompute_block(i, x) if recompute else blk(x)
            name = self._stage_outputs.get(i)
            if name is not None:
                # (N, H, W, C) -> (N, C, H, W)
                outputs[name] = self._stage_norm(name, x).permute(0, 3, 1, 2)
        return outputs

    @torch.jit.unused
    def _recompute_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Block ``index`` with activation checkpointing (not in TorchScript)."""
        return checkpoint(self.blocks[index], x, use_reentrant=False)

    def _stage_norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The output norm of stage ``name`` ("scale2".."scale5"), written out for TorchScript."""
        if name == "scale2" and self.scale2_norm is not None:
            return self.scale2_norm(x)
        if name == "scale3" and self.scale3_norm is not None:
            return self.scale3_norm(x)
        if name == "scale4" and self.scale4_norm is not None:
            return self.scale4_norm(x)
        if name == "scale5" and self.scale5_norm is not None:
            return self.scale5_norm(x)
        raise KeyError(name)


class PatchEmbed(nn.Module):
    """Image to patch tokens: Conv2d, then NCHW -> NHWC."""

    def __init__(
        self,
        kernel_size: Tuple[int, int],
        stride: Tuple[int, int],
        padding: Tuple[int, int],
        in_chans: int,
        embed_dim: int,
    ) -> None:
        """
        Args:
            kernel_size: conv kernel.
            stride: conv stride.
            padding: conv padding.
            in_chans: image channels.
            embed_dim: token channels.
        """
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) -> (N, H, W, C), made contiguous once here: a permuted view would be
        # carried through the residual adds and copied again by every LayerNorm of the stage.
        return self.proj(x).permute(0, 2, 3, 1).contiguous()
