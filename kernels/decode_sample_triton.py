"""Next-token sampling on the device, for decode loops recorded in CUDA graphs.

A graphed decoder replays many steps with no host work between them, so the sampler has to run
on the device and write its token straight into the next step's input. These kernels do, for a
``decode_graph.DeviceSampler`` (its settings and buffers), in one launch (or inside the LM-head
kernel, by its last program to finish):

    excluded id (e.g. an audio model's pad) -> temperature -> top-k -> top-p -> Gumbel-max draw,
    ids[b] <- token;  tokens[b, counter[b]] <- token;  counter[b] += 1;
    loglik[b] += log softmax(logits)[token]   (untempered, unfiltered, excluded id renormalised)

Its distribution is ``heads.lm.sample_next``'s: top-k keeps the scores >= the k-th largest, top-p
then drops a token when the tokens scoring strictly above it already hold top_p of the (top-k
renormalised) mass. Both are computed pairwise (V x V comparisons in blocks) rather than by a
sort; the only difference from sample_next is that tokens with exactly equal scores are kept or
dropped together (sample_next's sort orders them arbitrarily).

Randomness: Gumbel noise from Philox keyed by (seed, counter[b]) and offset by the row, so each
step of each row draws fresh noise, replays of a graph differ, and a given seed reproduces its
tokens. The seed lives in a device buffer, so a new seed needs no new graph.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .mamba_decode_triton import SRC_RES, _pow2, _stage_row, _warps

# jit code may read a module global only when it is a tl.constexpr (a plain int is a NameError at
# compile time on the GPU, which the interpreter does not catch)
_FROM_RES = tl.constexpr(SRC_RES)
MAX_SAMPLE_VOCAB = 4096  # whole rows in registers; the pairwise top-k/top-p cost grows as V^2


@triton.jit
def _scores_at(row_ptr, j0, V, ban, inv_temp, BAN: tl.constexpr, BLOCK_J: tl.constexpr):
    """Tempered scores of columns j0 .. j0 + BLOCK_J (-inf outside the row or excluded)."""
    j = j0 + tl.arange(0, BLOCK_J)
    mj = j < V
    if BAN:
        mj = mj & (j != ban)
    sj = tl.load(row_ptr + j, mask=mj, other=float("-inf"), cache_modifier=".cg").to(tl.float32)
    return sj * inv_temp


@triton.jit
def _count_above(row_ptr, s, V, ban, inv_temp, BAN: tl.constexpr, BLOCK_V: tl.constexpr,
                 BLOCK_J: tl.constexpr):
    """For every score s[i]: how many scores are strictly larger (float32 counts). Rows up to
    1024 wide unroll the loop, so that all its loads are in flight together."""
    cnt = tl.zeros_like(s)
    if BLOCK_V <= 1024:
        for j0 in tl.static_range(0, BLOCK_V, BLOCK_J):
            sj = _scores_at(row_ptr, j0, V, ban, inv_temp, BAN, BLOCK_J)
            cnt += tl.sum(tl.where(sj[None, :] > s[:, None], 1.0, 0.0), axis=1)
    else:
        for j0 in range(0, V, BLOCK_J):
            sj = _scores_at(row_ptr, j0, V, ban, inv_temp, BAN, BLOCK_J)
            cnt += tl.sum(tl.where(sj[None, :] > s[:, None], 1.0, 0.0), axis=1)
    return cnt


@triton.jit
def _mass_above(row_ptr, s, V, ban, inv_temp, thr, m, BAN: tl.constexpr, BLOCK_V: tl.constexpr,
                BLOCK_J: tl.constexpr):
    """For every score s[i]: sum of exp(s_j - m) over the scores s_j > s[i] that are >= thr."""
    mass = tl.zeros_like(s)
    if BLOCK_V <= 1024:
        for j0 in tl.static_range(0, BLOCK_V, BLOCK_J):
            sj = _scores_at(row_ptr, j0, V, ban, inv_temp, BAN, BLOCK_J)
            ej = tl.where(sj >= thr, tl.exp(sj - m), 0.0)
            mass += tl.sum(tl.where(sj[None, :] > s[:, None], ej[None, :], 0.0), axis=1)
    else:
        for j0 in range(0, V, BLOCK_J):
            sj = _scores_at(row_ptr, j0, V, ban, inv_temp, BAN, BLOCK_J)
            ej = tl.where(sj >= thr, tl.exp(sj - m), 0.0)
            mass += tl.sum(tl.where(sj[None, :] > s[:, None], ej[None, :], 0.0), axis=1)
    return mass


@triton.jit
def sample_row(logits_ptr, b, V, ban, seed_ptr, ids_ptr, tokens_ptr, counter_ptr, ll_ptr,
               max_tokens, inv_temp, top_k, top_p,
               GREEDY: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr, BAN: tl.constexpr,
               LOGLIK: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_J: tl.constexpr):
    """Draw row b's next token from logits[b, :V] and record it (see the module docstring).

    Loads use .cg (L2, never a stale L1 line): the logits may have been written by other
    programs of the same launch."""
    v = tl.arange(0, BLOCK_V)
    ok = v < V
    if BAN:
        ok = ok & (v != ban)
    row = logits_ptr + b * V
    x = tl.load(row + v, mask=ok, other=float("-inf"), cache_modifier=".cg").to(tl.float32)
    step = tl.load(counter_ptr + b)
    if GREEDY:
        score = x
    else:
        s = x * inv_temp
        keep = ok
        if TOP_K:
            keep = keep & (_count_above(row, s, V, ban, inv_temp, BAN, BLOCK_V, BLOCK_J) < top_k)
        if TOP_P:
            thr = tl.min(tl.where(keep, s, float("inf")), axis=0)  # lowest kept (k-th) score
            m = tl.max(tl.where(keep, s, float("-inf")), axis=0)
            total = tl.sum(tl.where(keep, tl.exp(s - m), 0.0), axis=0)
            above = _mass_above(row, s, V, ban, inv_temp, thr, m, BAN, BLOCK_V, BLOCK_J)
            keep = keep & (above < top_p * total)
        key = tl.load(seed_ptr) + step.to(tl.int64)
        u = tl.rand(key, b * BLOCK_V + v)
        score = tl.where(keep, s - tl.log(-tl.log(u)), float("-inf"))
    tok = tl.argmax(score, axis=0)
    if LOGLIK:
        mx = tl.max(x, axis=0)
        lse = mx + tl.log(tl.sum(tl.exp(x - mx), axis=0))
        x_tok = tl.sum(tl.where(v == tok, x, 0.0), axis=0)
        tl.store(ll_ptr + b, tl.load(ll_ptr + b) + (x_tok - lse).to(tl.float64))
    tl.store(ids_ptr + b, tok.to(ids_ptr.dtype.element_ty))
    tl.store(tokens_ptr + b * max_tokens + step, tok.to(tokens_ptr.dtype.element_ty),
             mask=step < max_tokens)
    tl.store(counter_ptr + b, step + 1)


@triton.jit
def _sample_kernel(logits_ptr, V, ban, seed_ptr, ids_ptr, tokens_ptr, counter_ptr, ll_ptr,
                   max_tokens, inv_temp, top_k, top_p,
                   GREEDY: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr,
                   BAN: tl.constexpr, LOGLIK: tl.constexpr, BLOCK_V: tl.constexpr,
                   BLOCK_J: tl.constexpr):
    sample_row(logits_ptr, tl.program_id(0), V, ban, seed_ptr, ids_ptr, tokens_ptr, counter_ptr,
               ll_ptr, max_tokens, inv_temp, top_k, top_p, GREEDY, TOP_K, TOP_P, BAN, LOGLIK,
               BLOCK_V, BLOCK_J)


@triton.jit
def _head_kernel(part_ptr, res_ptr, norm_w_ptr, lm_w_ptr, logits_ptr, arrive_ptr,
                 ban, seed_ptr, ids_ptr, tokens_ptr, counter_ptr, ll_ptr,
                 B, DM, V, N_PART, eps, s_lm, max_tokens, inv_temp, top_k, top_p,
                 SAMPLE: tl.constexpr, GREEDY: tl.constexpr, TOP_K: tl.constexpr,
                 TOP_P: tl.constexpr, BAN: tl.constexpr, LOGLIK: tl.constexpr,
                 BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
                 BLOCK_VS: tl.constexpr, BLOCK_J: tl.constexpr):
    """Final RMSNorm of the residual stream (res + sum of the out_proj partials) + LM head; with
    SAMPLE the last program of each row to finish also samples it (saves a launch)."""
    b = tl.program_id(0)
    v = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mv = v < V
    k = tl.arange(0, BLOCK_K)
    w = tl.load(lm_w_ptr + v[:, None] * s_lm + k[None, :], mask=mv[:, None] & (k < DM)[None, :],
                other=0.0).to(tl.float32)
    hn = _stage_row(part_ptr, part_ptr, part_ptr, part_ptr, res_ptr, part_ptr, part_ptr, res_ptr,
                    norm_w_ptr, b, B, DM, N_PART, eps, 0, 0, 0, 0, False, _FROM_RES, False, False,
                    BLOCK_P, BLOCK_K)
    tl.store(logits_ptr + b * V + v, tl.sum(w * hn[None, :], axis=1), mask=mv)
    if SAMPLE:
        # The barrier orders every thread's logits stores before the (acq_rel) atomic, whose
        # acquire side makes all programs' logits visible to the last one to arrive.
        tl.debug_barrier()
        arrived = tl.atomic_add(arrive_ptr + b, 1)
        if arrived == tl.num_programs(1) - 1:
            tl.store(arrive_ptr + b, 0)  # ready for the next step
            sample_row(logits_ptr, b, V, ban, seed_ptr, ids_ptr, tokens_ptr, counter_ptr, ll_ptr,
                       max_tokens, inv_temp, top_k, top_p, GREEDY, TOP_K, TOP_P, BAN, LOGLIK,
                       BLOCK_VS, BLOCK_J)


def sampler_flags(sampler, V: int) -> dict:
    """The compile-time switches of ``sample_row`` for a DeviceSampler over V logits."""
    greedy = sampler.temperature == 0
    return dict(GREEDY=greedy,
                TOP_K=not greedy and sampler.top_k is not None and sampler.top_k < V,
                TOP_P=not greedy and sampler.top_p is not None and sampler.top_p < 1.0,
                BAN=sampler.ban_token is not None, LOGLIK=sampler.track_loglik,
                BLOCK_J=min(32, _pow2(V)))


def sampler_scalars(sampler) -> tuple:
    """(1 / temperature, top_k, top_p) as the kernels take them."""
    return (0.0 if sampler.temperature == 0 else 1.0 / sampler.temperature, sampler.top_k or 0,
            1.0 if sampler.top_p is None else float(sampler.top_p))


def launch_sample(sampler, logits: torch.Tensor) -> None:
    """``DeviceSampler.sample`` on the device: one program per row."""
    V = logits.shape[1]
    logits = logits.contiguous()
    flags = sampler_flags(sampler, V)
    _sample_kernel[(logits.shape[0],)](
        logits, V, sampler.ban_token or 0, sampler.seed, sampler.ids, sampler.tokens,
        sampler.counter, sampler.loglik, sampler.tokens.shape[1], *sampler_scalars(sampler),
        **flags, BLOCK_V=_pow2(V),
        num_warps=4 if V >= 1024 or flags["TOP_K"] or flags["TOP_P"] else 1)


def head_block_v(d_model: int, vocab: int) -> int:
    """Vocabulary rows per program of the LM-head launch (a ~8k-value weight tile each)."""
    return min(_pow2(vocab), max(8, 8192 // _pow2(d_model)))


def launch_head(part: torch.Tensor, res: torch.Tensor, n_part: int, norm, lm_head, vocab: int,
                logits: torch.Tensor, arrive: torch.Tensor, sampler=None) -> None:
    """Final norm + LM head of a fused decode step into ``logits`` (B, vocab) float32, from the
    residual stream ``res`` (B, d_model) float32 plus the ``n_part`` out_proj partial sums
    ``part`` (n_part, B, d_model). With ``sampler`` the same launch samples the next tokens.
    ``arrive`` (B,) int32 zeros: the per-row count of finished programs (reset by the kernel)."""
    batch, dm = res.shape
    block_k = _pow2(dm)
    block_v = head_block_v(dm, vocab)
    w = lm_head.weight
    if sampler is None:
        flags = dict(GREEDY=True, TOP_K=False, TOP_P=False, BAN=False, LOGLIK=False, BLOCK_J=2)
        scalars, ban, seed = (0.0, 0, 1.0), 0, arrive
        ids = tokens = counter = ll = arrive
        max_tokens = 1
    else:
        flags, scalars = sampler_flags(sampler, vocab), sampler_scalars(sampler)
        ban, seed = sampler.ban_token or 0, sampler.seed
        ids, tokens, counter, ll = sampler.ids, sampler.tokens, sampler.counter, sampler.loglik
        max_tokens = tokens.shape[1]
    _head_kernel[(batch, triton.cdiv(vocab, block_v))](
        part, res, norm.weight, w, logits, arrive, ban, seed, ids, tokens, counter, ll,
        batch, dm, vocab, n_part, norm.eps, w.stride(0), max_tokens, *scalars,
        SAMPLE=sampler is not None, **flags, BLOCK_V=block_v, BLOCK_K=block_k,
        BLOCK_P=_pow2(n_part), BLOCK_VS=_pow2(vocab),
        num_warps=_warps(block_v * block_k))
