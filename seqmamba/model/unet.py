"""SaShiMi-style multi-scale U-Net of Mamba blocks (``ModelConfig.backbone = "unet"``).

With pools ``[p1, p2]`` and width expansion ``e`` the network runs at three rates:

    tokens -> embedding (B, L, D)
      down stage 0: Mamba blocks at width D            ------------- skip 0 -------------+
      down-pool 0:  group p1 steps, linear p1*D -> eD  (rate L/p1)                      |
        down stage 1: blocks at eD                     ---- skip 1 ----+                |
        down-pool 1:  group p2, linear p2*eD -> e^2 D  (rate L/(p1 p2))|                |
          center stage: blocks at e^2 D                                |                |
        up-pool 1: linear e^2 D -> p2*eD, shift one coarse step, split |                |
        + skip 1 -> up stage 1: blocks at eD  <------------------------+                |
      up-pool 0 -> + skip 0 -> up stage 0: blocks at D  <-------------------------------+
    final RMSNorm -> hidden (B, L, D)

Causality: a coarse step summarises p fine steps, so it may only feed fine steps *after* its
group; the up-pool therefore shifts by one coarse step (the first group gets zeros). Each fine
output then depends on its own input (skip path) and earlier inputs only. Sequences need not be
multiples of the pooling product.

Recurrent inference runs the same code with a cache: each level keeps the inputs of its
unfinished group (down-pool buffer) and the p outputs of its last finished coarse step (up-pool
buffer, released one per fine step). A fine step therefore runs the coarse level only every p
steps, exactly as the parallel forward; both are one function (``_level``), so recurrent output
equals the parallel forward. ``forward(..., cache=)`` (prompt prefill) and ``step`` share it.
Which levels a step runs, and which buffer rows it touches, depend only on the host-side
``seqlen_offset`` modulo prod(pool): on CUDA, ``seqmamba.kernels.unet_decode_graph`` records one
CUDA graph per such phase (and whole cycles of steps, sampling included) for fast generation.

Options live in ``config.unet`` (see ``UNetOptions``); ``config.n_layer`` is the total number of
Mamba blocks, split evenly over the stages (2 * len(pool) + 1 of them, or len(pool) + 1 when
``down_blocks`` is false, as in SaShiMi's default). The Mamba paper's YouTubeMix model ("3 blocks
per stage, 3 x 5 = 15 Mamba blocks, pooling factor 16, outer dimension 64, about 3.5M parameters")
is D = 64, pool [16, 16], expand 2, n_layer 15: 3.54M parameters here, whereas SaShiMi's pool
[4, 4] gives 2.56M with the same blocks (recipes/youtubemix.yaml).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from seqmamba.config import ConfigError, ModelConfig, TypedConfig

from .block import Block, RMSNorm
from .inference import InferenceCache, LayerCache
from .registry import register_backbone

__all__ = ["UNetOptions", "UNetBackbone", "UNetCache"]


@dataclass
class UNetOptions(TypedConfig):
    """``model.unet`` settings."""

    _config_prefix: ClassVar[str] = "model.unet"

    pool: list[int] = field(default_factory=lambda: [4, 4])  # pooling factor of each level
    expand: int = 2          # width multiplier per level (D, eD, e^2 D, ...)
    down_blocks: bool = True  # Mamba blocks before each down-pool (U-Net) or pooling only (SaShiMi)

    def validate(self, prefix: str) -> None:
        if not self.pool:
            raise ConfigError(f"{prefix}.pool: needs at least one pooling factor (or use "
                              f"backbone: mamba)")
        for i, p in enumerate(self.pool):
            if p < 2:
                raise ConfigError(f"{prefix}.pool[{i}]: must be >= 2, got {p}")
        if self.expand < 1:
            raise ConfigError(f"{prefix}.expand: must be >= 1, got {self.expand}")

    @property
    def n_stages(self) -> int:
        return (2 if self.down_blocks else 1) * len(self.pool) + 1


def unet_options(config: ModelConfig) -> UNetOptions:
    opts = UNetOptions.from_dict(dict(config.unet or {}))
    if config.n_layer % opts.n_stages:
        raise ConfigError(
            f"model.n_layer: the unet backbone splits its blocks evenly over {opts.n_stages} "
            f"stages (pool {opts.pool}, down_blocks={opts.down_blocks}); n_layer={config.n_layer} "
            f"is not a multiple of {opts.n_stages}")
    if config.bidirectional:
        raise ConfigError("model.bidirectional: the unet backbone is causal only")
    return opts


class UNetCache:
    """Recurrent state of a UNetBackbone: Mamba layer caches plus the pooling buffers."""

    def __init__(self, layers: dict[str, list[LayerCache]], down_buf: list[torch.Tensor],
                 up_buf: list[torch.Tensor]):
        self.layers = layers        # stage name -> one LayerCache per block
        self.down_buf = down_buf    # per level (B, p, width): inputs of the unfinished group
        self.up_buf = up_buf        # per level (B, p, width): outputs of the last finished group
        self.seqlen_offset = 0      # fine tokens consumed so far (sets every level's phase)

    @property
    def batch_size(self) -> int:
        return self.down_buf[0].shape[0]

    def reset(self) -> None:
        for stage in self.layers.values():
            for layer in stage:
                layer.conv_state.zero_()
                layer.ssm_state.zero_()
        for buf in (*self.down_buf, *self.up_buf):
            buf.zero_()
        self.seqlen_offset = 0


def _stage_output(hidden: torch.Tensor, residual: Optional[torch.Tensor], dtype) -> torch.Tensor:
    if residual is None:
        return hidden
    return (hidden.to(residual.dtype) + residual).to(dtype)


class UNetBackbone(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.options = opts = unet_options(config)
        self.pools = list(opts.pool)
        per_stage = config.n_layer // opts.n_stages
        self.widths = [config.d_model * opts.expand ** i for i in range(len(self.pools) + 1)]
        # One ModelConfig per width: the mixers size themselves (d_inner, dt_rank) from it.
        # n_layer stays the total so out_proj's 1/sqrt(n_layer) init matches the whole depth.
        self.stage_configs = [config.replace(d_model=w) for w in self.widths]

        def stage(level: int, n: int) -> nn.ModuleList:
            return nn.ModuleList(Block(self.stage_configs[level], i) for i in range(n))

        n_down = per_stage if opts.down_blocks else 0
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.down_stages = nn.ModuleList(stage(l, n_down) for l in range(len(self.pools)))
        self.down_pools = nn.ModuleList(
            nn.Linear(p * self.widths[l], self.widths[l + 1]) for l, p in enumerate(self.pools))
        self.center = stage(len(self.pools), per_stage)
        self.up_pools = nn.ModuleList(
            nn.Linear(self.widths[l + 1], p * self.widths[l]) for l, p in enumerate(self.pools))
        self.up_stages = nn.ModuleList(stage(l, per_stage) for l in range(len(self.pools)))
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_eps)
        self.gradient_checkpointing = False
        nn.init.normal_(self.embedding.weight, std=0.02)

    # ---- stages --------------------------------------------------------------------------------
    def _run_stage(self, blocks: nn.ModuleList, x: torch.Tensor,
                   caches: Optional[list[LayerCache]]) -> torch.Tensor:
        """A stack of pre-norm blocks as one residual stage: (B, T, H) -> (B, T, H)."""
        if len(blocks) == 0:
            return x
        hidden, residual = x, None
        if caches is not None and x.shape[1] == 1:  # recurrent step: the single-token kernels
            h = hidden[:, 0]
            for block, layer_cache in zip(blocks, caches):
                h, residual = block.step(h, residual, layer_cache)
            return _stage_output(h, residual, x.dtype)[:, None]
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(blocks):
            layer_cache = None if caches is None else caches[i]
            if recompute and layer_cache is None:
                hidden, residual = checkpoint(block, hidden, residual, use_reentrant=False)
            else:
                hidden, residual = block(hidden, residual, layer_cache)
        return _stage_output(hidden, residual, x.dtype)

    def _level(self, level: int, x: torch.Tensor, offset: int,
               cache: Optional[UNetCache]) -> torch.Tensor:
        """Process T new steps at ``level`` after ``offset`` earlier ones: (B, T, H) -> (B, T, H).

        Without a cache the state before is empty (offset 0): the parallel forward."""
        if level == len(self.pools):
            return self._run_stage(self.center, x, None if cache is None else cache.layers["center"])
        p = self.pools[level]
        batch, T, width = x.shape
        skip = self._run_stage(self.down_stages[level], x,
                               None if cache is None else cache.layers[f"down{level}"])
        # Down-pool: complete groups of p steps (with the buffered start of the current group).
        r = offset % p  # inputs of the current group consumed before this call
        seq = skip if r == 0 or cache is None else torch.cat([cache.down_buf[level][:, :r], skip], 1)
        groups = seq.shape[1] // p
        if cache is not None:
            rest = seq.shape[1] - groups * p
            if rest:
                cache.down_buf[level][:, :rest].copy_(seq[:, groups * p:])
        if groups:
            coarse = self.down_pools[level](seq[:, : groups * p].reshape(batch, groups, p * width))
            coarse = self._level(level + 1, coarse, offset // p, cache)
            up = self.up_pools[level](coarse).reshape(batch, groups * p, width)
        else:
            up = skip.new_zeros(batch, 0, width)
        # Up-pool with a one-group shift: step t*p + j reads output j of coarse step t - 1.
        prev = (cache.up_buf[level].to(up.dtype) if cache is not None
                else up.new_zeros(batch, p, width))
        out = torch.cat([prev, up], 1)[:, r: r + T]
        if cache is not None and groups:
            cache.up_buf[level].copy_(up[:, -p:])
        return self._run_stage(self.up_stages[level], out + skip,
                               None if cache is None else cache.layers[f"up{level}"])

    # ---- backbone interface --------------------------------------------------------------------
    def forward(self, input_ids: Optional[torch.Tensor] = None, output_hidden_states: bool = False,
                inputs_embeds: Optional[torch.Tensor] = None, cache: Optional[UNetCache] = None,
                attention_mask: Optional[torch.Tensor] = None):
        """(B, L) token ids (or (B, L, D) embeddings) -> final normed hidden (B, L, D).

        cache: continue from / update a recurrent cache (prompt prefill, any length).
        attention_mask is accepted and ignored: the model is causal, so right padding cannot
        reach the real tokens before it.
        """
        if output_hidden_states:
            raise ValueError("the unet backbone has no per-layer hidden states at the input rate "
                             "(its inner stages run at coarser rates and other widths); use the "
                             "final hidden states (layer=-1)")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        hidden = self.embedding(input_ids) if inputs_embeds is None else inputs_embeds
        if cache is not None and cache.batch_size != hidden.shape[0]:
            raise ValueError(f"cache was allocated for batch {cache.batch_size}, "
                             f"got batch {hidden.shape[0]}")
        if hidden.shape[1] == 0:
            return self.norm_f(hidden)
        offset = 0 if cache is None else cache.seqlen_offset
        out = self._level(0, hidden, offset, cache)
        if cache is not None:
            cache.seqlen_offset += hidden.shape[1]
        return self.norm_f(out)

    def allocate_cache(self, batch_size: int, device=None, dtype: Optional[torch.dtype] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        p = self.embedding.weight
        device, dtype = device or p.device, dtype or p.dtype

        def layers(level: int, n: int) -> list[LayerCache]:
            if n == 0:
                return []
            cfg = self.stage_configs[level].replace(n_layer=n)
            return InferenceCache.allocate(cfg, batch_size, device=device, dtype=dtype).layers

        caches = {"center": layers(len(self.pools), len(self.center))}
        for l in range(len(self.pools)):
            caches[f"down{l}"] = layers(l, len(self.down_stages[l]))
            caches[f"up{l}"] = layers(l, len(self.up_stages[l]))
        bufs = lambda: [torch.zeros(batch_size, p_, self.widths[l], device=device, dtype=dtype)  # noqa: E731
                        for l, p_ in enumerate(self.pools)]
        return UNetCache(caches, bufs(), bufs())

    def step(self, input_ids: torch.Tensor, cache: UNetCache) -> torch.Tensor:
        """Advance one token: input_ids (B,) -> final normed hidden (B, D). The coarse levels
        run only when a group completes (every p1, p1*p2, ... tokens)."""
        return self.forward(input_ids[:, None], cache=cache)[:, 0]

    @property
    def receptive_rates(self) -> list[int]:
        """Tokens per step at each level: [1, p1, p1*p2, ...]."""
        return [math.prod(self.pools[:l]) for l in range(len(self.pools) + 1)]


register_backbone("unet", UNetBackbone)
