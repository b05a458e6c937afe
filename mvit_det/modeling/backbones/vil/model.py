"""ViL, the Multi-Scale Vision Longformer, as a Detectron2 backbone."""

from __future__ import annotations

from functools import partial
from typing import Callable, Dict, List, Sequence, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.modeling.backbone import Backbone
from timm.layers import DropPath
from torch.utils.checkpoint import checkpoint

from ...layers import Mlp, check_images, init_transformer_weights, is_tracing_or_exporting
from ...layers import unflatten_dim, zero_pad_end
from .attention import LongformerAttention
from .checks import NUM_STAGES, check_vil_args

__all__ = ["ViL", "ViLAttentionBlock", "ViLMlpBlock", "ViLPatchEmbed"]


class ViLPatchEmbed(nn.Module):
    """
    Stage entry: a patch conv (kernel = stride = p), LayerNorm, then the stage's learned global
    tokens prepended. Maps whose sides are not multiples of p are zero-padded at the bottom and
    right first, so the output has ``ceil(H / p) x ceil(W / p)`` tokens.
    """

    def __init__(
        self,
        *,
        in_chans: int,
        embed_dim: int,
        patch_size: int,
        num_global: int,
        norm_layer: Callable[[int], nn.Module],
    ) -> None:
        """
        Args:
            in_chans: input channels.
            embed_dim: token channels.
            patch_size: patch side p (conv kernel and stride).
            num_global: number of global tokens of the stage.
            norm_layer: normalisation after the conv.
        """
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.norm_embed = norm_layer(embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, num_global, embed_dim)) if num_global else None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """
        Args:
            x: (B, C_in, H, W) image or feature map.

        Returns:
            (B, G + H' * W', C) tokens with the globals first, and (H', W').
        """
        p = self.patch_size
        if is_tracing_or_exporting():
            # Traced sizes: pad always (maybe by 0 rows), with zeros of the traced shape, so the
            # graph serves every input size (a traced F.pad or an `if` would be frozen).
            x = zero_pad_end(x, 2, (p - x.shape[2] % p) % p)
            x = zero_pad_end(x, 3, (p - x.shape[3] % p) % p)
        else:
            pad_h, pad_w = -x.shape[2] % p, -x.shape[3] % p
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.proj(x)  # (B, C, H', W')
        hw = (x.shape[2], x.shape[3])
        x = self.norm_embed(x.flatten(2).transpose(1, 2))  # (B, H'W', C)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x, hw


class ViLAttentionBlock(nn.Module):
    """Pre-norm attention with a residual: ``x + drop_path(attn(norm(x)))``."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        num_global: int,
        window: int,
        window_mode: str,
        share_global_weights: bool,
        qkv_bias: bool,
        drop_path: float,
        norm_layer: Callable[[int], nn.Module],
        attn_impl: str,
    ) -> None:
        """
        Args:
            dim: token channels.
            num_heads: attention heads.
            num_global: number of global tokens.
            window: window / chunk size w.
            window_mode: "chunk" or "exact".
            share_global_weights: see :class:`LongformerAttention`.
            qkv_bias: learnable bias of the query and key/value projections.
            drop_path: stochastic depth rate.
            norm_layer: normalisation layer.
            attn_impl: attention core.
        """
        super().__init__()
        self.norm = norm_layer(dim)
        self.attn = LongformerAttention(
            dim=dim,
            num_heads=num_heads,
            num_global=num_global,
            window=window,
            window_mode=window_mode,
            share_global_weights=share_global_weights,
            qkv_bias=qkv_bias,
            attn_impl=attn_impl,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """(B, G + H * W, dim) -> (B, G + H * W, dim)."""
        return x + self.drop_path(self.attn(self.norm(x), hw))


class ViLMlpBlock(nn.Module):
    """Pre-norm MLP with a residual: ``x + drop_path(mlp(norm(x)))``."""

    def __init__(
        self,
        *,
        dim: int,
        mlp_ratio: float,
        drop_path: float,
        norm_layer: Callable[[int], nn.Module],
        act_layer: Type[nn.Module],
    ) -> None:
        """
        Args:
            dim: token channels.
            mlp_ratio: hidden channels as a multiple of ``dim``.
            drop_path: stochastic depth rate.
            norm_layer: normalisation layer.
            act_layer: activation.
        """
        super().__init__()
        self.norm = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim)."""
        return x + self.drop_path(self.mlp(self.norm(x)))


class ViL(Backbone):
    """
    Multi-Scale Vision Longformer (Zhang et al., "Multi-Scale Vision Longformer: A New Vision
    Transformer for High-Resolution Image Encoding", ICCV 2021).

    Four stages, each a :class:`ViLPatchEmbed` (patch conv, LayerNorm, learned global tokens)
    followed by ``depths[i]`` pairs of pre-norm Vision Longformer attention and MLP blocks. A
    stage's global tokens are dropped at its end; the local tokens form the next stage's map.
    Outputs ``scale2``..``scale5`` (strides 4/8/16/32 with the default patch sizes) are the raw
    stage outputs, NCHW, with ``embed_dims[i]`` channels. Any input size works: with patch sizes
    4/2/2/2, scale n has ``ceil(H / 2**n) x ceil(W / 2**n)`` positions.

    Parameter names are those of the published models (``layer{1-4}.{i}``: i = 0 the patch
    embedding, odd i attention, even i >= 2 MLP), so their weights map directly (see
    :mod:`.weights`).
    """

    def __init__(
        self,
        *,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (1, 2, 8, 1),
        num_heads: Sequence[int] = (3, 3, 6, 12),
        patch_sizes: Sequence[int] = (4, 2, 2, 2),
        num_global_tokens: Sequence[int] = (1, 1, 1, 0),
        window: int | Sequence[int] = 7,
        window_mode: str = "chunk",
        share_global_weights: bool = True,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
        act_layer: Type[nn.Module] = nn.GELU,
        use_act_checkpoint: bool = False,
        out_features: Sequence[str] = ("scale2", "scale3", "scale4", "scale5"),
        attn_impl: str = "auto",
    ) -> None:
        """
        Args:
            in_chans: input image channels.
            embed_dims: channels of each stage.
            depths: attention + MLP block pairs of each stage.
            num_heads: attention heads of each stage.
            patch_sizes: patch side of each stage's embedding (its stride).
            num_global_tokens: global tokens of each stage.
            window: window / chunk size w, one for all stages or one per stage.
            window_mode: "chunk" (each w x w chunk attends its 3 x 3 chunk neighbourhood; what
                the published models use) or "exact" (each token attends the (2w + 1)^2 window
                around itself).
            share_global_weights: global tokens use the local q/kv/proj projections (published
                models); False gives them their own ``*_global`` projections.
            mlp_ratio: MLP hidden channels as a multiple of the stage's channels.
            qkv_bias: learnable bias of the query and key/value projections.
            drop_path_rate: stochastic depth rate of the last block pair, rising linearly from 0
                over all pairs.
            norm_layer: normalisation layer (default LayerNorm with eps 1e-6, as published).
            act_layer: MLP activation.
            use_act_checkpoint: recompute each attention + MLP pair in the backward pass
                (``torch.utils.checkpoint``, non-reentrant).
            out_features: which of "scale2".."scale5" to return.
            attn_impl: attention core: "auto" or a name of :data:`~.cores.VIL_CORES`.
        """
        super().__init__()
        windows = check_vil_args(
            in_chans=in_chans,
            embed_dims=embed_dims,
            depths=depths,
            num_heads=num_heads,
            patch_sizes=patch_sizes,
            num_global_tokens=num_global_tokens,
            window=window,
            window_mode=window_mode,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            out_features=out_features,
            attn_impl=attn_impl,
        )
        self.depths = tuple(depths)
        self.num_global_tokens = tuple(num_global_tokens)
        self.use_act_checkpoint = use_act_checkpoint
        # plain numbers, also when modules are built on the meta device
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self._out_feature_channels: Dict[str, int] = {}
        self._out_feature_strides: Dict[str, int] = {}
        stride, dim_in, first = 1, in_chans, 0
        for i in range(NUM_STAGES):
            dim = embed_dims[i]
            layers: List[nn.Module] = [
                ViLPatchEmbed(
                    in_chans=dim_in,
                    embed_dim=dim,
                    patch_size=patch_sizes[i],
                    num_global=num_global_tokens[i],
                    norm_layer=norm_layer,
                )
            ]
            for rate in rates[first : first + depths[i]]:
                layers.append(
                    ViLAttentionBlock(
                        dim=dim,
                        num_heads=num_heads[i],
                        num_global=num_global_tokens[i],
                        window=windows[i],
                        window_mode=window_mode,
                        share_global_weights=share_global_weights,
                        qkv_bias=qkv_bias,
                        drop_path=rate,
                        norm_layer=norm_layer,
                        attn_impl=attn_impl,
                    )
                )
                layers.append(
                    ViLMlpBlock(
                        dim=dim,
                        mlp_ratio=mlp_ratio,
                        drop_path=rate,
                        norm_layer=norm_layer,
                        act_layer=act_layer,
                    )
                )
            self.add_module(f"layer{i + 1}", nn.ModuleList(layers))
            stride *= patch_sizes[i]
            self._out_feature_channels[f"scale{i + 2}"] = dim
            self._out_feature_strides[f"scale{i + 2}"] = stride
            dim_in, first = dim, first + depths[i]
        self._out_features = list(out_features)
        self._out_feature_channels = {k: self._out_feature_channels[k] for k in out_features}
        self._out_feature_strides = {k: self._out_feature_strides[k] for k in out_features}
        self.apply(init_transformer_weights)
        for m in self.modules():
            if isinstance(m, ViLPatchEmbed) and m.cls_token is not None:
                nn.init.trunc_normal_(m.cls_token, std=0.02)

    @property
    def num_layers(self) -> int:
        """Number of attention + MLP block pairs."""
        return sum(self.depths)

    def stages(self) -> List[nn.ModuleList]:
        """The four stages, ``layer1``..``layer4``."""
        return [getattr(self, f"layer{i + 1}") for i in range(NUM_STAGES)]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: images of shape (N, in_chans, H, W), floating point.

        Returns:
            dict of "scale2".."scale5" (those in ``out_features``) to (N, C_i, H_i, W_i) maps,
            H_i = ceil(H / stride_i).
        """
        check_images(x, self.layer1[0].proj.weight, "ViL")
        outputs: Dict[str, torch.Tensor] = {}
        recompute = self.use_act_checkpoint and self.training and torch.is_grad_enabled()
        for i, stage in enumerate(self.stages()):
            tokens, hw = stage[0](x)  # (N, G + H * W, C)
            for attn_block, mlp_block in zip(stage[1::2], stage[2::2]):
                if recompute:
                    tokens = checkpoint(
                        _attention_and_mlp, attn_block, mlp_block, tokens, hw, use_reentrant=False
                    )
                else:
                    tokens = mlp_block(attn_block(tokens, hw))
            # Drop the globals; (N, H * W, C) -> (N, C, H, W)
            local = tokens[:, self.num_global_tokens[i] :]
            x = unflatten_dim(local.transpose(1, 2), 2, [hw[0], hw[1]])
            name = f"scale{i + 2}"
            if name in self._out_feature_channels:
                outputs[name] = x
        return outputs


def _attention_and_mlp(
    attn_block: ViLAttentionBlock, mlp_block: ViLMlpBlock, x: torch.Tensor, hw: Tuple[int, int]
) -> torch.Tensor:
    return mlp_block(attn_block(x, hw))
