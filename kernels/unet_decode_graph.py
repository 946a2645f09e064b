"""CUDA-graph decoding for the U-Net LM (``seqmamba.model.unet``, ``backbone: unet``).

A U-Net step's work depends on its position: the outer level runs every step, the next one
when a group of p1 completes, the next every p1*p2 steps, and each level reads and writes the
pooling-buffer row of its own position within its group. All of that is a function of the
*phase*, the tuple of those in-group positions up to the first level that does not complete
(``phase_of``): pools [16, 16] have 15 + 16 = 31 phases, e.g. (3,) for an outer-only step at
group position 3, (15, 7) for a step that also runs the middle level at its position 7, and
(15, 15) for one that runs the center too.

``UNetGraphedStep`` records one graph per phase met (each valid for every position of that
phase; the host knows the position, so choosing the graph needs no device read) and, when
sampling, graphs of ``steps_per_replay`` consecutive steps: by default the whole cycle of
prod(pools) steps (repeated up to 256 steps when the cycle is shorter), so one replay generates
256 samples of the paper's model. A step is ``FusedUNetStep``'s fused Triton kernels (when the
model fits them), else the model's own ``step`` recorded at a position of that phase, which is
exactly the eager computation (its Python branches read only the host-side position).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from .decode_graph import GraphedDecoder

__all__ = ["UNetGraphedStep", "phase_of", "offset_of", "default_steps_per_replay"]


def phase_of(pools: list[int], offset: int) -> tuple[int, ...]:
    """In-group positions of step ``offset``, outer level first, down to the first level whose
    group does not complete at this step (the deepest level the step runs is the last entry's)."""
    phase = []
    for p in pools:
        r = offset % p
        phase.append(r)
        if r != p - 1:
            break
        offset //= p
    return tuple(phase)


def offset_of(pools: list[int], phase: tuple[int, ...]) -> int:
    """The first position of ``phase``."""
    offset, rate = 0, 1
    for p, r in zip(pools, phase):
        offset += r * rate
        rate *= p
    return offset


def default_steps_per_replay(pools: list[int], target: int = 256) -> int:
    """Steps per chunk graph: whole cycles up to ``target`` steps, or for cycles longer than
    that the longest prefix product of the pools within it (1: no chunk graphs)."""
    cycle = math.prod(pools)
    if cycle <= target:
        return cycle * (target // cycle)
    k = 1
    for p in pools:
        if k * p > target:
            break
        k *= p
    return k


class UNetGraphedStep(GraphedDecoder):
    """Graphed decoding of a U-Net LM for a fixed batch size.

    fused: "auto" (FusedUNetStep when the model supports it and Triton runs here), True, False.
    block_in / block_ssm: FusedUNetStep's channels per program (None: its per-level default).
    steps_per_replay: "auto" (``default_steps_per_replay`` when sampling, else 1) or an int
        that divides prod(pools) or is a multiple of it.
    Other arguments: ``GraphedDecoder``'s (sampler, max_tokens, seed, cuda_graph).
    """

    def __init__(self, model, batch_size: int, device=None, dtype: Optional[torch.dtype] = None,
                 *, fused="auto", steps_per_replay: Union[int, str] = "auto",
                 block_in: Optional[int] = None, block_ssm: Optional[int] = None, **kw):
        from seqmamba.model.unet import UNetBackbone

        if not isinstance(getattr(model, "backbone", None), UNetBackbone):
            raise ValueError("UNetGraphedStep needs a model with the unet backbone")
        super().__init__(model, batch_size, device, dtype, **kw)
        self.pools = list(model.backbone.pools)
        self.cycle = math.prod(self.pools)
        if steps_per_replay == "auto":
            steps_per_replay = 1 if self.sampler is None else default_steps_per_replay(self.pools)
        self._set_steps_per_replay(steps_per_replay)
        self.fused = None
        if self._use_fused(fused):
            from .unet_decode_triton import FusedUNetStep
            with torch.inference_mode(False):
                self.fused = FusedUNetStep(model, batch_size, block_in, block_ssm)
            self.logits = self.fused.logits
        self.prepare()

    def phase(self, offset: int) -> tuple[int, ...]:
        return phase_of(self.pools, offset)

    def phase_offset(self, phase: tuple[int, ...]) -> int:
        return offset_of(self.pools, phase)

    def _cache_tensors(self):
        for stage in self.cache.layers.values():
            for layer in stage:
                yield layer.conv_state
                yield layer.ssm_state
        yield from self.cache.down_buf
        yield from self.cache.up_buf

    def _record_step(self, offset: int) -> None:
        if self.fused is not None:
            self.fused(self.ids, self.cache, offset, self.sampler)
            return
        self.cache.seqlen_offset = offset  # the eager step branches on it (on the host)
        self.logits.copy_(self.model.step(self.ids, self.cache))
        if self.sampler is not None:
            self.sampler.sample(self.logits)
