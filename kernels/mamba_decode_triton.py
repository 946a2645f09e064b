"""A whole Mamba LM decode step in 2 * n_layer + 1 Triton launches (+1 for sampling).

At batch 1 a decode step is a chain of tiny matrix-vector products: the eager ``MambaLM.step``
issues ~10 kernels a layer, and even inside a CUDA graph each launch costs microseconds of fixed
latency, far more than its arithmetic. This module fuses each layer into two kernels:

    layer_in   residual add (summing the previous layer's out_proj partials) + RMSNorm + in_proj
               + causal-conv update + SiLU, one program per block of d_inner channels
               (each program recomputes the d_model-wide norm: cheaper than a second launch)
    layer_ssm  x_proj (recomputed by every program over the full d_inner vector: it is small)
               + dt_proj + softplus + SSM state update + D skip + SiLU(z) gate + this block's
               share of out_proj, written as a partial sum (no atomics, so results are
               deterministic); the next kernel adds the partials

then one kernel for the final norm + LM head, and one for Gumbel-max sampling that also writes the
chosen token back into the step's input buffer (so captured steps can be replayed back to back).

Everything is computed in float32 from the model's weights (read in place, so training updates
are seen). The residual stream stays float32 throughout, which matches the model when
``residual_in_fp32`` (the default) and is slightly more precise than it otherwise.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _residual_chunk(ids_ptr, emb_ptr, part_ptr, res_ptr, b, k, mk, B, DM, N_PART, s_emb,
                    FIRST: tl.constexpr):
    """The residual stream x + residual on columns k of sequence b (float32)."""
    if FIRST:
        tok = tl.load(ids_ptr + b)
        h = tl.load(emb_ptr + tok * s_emb + k, mask=mk, other=0.0).to(tl.float32)
    else:
        h = tl.load(res_ptr + b * DM + k, mask=mk, other=0.0)
        for p in range(N_PART):
            h += tl.load(part_ptr + (p * B + b) * DM + k, mask=mk, other=0.0)
    return h


@triton.jit
def _layer_in_kernel(ids_ptr, emb_ptr, part_ptr, res_in_ptr, res_out_ptr, norm_w_ptr,
                     w_in_ptr, b_in_ptr, conv_w_ptr, conv_b_ptr, conv_state_ptr, xc_ptr, z_ptr,
                     B, DM, DI, N_PART, eps,
                     s_emb, s_win, s_cw_d, s_cw_k, s_cs_b, s_cs_d, s_cs_k,
                     FIRST: tl.constexpr, HAS_IN_BIAS: tl.constexpr, HAS_CONV_BIAS: tl.constexpr,
                     WIDTH: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    b = tl.program_id(0)
    pid = tl.program_id(1)
    c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = c < DI
    # pass 1: the residual stream (program 0 stores it for the next layer) and its mean square
    ss = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, DM, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mk = k < DM
        h = _residual_chunk(ids_ptr, emb_ptr, part_ptr, res_in_ptr, b, k, mk, B, DM, N_PART,
                            s_emb, FIRST)
        ss += h * h
        if pid == 0:
            tl.store(res_out_ptr + b * DM + k, h, mask=mk)
    rstd = 1.0 / tl.sqrt(tl.sum(ss, axis=0) / DM + eps)
    # pass 2: normalised input times this program's rows of in_proj (x rows c, z rows DI + c)
    acc_x = tl.zeros((BLOCK_C, BLOCK_K), dtype=tl.float32)
    acc_z = tl.zeros((BLOCK_C, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, DM, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mk = k < DM
        h = _residual_chunk(ids_ptr, emb_ptr, part_ptr, res_in_ptr, b, k, mk, B, DM, N_PART,
                            s_emb, FIRST)
        hn = h * rstd * tl.load(norm_w_ptr + k, mask=mk, other=0.0).to(tl.float32)
        m2 = mc[:, None] & mk[None, :]
        wx = tl.load(w_in_ptr + c[:, None] * s_win + k[None, :], mask=m2, other=0.0)
        wz = tl.load(w_in_ptr + (c + DI)[:, None] * s_win + k[None, :], mask=m2, other=0.0)
        acc_x += wx.to(tl.float32) * hn[None, :]
        acc_z += wz.to(tl.float32) * hn[None, :]
    x = tl.sum(acc_x, axis=1)
    z = tl.sum(acc_z, axis=1)
    if HAS_IN_BIAS:
        x += tl.load(b_in_ptr + c, mask=mc, other=0.0).to(tl.float32)
        z += tl.load(b_in_ptr + DI + c, mask=mc, other=0.0).to(tl.float32)
    # causal conv update on the x channels (state: the previous WIDTH-1 inputs, oldest first)
    acc = tl.load(conv_w_ptr + c * s_cw_d + (WIDTH - 1) * s_cw_k, mask=mc, other=0.0).to(tl.float32) * x
    if HAS_CONV_BIAS:
        acc += tl.load(conv_b_ptr + c, mask=mc, other=0.0).to(tl.float32)
    row = conv_state_ptr + b * s_cs_b + c * s_cs_d
    prev = tl.load(row, mask=mc, other=0.0)
    acc += tl.load(conv_w_ptr + c * s_cw_d, mask=mc, other=0.0).to(tl.float32) * prev.to(tl.float32)
    for j in tl.static_range(1, WIDTH - 1):
        cur = tl.load(row + j * s_cs_k, mask=mc, other=0.0)
        acc += tl.load(conv_w_ptr + c * s_cw_d + j * s_cw_k, mask=mc, other=0.0).to(tl.float32) \
            * cur.to(tl.float32)
        tl.store(row + (j - 1) * s_cs_k, cur, mask=mc)
    tl.store(row + (WIDTH - 2) * s_cs_k, x.to(conv_state_ptr.dtype.element_ty), mask=mc)
    xc = acc * tl.sigmoid(acc)
    tl.store(xc_ptr + b * DI + c, xc, mask=mc)
    tl.store(z_ptr + b * DI + c, z, mask=mc)


@triton.jit
def _layer_ssm_kernel(xc_ptr, z_ptr, w_xp_ptr, w_dt_ptr, dt_bias_ptr, A_log_ptr, D_ptr, state_ptr,
                      w_out_ptr, b_out_ptr, part_ptr,
                      B, DM, DI, R, N,
                      s_xp, s_dt, s_A, s_st_b, s_st_d, s_st_n, s_out,
                      HAS_OUT_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr):
    b = tl.program_id(0)
    pid = tl.program_id(1)
    c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = c < DI
    r = tl.arange(0, BLOCK_R)
    n = tl.arange(0, BLOCK_N)
    mr = r < R
    mn = n < N
    # x_proj over the whole d_inner vector: dt (rank R), B, C (N each)
    acc_dt = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
    acc_B = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_C = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, DI, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mk = k < DI
        xk = tl.load(xc_ptr + b * DI + k, mask=mk, other=0.0)[None, :]
        acc_dt += tl.load(w_xp_ptr + r[:, None] * s_xp + k[None, :], mask=mr[:, None] & mk[None, :],
                          other=0.0).to(tl.float32) * xk
        acc_B += tl.load(w_xp_ptr + (R + n)[:, None] * s_xp + k[None, :],
                         mask=mn[:, None] & mk[None, :], other=0.0).to(tl.float32) * xk
        acc_C += tl.load(w_xp_ptr + (R + N + n)[:, None] * s_xp + k[None, :],
                         mask=mn[:, None] & mk[None, :], other=0.0).to(tl.float32) * xk
    dt_low = tl.sum(acc_dt, axis=1)
    Bv = tl.sum(acc_B, axis=1)
    Cv = tl.sum(acc_C, axis=1)
    # dt_proj rows of this program's channels, + bias, softplus
    wdt = tl.load(w_dt_ptr + c[:, None] * s_dt + r[None, :], mask=mc[:, None] & mr[None, :],
                  other=0.0).to(tl.float32)
    dt = tl.sum(wdt * dt_low[None, :], axis=1) + tl.load(dt_bias_ptr + c, mask=mc, other=0.0).to(tl.float32)
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    # SSM state update and output
    m2 = mc[:, None] & mn[None, :]
    A = -tl.exp(tl.load(A_log_ptr + c[:, None] * s_A + n[None, :], mask=m2, other=0.0).to(tl.float32))
    x = tl.load(xc_ptr + b * DI + c, mask=mc, other=0.0)
    z = tl.load(z_ptr + b * DI + c, mask=mc, other=0.0)
    s_ptrs = state_ptr + b * s_st_b + c[:, None] * s_st_d + n[None, :] * s_st_n
    s = tl.load(s_ptrs, mask=m2, other=0.0).to(tl.float32)
    s = s * tl.exp(dt[:, None] * A) + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), mask=m2)
    y = tl.sum(s * Cv[None, :], axis=1) + x * tl.load(D_ptr + c, mask=mc, other=0.0).to(tl.float32)
    y = y * z * tl.sigmoid(z)
    # this program's share of out_proj: partial[pid, b, :] = W_out[:, c] @ y[c]
    for m0 in range(0, DM, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        mm = m < DM
        w = tl.load(w_out_ptr + m[:, None] * s_out + c[None, :], mask=mm[:, None] & mc[None, :],
                    other=0.0).to(tl.float32)
        o = tl.sum(w * y[None, :], axis=1)
        if HAS_OUT_BIAS:
            if pid == 0:
                o += tl.load(b_out_ptr + m, mask=mm, other=0.0).to(tl.float32)
        tl.store(part_ptr + (pid * B + b) * DM + m, o, mask=mm)


@triton.jit
def _head_kernel(part_ptr, res_ptr, norm_w_ptr, lm_w_ptr, logits_ptr, B, DM, V, N_PART, eps, s_lm,
                 BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    b = tl.program_id(0)
    v = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mv = v < V
    ss = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, DM, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        h = _residual_chunk(part_ptr, part_ptr, part_ptr, res_ptr, b, k, k < DM, B, DM, N_PART, 0,
                            False)
        ss += h * h
    rstd = 1.0 / tl.sqrt(tl.sum(ss, axis=0) / DM + eps)
    acc = tl.zeros((BLOCK_V, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, DM, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mk = k < DM
        h = _residual_chunk(part_ptr, part_ptr, part_ptr, res_ptr, b, k, mk, B, DM, N_PART, 0, False)
        hn = h * rstd * tl.load(norm_w_ptr + k, mask=mk, other=0.0).to(tl.float32)
        w = tl.load(lm_w_ptr + v[:, None] * s_lm + k[None, :], mask=mv[:, None] & mk[None, :],
                    other=0.0).to(tl.float32)
        acc += w * hn[None, :]
    tl.store(logits_ptr + b * V + v, tl.sum(acc, axis=1), mask=mv)


@triton.jit
def _sample_kernel(logits_ptr, ids_ptr, tokens_ptr, counter_ptr, V, max_tokens, seed, inv_temp,
                   GREEDY: tl.constexpr, BLOCK_V: tl.constexpr):
    """Gumbel-max: argmax(logits / T + G), G = -log(-log(U)), draws a token from softmax(logits/T).
    The noise comes from Philox keyed by (seed + this row's step counter), so replays differ."""
    b = tl.program_id(0)
    v = tl.arange(0, BLOCK_V)
    mv = v < V
    score = tl.load(logits_ptr + b * V + v, mask=mv, other=float("-inf"))
    step = tl.load(counter_ptr + b)
    if not GREEDY:
        u = tl.rand(seed + step, b * BLOCK_V + v)
        score = score * inv_temp - tl.log(-tl.log(u))
        score = tl.where(mv, score, float("-inf"))
    tok = tl.argmax(score, axis=0)
    tl.store(ids_ptr + b, tok.to(ids_ptr.dtype.element_ty))
    tl.store(tokens_ptr + b * max_tokens + step, tok.to(tokens_ptr.dtype.element_ty),
             mask=step < max_tokens)
    tl.store(counter_ptr + b, step + 1)


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
    if cfg.d_state > 256 or cfg.dt_rank_value > 1024:
        return "d_state > 256 or dt_rank > 1024"
    return None


class FusedMambaStep:
    """``model.step(ids, cache)`` for a Mamba LM as a handful of fused Triton kernels.

    Owns its float32 workspace, so one instance serves one batch size. ``__call__`` returns the
    float32 logits (B, vocab_size) in a buffer it reuses; ``sample`` draws the next tokens from
    them with Gumbel-max and writes them back into ``ids`` (in place) and into ``tokens``.
    """

    def __init__(self, model, batch_size: int, block_in: int = 32, block_ssm: int = 64,
                 num_warps: int = 4):
        why = fused_step_unsupported(model)
        if why:
            raise ValueError(f"FusedMambaStep: {why}")
        cfg = model.config
        dev = next(model.parameters()).device
        self.model, self.batch = model, batch_size
        self.dm, self.di, self.n, self.r = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank_value
        self.width, self.vocab, self.eps = cfg.d_conv, cfg.vocab_size, model.backbone.norm_f.eps
        self.block_in = min(block_in, triton.next_power_of_2(self.di))
        self.block_ssm = min(block_ssm, triton.next_power_of_2(self.di))
        self.num_warps = num_warps
        self.n_part = triton.cdiv(self.di, self.block_ssm)
        f32 = dict(device=dev, dtype=torch.float32)
        self.part = torch.zeros(self.n_part, batch_size, self.dm, **f32)
        self.res = torch.zeros(2, batch_size, self.dm, **f32)  # ping-pong: read one, write other
        self.xc = torch.zeros(batch_size, self.di, **f32)
        self.z = torch.zeros(batch_size, self.di, **f32)
        self.logits = torch.zeros(batch_size, self.vocab, **f32)

    def __call__(self, ids: torch.Tensor, cache) -> torch.Tensor:
        B, dm, di = self.batch, self.dm, self.di
        if ids.shape != (B,):
            raise ValueError(f"ids must be ({B},), got {tuple(ids.shape)}")
        bb = self.model.backbone
        emb = bb.embedding.weight
        bk_in = min(triton.next_power_of_2(dm), max(16, 8192 // (2 * self.block_in)))
        bk_ssm = min(triton.next_power_of_2(di), 128)
        block_r = max(triton.next_power_of_2(self.r), 2)
        block_n = max(triton.next_power_of_2(self.n), 2)
        block_m = min(triton.next_power_of_2(dm), max(16, 4096 // self.block_ssm))
        for i, (layer, lc) in enumerate(zip(bb.layers, cache.layers)):
            mx = layer.mixer
            res_in, res_out = self.res[i % 2], self.res[(i + 1) % 2]
            cw = mx.conv1d.weight
            cs = lc.conv_state
            _layer_in_kernel[(B, triton.cdiv(di, self.block_in))](
                ids, emb, self.part, res_in, res_out, layer.norm.weight,
                mx.in_proj.weight, mx.in_proj.bias if mx.in_proj.bias is not None else emb,
                cw, mx.conv1d.bias if mx.conv1d.bias is not None else emb, cs, self.xc, self.z,
                B, dm, di, self.n_part, layer.norm.eps,
                emb.stride(0), mx.in_proj.weight.stride(0), cw.stride(0), cw.stride(2),
                *cs.stride(),
                FIRST=i == 0, HAS_IN_BIAS=mx.in_proj.bias is not None,
                HAS_CONV_BIAS=mx.conv1d.bias is not None, WIDTH=self.width,
                BLOCK_C=self.block_in, BLOCK_K=bk_in, num_warps=self.num_warps)
            st = lc.ssm_state
            _layer_ssm_kernel[(B, self.n_part)](
                self.xc, self.z, mx.x_proj.weight, mx.dt_proj.weight, mx.dt_proj.bias, mx.A_log,
                mx.D, st, mx.out_proj.weight,
                mx.out_proj.bias if mx.out_proj.bias is not None else emb, self.part,
                B, dm, di, self.r, self.n,
                mx.x_proj.weight.stride(0), mx.dt_proj.weight.stride(0), mx.A_log.stride(0),
                *st.stride(), mx.out_proj.weight.stride(0),
                HAS_OUT_BIAS=mx.out_proj.bias is not None, BLOCK_C=self.block_ssm,
                BLOCK_R=block_r, BLOCK_N=block_n, BLOCK_K=bk_ssm, BLOCK_M=block_m,
                num_warps=self.num_warps)
        res_last = self.res[len(bb.layers) % 2]
        lm_w = self.model.lm_head.weight
        block_v = min(triton.next_power_of_2(self.vocab), 32)
        bk_head = min(triton.next_power_of_2(dm), max(16, 8192 // block_v))
        _head_kernel[(B, triton.cdiv(self.vocab, block_v))](
            self.part, res_last, bb.norm_f.weight, lm_w, self.logits, B, dm, self.vocab,
            self.n_part, bb.norm_f.eps, lm_w.stride(0),
            BLOCK_V=block_v, BLOCK_K=bk_head, num_warps=self.num_warps)
        return self.logits

    def sample(self, ids: torch.Tensor, tokens: torch.Tensor, counter: torch.Tensor,
               temperature: float, seed: int) -> None:
        """Next token of each row from ``self.logits`` into ``ids`` (B,) and
        ``tokens[b, counter[b]]`` (B, T); ``counter`` (B,) int32 advances by one."""
        block_v = triton.next_power_of_2(self.vocab)
        greedy = temperature == 0
        _sample_kernel[(self.batch,)](
            self.logits, ids, tokens, counter, self.vocab, tokens.shape[1], seed,
            0.0 if greedy else 1.0 / temperature, GREEDY=greedy, BLOCK_V=block_v,
            num_warps=4 if block_v >= 1024 else 1)
