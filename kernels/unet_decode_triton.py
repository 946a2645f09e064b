"""A U-Net (``seqmamba.model.unet``) decode step as fused Triton kernels, for one fixed phase.

The U-Net's step is a chain of Mamba layers at three or more widths, joined by the pooling
buffers. Every Mamba layer runs as FusedMambaStep's two kernels (``layer_in``: residual add +
RMSNorm + in_proj + conv update + x_proj share; ``_layer_ssm_kernel``: dt_proj + SSM update +
gate + out_proj share); what differs from a plain LM is where a stage's first layer reads its
input, so ``layer_in`` here takes one of three sources:

    EMB   the token embedding                       (the outer down stage)
    X     a row buffer                              (a coarse level, fed by its down-pool)
    RES   the previous stage's residual stream      (an up stage, after its down stage)
          plus the up-pool buffer's row for this phase, ADD, and with the down stage's output
          stored into the down-pool buffer on the way, SKIP

and the two pooling linears are one small kernel (``_pool_kernel``) reading either a buffer or a
residual stream. Per fine step the outer level costs 2 launches per layer + 1 (LM head, which
also samples); the level below runs every p1 steps, the next every p1*p2, exactly like
``UNetBackbone._level``.

The control flow (which levels run, which buffer rows are read and written) depends only on the
step's phase, ``offset mod prod(pools)``: ``FusedUNetStep.__call__(ids, cache, offset)`` launches
the kernels of the step at that phase with the buffer rows baked in as pointers, so it records
into a CUDA graph that is valid for every step of the same phase (see unet_decode_graph.py).
Nothing here reads a device value on the host.

Numerics are FusedMambaStep's: float32 throughout from the model's weights (read in place), with
the residual streams in float32; the pooling buffers keep the model's dtype, as in the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import triton
import triton.language as tl

from .decode_sample_triton import launch_head
from .mamba_decode_triton import (MAX_D_MODEL, SRC_EMB, SRC_RES, SRC_X, _layer_in_kernel,
                                  _layer_ssm_kernel, _pow2, _warps)

@triton.jit
def _pool_kernel(x_ptr, part_ptr, res_ptr, w_ptr, bias_ptr, y_ptr, B, K, M, N_PART,
                 s_x, s_w, s_y, FROM_STREAM: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    """y[b, :M] = W x[b] + bias, x (K wide) a buffer row or, FROM_STREAM, a stage's output
    (residual stream + out_proj partials). Each program owns BLOCK_M outputs."""
    b = tl.program_id(0)
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mm = m < M
    acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mk = k < K
        w = tl.load(w_ptr + m[:, None] * s_w + k[None, :], mask=mm[:, None] & mk[None, :],
                    other=0.0).to(tl.float32)
        if FROM_STREAM:
            p = tl.arange(0, BLOCK_P)
            parts = tl.load(part_ptr + (p[:, None] * B + b) * K + k[None, :],
                            mask=(p < N_PART)[:, None] & mk[None, :], other=0.0)
            xk = tl.load(res_ptr + b * K + k, mask=mk, other=0.0) + tl.sum(parts, axis=0)
        else:
            xk = tl.load(x_ptr + b * s_x + k, mask=mk, other=0.0).to(tl.float32)
        acc += tl.sum(w * xk[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + m, mask=mm, other=0.0).to(tl.float32)
    tl.store(y_ptr + b * s_y + m, acc.to(y_ptr.dtype.element_ty), mask=mm)


def fused_unet_unsupported(model) -> Optional[str]:
    """Why ``FusedUNetStep`` cannot run ``model`` (None when it can)."""
    from seqmamba.model.mixer import MambaMixer
    from seqmamba.model.unet import UNetBackbone

    bb = getattr(model, "backbone", None)
    if not isinstance(bb, UNetBackbone) or not hasattr(model, "lm_head"):
        return "needs a MambaLM with the unet backbone"
    for cfg in bb.stage_configs:
        if cfg.d_model > MAX_D_MODEL:
            return (f"fused decode keeps whole rows in registers: every level's width must be "
                    f"<= {MAX_D_MODEL}, got {cfg.d_model}")
        if cfg.d_state > 256 or cfg.dt_rank_value + 2 * cfg.d_state > 1024:
            return "d_state > 256 or dt_rank + 2 * d_state > 1024"
    blocks = [*bb.center, *(b for s in (*bb.down_stages, *bb.up_stages) for b in s)]
    if not all(type(block.mixer) is MambaMixer for block in blocks):
        return "fused decode covers plain Mamba mixers only"
    return None


@dataclass
class _Level:
    """Sizes, block shapes and float32 scratch of one level (one width)."""
    dm: int
    di: int
    n: int
    r: int
    width: int
    block_k: int
    block_in: int
    block_ssm: int
    n_xpart: int
    n_part: int
    part: torch.Tensor       # (n_part, B, dm)  out_proj partial sums of the last layer
    xdbl_part: torch.Tensor  # (n_xpart, B, r + 2n)
    res: torch.Tensor        # (2, B, dm)  residual stream, ping-pong
    xc: torch.Tensor         # (B, di)
    z: torch.Tensor          # (B, di)
    x_in: torch.Tensor       # (B, dm)  this level's input row (the down-pool output above it)
    parity: int = 0          # which res buffer holds the stream (advanced at record time)


class FusedUNetStep:
    """``model.step(ids, cache)`` of a U-Net LM as fused Triton kernels, for a given phase.

    ``__call__(ids, cache, offset, sampler=None)`` advances ``cache`` (a UNetCache) by one token
    at position ``offset`` (only ``offset mod prod(pools)`` matters; ``cache.seqlen_offset`` is
    neither read nor changed) and returns the float32 logits (B, vocab_size) in a buffer it
    reuses; with a ``DeviceSampler`` the LM-head launch also samples the next tokens.
    block_in / block_ssm: d_inner channels per program of the two layer kernels (None: 32, the
    fastest measured; see the comment in __init__).
    """

    def __init__(self, model, batch_size: int, block_in: Optional[int] = None,
                 block_ssm: Optional[int] = None):
        why = fused_unet_unsupported(model)
        if why:
            raise ValueError(f"FusedUNetStep: {why}")
        bb = model.backbone
        self.model, self.backbone, self.batch = model, bb, batch_size
        self.pools = list(bb.pools)
        self.vocab = model.config.vocab_size
        dev = bb.embedding.weight.device
        f32 = dict(device=dev, dtype=torch.float32)
        self.levels = []
        for cfg in bb.stage_configs:
            dm, di, n, r = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank_value
            block_k, di2 = _pow2(dm), _pow2(di)
            # 32 channels per program at every level: on the H100 (paper-size model, batch 1,
            # fp32, 256 steps per replay) 32/32 gave 29,956 samples/s, 64/64 29,940, the
            # width-scaled split FusedMambaStep uses (128/128 at the outer level) 24,270
            b_in = min(block_in or 32, di2)
            b_ssm = min(block_ssm or 32, di2)
            n_xpart, n_part = triton.cdiv(di, b_in), triton.cdiv(di, b_ssm)
            self.levels.append(_Level(
                dm, di, n, r, cfg.d_conv, block_k, b_in, b_ssm, n_xpart, n_part,
                part=torch.zeros(n_part, batch_size, dm, **f32),
                xdbl_part=torch.zeros(n_xpart, batch_size, r + 2 * n, **f32),
                res=torch.zeros(2, batch_size, dm, **f32),
                xc=torch.zeros(batch_size, di, **f32), z=torch.zeros(batch_size, di, **f32),
                x_in=torch.zeros(batch_size, dm, **f32)))
        self.logits = torch.zeros(batch_size, self.vocab, **f32)
        self.arrive = torch.zeros(batch_size, device=dev, dtype=torch.int32)

    # ---- one layer ------------------------------------------------------------------------------
    def _layer(self, lv: _Level, block, lc, ids, src: Union[str, torch.Tensor],
               add: Optional[torch.Tensor] = None, skip: Optional[torch.Tensor] = None) -> None:
        """One Mamba block at level ``lv``. src: "emb", "res" (continue the level's residual
        stream) or a (B, dm) row buffer; add / skip: (B, dm) views of the pooling buffers."""
        mx, emb = block.mixer, self.backbone.embedding.weight
        res_in, res_out = lv.res[lv.parity], lv.res[1 - lv.parity]
        lv.parity ^= 1
        mode = SRC_EMB if isinstance(src, str) and src == "emb" else \
            SRC_RES if isinstance(src, str) else SRC_X
        x = src if mode == SRC_X else emb
        add_t = emb if add is None else add
        skip_t = emb if skip is None else skip
        cw, cs, wxp = mx.conv1d.weight, lc.conv_state, mx.x_proj.weight
        _layer_in_kernel[(self.batch, lv.n_xpart)](
            ids, emb, x, lv.part, res_in, add_t, skip_t, res_out, block.norm.weight,
            mx.in_proj.weight, mx.in_proj.bias if mx.in_proj.bias is not None else emb,
            cw, mx.conv1d.bias if mx.conv1d.bias is not None else emb, cs, wxp,
            lv.xc, lv.z, lv.xdbl_part,
            self.batch, lv.dm, lv.di, lv.r + 2 * lv.n, lv.n_part, block.norm.eps,
            emb.stride(0), x.stride(0), add_t.stride(0), skip_t.stride(0),
            mx.in_proj.weight.stride(0), cw.stride(0), cw.stride(2), *cs.stride(), wxp.stride(0),
            SRC=mode, ADD=add is not None, SKIP=skip is not None,
            HAS_IN_BIAS=mx.in_proj.bias is not None, HAS_CONV_BIAS=mx.conv1d.bias is not None,
            WIDTH=lv.width, BLOCK_C=lv.block_in, BLOCK_K=lv.block_k, BLOCK_P=_pow2(lv.n_part),
            BLOCK_RN=_pow2(lv.r + 2 * lv.n), num_warps=_warps(2 * lv.block_in * lv.block_k))
        st = lc.ssm_state
        _layer_ssm_kernel[(self.batch, lv.n_part)](
            lv.xc, lv.z, lv.xdbl_part, mx.dt_proj.weight, mx.dt_proj.bias, mx.A_log, mx.D,
            st, mx.out_proj.weight, mx.out_proj.bias if mx.out_proj.bias is not None else mx.D,
            lv.part, self.batch, lv.dm, lv.di, lv.r, lv.n, lv.n_xpart,
            mx.dt_proj.weight.stride(0), mx.A_log.stride(0), *st.stride(),
            mx.out_proj.weight.stride(0),
            HAS_OUT_BIAS=mx.out_proj.bias is not None, BLOCK_C=lv.block_ssm,
            BLOCK_R=_pow2(lv.r), BLOCK_N=_pow2(lv.n), BLOCK_P=_pow2(lv.n_xpart),
            BLOCK_M=lv.block_k, num_warps=_warps(lv.block_ssm * lv.block_k))

    def _stage(self, lv: _Level, blocks, caches, ids, src, add=None, skip=None) -> None:
        """A residual stage: its output is left as the level's stream (res + partials)."""
        for i, (block, lc) in enumerate(zip(blocks, caches)):
            if i == 0:
                self._layer(lv, block, lc, ids, src, add, skip)
            else:
                self._layer(lv, block, lc, ids, "res")

    def _pool(self, linear, out: torch.Tensor, x: Optional[torch.Tensor] = None,
              stream: Optional[_Level] = None) -> None:
        """out (B, M) = linear(x (B, K) buffer rows, or the output of ``stream``'s stage)."""
        w = linear.weight
        M, K = w.shape
        block_k = min(_pow2(K), 256)
        src = stream.part if stream is not None else x
        _pool_kernel[(self.batch, triton.cdiv(M, 16))](
            x if x is not None else src, src,
            stream.res[stream.parity] if stream is not None else src,
            w, linear.bias if linear.bias is not None else w, out,
            self.batch, K, M, stream.n_part if stream is not None else 0,
            x.stride(0) if x is not None else 0, w.stride(0), out.stride(0),
            FROM_STREAM=stream is not None, HAS_BIAS=linear.bias is not None, BLOCK_M=16,
            BLOCK_K=block_k, BLOCK_P=_pow2(stream.n_part if stream is not None else 1),
            num_warps=4)

    # ---- the step -------------------------------------------------------------------------------
    def _run_level(self, level: int, offset: int, cache, ids, src, consume) -> None:
        """``UNetBackbone._level`` for one step at ``offset`` (this level's step count), then
        ``consume(level)`` of the up stage's output. The up stage reads the up-pool buffer
        before the deeper level (which rewrites it) runs."""
        bb, lv = self.backbone, self.levels[level]
        if level == len(self.pools):
            self._stage(lv, bb.center, cache.layers["center"], ids, src)
            consume(level)
            return
        p = self.pools[level]
        r = offset % p
        down = bb.down_stages[level]
        if len(down):
            self._stage(lv, down, cache.layers[f"down{level}"], ids, src)
            src = "res"
        self._stage(lv, bb.up_stages[level], cache.layers[f"up{level}"], ids, src,
                    add=cache.up_buf[level][:, r], skip=cache.down_buf[level][:, r])
        consume(level)
        if r == p - 1:  # the group is complete: one step of the level below
            B = self.batch
            inner = self.levels[level + 1]
            self._pool(bb.down_pools[level], inner.x_in, x=cache.down_buf[level].view(B, -1))
            self._run_level(
                level + 1, offset // p, cache, ids, inner.x_in,
                lambda lvl: self._pool(bb.up_pools[level], cache.up_buf[level].view(B, -1),
                                       stream=self.levels[lvl]))

    def __call__(self, ids: torch.Tensor, cache, offset: int, sampler=None) -> torch.Tensor:
        if ids.shape != (self.batch,):
            raise ValueError(f"ids must be ({self.batch},), got {tuple(ids.shape)}")
        if cache.batch_size != self.batch:
            raise ValueError(f"cache was allocated for batch {cache.batch_size}, not {self.batch}")
        ids = ids.contiguous()  # the kernels index it densely (a no-op on a decoder's buffer)

        in_head = sampler is not None and sampler.use_triton  # else torch ops sample after

        def head(level: int) -> None:
            lv = self.levels[0]
            launch_head(lv.part, lv.res[lv.parity], lv.n_part, self.backbone.norm_f,
                        self.model.lm_head, self.vocab, self.logits, self.arrive,
                        sampler if in_head else None)
            if sampler is not None and not in_head:
                sampler.sample(self.logits)

        self._run_level(0, offset, cache, ids, "emb", head)
        return self.logits
