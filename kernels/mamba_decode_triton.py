"""A whole Mamba LM decode step, sampling included, in 2 * n_layer + 1 Triton launches.

At batch 1 a decode step is a chain of tiny matrix-vector products: the eager ``MambaLM.step``
issues ~10 kernels a layer, and even inside a CUDA graph each launch costs microseconds of fixed
latency, far more than its arithmetic. This module fuses each layer into two kernels, each a
single round of independent loads (no loops: their trips would serialise the memory latency):

    layer_in   residual add (summing the previous layer's out_proj partials) + RMSNorm + in_proj
               + causal-conv update + SiLU, one program per block of d_inner channels (each
               program recomputes the d_model-wide norm: cheaper than another launch), + this
               block's share of x_proj, written as a partial sum
    layer_ssm  sum of the x_proj partials -> dt (rank R), B, C; dt_proj + softplus, SSM state
               update, D skip, SiLU(z) gate, + this block's share of out_proj, again a partial sum

Partial sums (not atomics) keep the results deterministic; the next kernel adds them. Then one
kernel for the final norm + LM head (``decode_sample_triton.launch_head``) whose last program to
finish also draws the next token and writes it back into the step's input buffer, so captured
steps can be replayed back to back. ``layer_in``'s input row (``_stage_row``) also serves the
U-Net decoder (unet_decode_triton), whose stages read it from pooling buffers.

Everything is computed in float32 from the model's weights (read in place, so training updates
are seen). The residual stream stays float32 throughout, which matches the model when
``residual_in_fp32`` (the default) and is slightly more precise than it otherwise. Whole rows of
d_model live in registers, so the fused path covers d_model <= 512 (small LMs, where launches
dominate); larger models decode through the model's own step.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .causal_conv1d_triton import conv_history, conv_shift_in

MAX_D_MODEL = 512


# where a layer's input comes from (see _stage_row)
SRC_EMB, SRC_X, SRC_RES = 0, 1, 2


@triton.jit
def _stage_row(ids_ptr, emb_ptr, x_ptr, part_ptr, res_in_ptr, add_ptr, skip_ptr, res_out_ptr,
               norm_w_ptr, b, B, DM, N_PART, eps, s_emb, s_x, s_add, s_skip, WRITE,
               SRC: tl.constexpr, ADD: tl.constexpr, SKIP: tl.constexpr, BLOCK_P: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """RMSNorm of one layer's input for row b (float32, BLOCK_K wide), the residual stream, from
    SRC_EMB the token's embedding (a first layer), SRC_X a row buffer (s_x) or SRC_RES the
    previous stream plus the sum of the previous layer's out_proj partials. The U-Net
    (unet_decode_triton) also uses SKIP, storing that value (a stage output) into a down-pool
    buffer row, and ADD, adding an up-pool buffer row. WRITE (the first program of the row)
    stores the stream for the next layer."""
    k = tl.arange(0, BLOCK_K)
    mk = k < DM
    if SRC == 0:
        tok = tl.load(ids_ptr + b)
        h = tl.load(emb_ptr + tok * s_emb + k, mask=mk, other=0.0).to(tl.float32)
    elif SRC == 1:
        h = tl.load(x_ptr + b * s_x + k, mask=mk, other=0.0).to(tl.float32)
    else:
        p = tl.arange(0, BLOCK_P)
        parts = tl.load(part_ptr + (p[:, None] * B + b) * DM + k[None, :],
                        mask=(p < N_PART)[:, None] & mk[None, :], other=0.0)
        h = tl.load(res_in_ptr + b * DM + k, mask=mk, other=0.0) + tl.sum(parts, axis=0)
    if SKIP:
        if WRITE:
            tl.store(skip_ptr + b * s_skip + k, h.to(skip_ptr.dtype.element_ty), mask=mk)
    if ADD:
        h += tl.load(add_ptr + b * s_add + k, mask=mk, other=0.0).to(tl.float32)
    if WRITE:
        tl.store(res_out_ptr + b * DM + k, h, mask=mk)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / DM + eps)
    return h * rstd * tl.load(norm_w_ptr + k, mask=mk, other=0.0).to(tl.float32)


@triton.jit
def _layer_in_kernel(ids_ptr, emb_ptr, x_ptr, part_ptr, res_in_ptr, add_ptr, skip_ptr,
                     res_out_ptr, norm_w_ptr, w_in_ptr, b_in_ptr, conv_w_ptr, conv_b_ptr,
                     conv_state_ptr, w_xp_ptr, xc_ptr, z_ptr, xdbl_part_ptr,
                     B, DM, DI, RN, N_PART, eps,
                     s_emb, s_x, s_add, s_skip, s_win, s_cw_d, s_cw_k, s_cs_b, s_cs_d, s_cs_k, s_xp,
                     SRC: tl.constexpr, ADD: tl.constexpr, SKIP: tl.constexpr,
                     HAS_IN_BIAS: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, WIDTH: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
                     BLOCK_RN: tl.constexpr):
    b = tl.program_id(0)
    pid = tl.program_id(1)
    c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = c < DI
    k = tl.arange(0, BLOCK_K)
    m2 = mc[:, None] & (k < DM)[None, :]
    # every load that does not wait on the norm goes first, so their latencies overlap
    wx = tl.load(w_in_ptr + c[:, None] * s_win + k[None, :], mask=m2, other=0.0).to(tl.float32)
    wz = tl.load(w_in_ptr + (c + DI)[:, None] * s_win + k[None, :], mask=m2, other=0.0).to(tl.float32)
    j = tl.arange(0, BLOCK_RN)
    wxp = tl.load(w_xp_ptr + j[:, None] * s_xp + c[None, :], mask=(j < RN)[:, None] & mc[None, :],
                  other=0.0).to(tl.float32)
    row = conv_state_ptr + b * s_cs_b + c * s_cs_d
    conv_acc, c1, c2 = conv_history(row, s_cs_k, conv_w_ptr, s_cw_d, s_cw_k, c, mc, WIDTH)
    w_last = tl.load(conv_w_ptr + c * s_cw_d + (WIDTH - 1) * s_cw_k, mask=mc, other=0.0).to(tl.float32)
    if HAS_CONV_BIAS:
        conv_acc += tl.load(conv_b_ptr + c, mask=mc, other=0.0).to(tl.float32)
    hn = _stage_row(ids_ptr, emb_ptr, x_ptr, part_ptr, res_in_ptr, add_ptr, skip_ptr, res_out_ptr,
                    norm_w_ptr, b, B, DM, N_PART, eps, s_emb, s_x, s_add, s_skip, pid == 0,
                    SRC, ADD, SKIP, BLOCK_P, BLOCK_K)
    x = tl.sum(wx * hn[None, :], axis=1)
    z = tl.sum(wz * hn[None, :], axis=1)
    if HAS_IN_BIAS:
        x += tl.load(b_in_ptr + c, mask=mc, other=0.0).to(tl.float32)
        z += tl.load(b_in_ptr + DI + c, mask=mc, other=0.0).to(tl.float32)
    # causal conv update on the x channels (state: the previous WIDTH-1 inputs, oldest first)
    acc = conv_acc + w_last * x
    conv_shift_in(row, s_cs_k, mc, x, c1, c2, WIDTH)
    xc = acc * tl.sigmoid(acc)  # zero on masked channels
    tl.store(xc_ptr + b * DI + c, xc, mask=mc)
    tl.store(z_ptr + b * DI + c, z, mask=mc)
    # this block's share of x_proj: rows [dt (R) | B (N) | C (N)], columns c
    tl.store(xdbl_part_ptr + (pid * B + b) * RN + j, tl.sum(wxp * xc[None, :], axis=1), mask=j < RN)


@triton.jit
def _layer_ssm_kernel(xc_ptr, z_ptr, xdbl_part_ptr, w_dt_ptr, dt_bias_ptr, A_log_ptr, D_ptr,
                      state_ptr, w_out_ptr, b_out_ptr, part_ptr,
                      B, DM, DI, R, N, N_XPART,
                      s_dt, s_A, s_st_b, s_st_d, s_st_n, s_out,
                      HAS_OUT_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr):
    b = tl.program_id(0)
    pid = tl.program_id(1)
    c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = c < DI
    r = tl.arange(0, BLOCK_R)
    n = tl.arange(0, BLOCK_N)
    mr = r < R
    mn = n < N
    m2 = mc[:, None] & mn[None, :]
    # every load of this kernel is independent of the others: issue them all up front
    p = tl.arange(0, BLOCK_P)
    mp = (p < N_XPART)[:, None]
    base = xdbl_part_ptr + (p[:, None] * B + b) * (R + 2 * N)
    dt_low = tl.sum(tl.load(base + r[None, :], mask=mp & mr[None, :], other=0.0), axis=0)
    Bv = tl.sum(tl.load(base + R + n[None, :], mask=mp & mn[None, :], other=0.0), axis=0)
    Cv = tl.sum(tl.load(base + R + N + n[None, :], mask=mp & mn[None, :], other=0.0), axis=0)
    wdt = tl.load(w_dt_ptr + c[:, None] * s_dt + r[None, :], mask=mc[:, None] & mr[None, :],
                  other=0.0).to(tl.float32)
    dtb = tl.load(dt_bias_ptr + c, mask=mc, other=0.0).to(tl.float32)
    A = -tl.exp(tl.load(A_log_ptr + c[:, None] * s_A + n[None, :], mask=m2, other=0.0).to(tl.float32))
    x = tl.load(xc_ptr + b * DI + c, mask=mc, other=0.0)
    z = tl.load(z_ptr + b * DI + c, mask=mc, other=0.0)
    Dv = tl.load(D_ptr + c, mask=mc, other=0.0).to(tl.float32)
    s_ptrs = state_ptr + b * s_st_b + c[:, None] * s_st_d + n[None, :] * s_st_n
    s = tl.load(s_ptrs, mask=m2, other=0.0).to(tl.float32)
    m = tl.arange(0, BLOCK_M)
    mm = m < DM
    w_out = tl.load(w_out_ptr + m[:, None] * s_out + c[None, :], mask=mm[:, None] & mc[None, :],
                    other=0.0).to(tl.float32)
    # dt_proj + bias + softplus, SSM update, output
    dt = tl.sum(wdt * dt_low[None, :], axis=1) + dtb
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    s = s * tl.exp(dt[:, None] * A) + (dt * x)[:, None] * Bv[None, :]
    tl.debug_barrier()  # every warp has read the old state before any writes the new one
    tl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), mask=m2)
    y = tl.sum(s * Cv[None, :], axis=1) + x * Dv
    y = y * z * tl.sigmoid(z)  # zero on masked channels
    # this block's share of out_proj: partial[pid, b, :] = W_out[:, c] @ y[c]
    o = tl.sum(w_out * y[None, :], axis=1)
    if HAS_OUT_BIAS:
        if pid == 0:
            o += tl.load(b_out_ptr + m, mask=mm, other=0.0).to(tl.float32)
    tl.store(part_ptr + (pid * B + b) * DM + m, o, mask=mm)


def fused_step_unsupported(model) -> str | None:
    """Why ``FusedMambaStep`` cannot run ``model`` (None when it can)."""
    from seqmamba.model.mixer import MambaMixer

    backbone = getattr(model, "backbone", None)
    cfg = getattr(model, "config", None)
    if backbone is None or cfg is None or not hasattr(model, "lm_head"):
        return "needs a MambaLM (backbone + lm_head)"
    if getattr(cfg, "bidirectional", False):
        return "bidirectional models cannot decode recurrently"
    layers = getattr(backbone, "layers", None)
    if layers is None or not all(type(layer.mixer) is MambaMixer for layer in layers):
        return "fused decode covers the plain Mamba backbone only"
    if cfg.d_model > MAX_D_MODEL:
        return f"fused decode keeps whole rows in registers: d_model <= {MAX_D_MODEL}"
    if cfg.d_state > 256 or cfg.dt_rank_value + 2 * cfg.d_state > 1024:
        return "d_state > 256 or dt_rank + 2 * d_state > 1024"
    return None


def _pow2(n: int) -> int:
    """Block size for n values (at least 2: Triton's reductions want a real axis)."""
    return max(triton.next_power_of_2(n), 2)


def _warps(tile: int) -> int:
    """Warps for a program holding a weight tile of ``tile`` values (the decode kernels'
    rule: 8 from 8k values up, else 4)."""
    return 8 if tile >= 8192 else 4


class FusedMambaStep:
    """``model.step(ids, cache)`` for a Mamba LM as a handful of fused Triton kernels.

    Owns its float32 workspace, so one instance serves one batch size. ``__call__`` returns the
    float32 logits (B, vocab_size) in a buffer it reuses; given a ``decode_graph.DeviceSampler``
    its LM-head launch also draws the next tokens (``decode_sample_triton``) into the sampler's
    ``ids`` (the step's input) and token buffer.
    block_in / block_ssm: d_inner channels per program of the two layer kernels (None: chosen
    from d_model so that each program's weight tile is ~8-16k values).
    """

    def __init__(self, model, batch_size: int, block_in: int | None = None,
                 block_ssm: int | None = None):
        why = fused_step_unsupported(model)
        if why:
            raise ValueError(f"FusedMambaStep: {why}")
        cfg = model.config
        dev = next(model.parameters()).device
        self.model, self.batch = model, batch_size
        self.dm, self.di, self.n, self.r = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank_value
        self.width, self.vocab = cfg.d_conv, cfg.vocab_size
        self.block_k = _pow2(self.dm)
        di2 = _pow2(self.di)
        self.block_in = min(block_in or max(8, 8192 // self.block_k), di2)
        self.block_ssm = min(block_ssm or max(16, 16384 // self.block_k), di2)
        self.n_xpart = triton.cdiv(self.di, self.block_in)
        self.n_part = triton.cdiv(self.di, self.block_ssm)
        f32 = dict(device=dev, dtype=torch.float32)
        self.part = torch.zeros(self.n_part, batch_size, self.dm, **f32)
        self.xdbl_part = torch.zeros(self.n_xpart, batch_size, self.r + 2 * self.n, **f32)
        self.res = torch.zeros(2, batch_size, self.dm, **f32)  # ping-pong: read one, write other
        self.xc = torch.zeros(batch_size, self.di, **f32)
        self.z = torch.zeros(batch_size, self.di, **f32)
        self.logits = torch.zeros(batch_size, self.vocab, **f32)
        self.arrive = torch.zeros(batch_size, device=dev, dtype=torch.int32)  # head programs done

    def layer_in(self, i: int, ids: torch.Tensor, cache) -> None:
        layer, lc = self.model.backbone.layers[i], cache.layers[i]
        mx, emb = layer.mixer, self.model.backbone.embedding.weight
        cw, cs, wxp = mx.conv1d.weight, lc.conv_state, mx.x_proj.weight
        _layer_in_kernel[(self.batch, self.n_xpart)](
            ids, emb, emb, self.part, self.res[i % 2], emb, emb, self.res[(i + 1) % 2],
            layer.norm.weight,
            mx.in_proj.weight, mx.in_proj.bias if mx.in_proj.bias is not None else emb,
            cw, mx.conv1d.bias if mx.conv1d.bias is not None else emb, cs, wxp,
            self.xc, self.z, self.xdbl_part,
            self.batch, self.dm, self.di, self.r + 2 * self.n, self.n_part, layer.norm.eps,
            emb.stride(0), 0, 0, 0, mx.in_proj.weight.stride(0), cw.stride(0), cw.stride(2),
            *cs.stride(), wxp.stride(0),
            SRC=SRC_EMB if i == 0 else SRC_RES, ADD=False, SKIP=False,
            HAS_IN_BIAS=mx.in_proj.bias is not None,
            HAS_CONV_BIAS=mx.conv1d.bias is not None, WIDTH=self.width, BLOCK_C=self.block_in,
            BLOCK_K=self.block_k, BLOCK_P=_pow2(self.n_part), BLOCK_RN=_pow2(self.r + 2 * self.n),
            num_warps=_warps(2 * self.block_in * self.block_k))

    def layer_ssm(self, i: int, cache) -> None:
        mx, st = self.model.backbone.layers[i].mixer, cache.layers[i].ssm_state
        _layer_ssm_kernel[(self.batch, self.n_part)](
            self.xc, self.z, self.xdbl_part, mx.dt_proj.weight, mx.dt_proj.bias, mx.A_log, mx.D,
            st, mx.out_proj.weight,
            mx.out_proj.bias if mx.out_proj.bias is not None else mx.D, self.part,
            self.batch, self.dm, self.di, self.r, self.n, self.n_xpart,
            mx.dt_proj.weight.stride(0), mx.A_log.stride(0), *st.stride(),
            mx.out_proj.weight.stride(0),
            HAS_OUT_BIAS=mx.out_proj.bias is not None, BLOCK_C=self.block_ssm,
            BLOCK_R=_pow2(self.r), BLOCK_N=_pow2(self.n), BLOCK_P=_pow2(self.n_xpart),
            BLOCK_M=self.block_k, num_warps=_warps(self.block_ssm * self.block_k))

    def head(self, sampler=None) -> None:
        """Final norm + LM head into ``self.logits``; with ``sampler`` (a
        ``decode_graph.DeviceSampler``) the same launch also samples the next tokens."""
        from .decode_sample_triton import launch_head
        bb = self.model.backbone
        launch_head(self.part, self.res[len(bb.layers) % 2], self.n_part, bb.norm_f,
                    self.model.lm_head, self.vocab, self.logits, self.arrive, sampler)

    def __call__(self, ids: torch.Tensor, cache, sampler=None) -> torch.Tensor:
        """Logits (B, vocab) for input ``ids`` (B,); ``sampler`` as in ``head``."""
        if ids.shape != (self.batch,):
            raise ValueError(f"ids must be ({self.batch},), got {tuple(ids.shape)}")
        for i in range(len(self.model.backbone.layers)):
            self.layer_in(i, ids, cache)
            self.layer_ssm(i, cache)
        self.head(sampler)
        return self.logits
