"""The Mamba mixer (selective SSM layer), with mamba_ssm's parameter names, shapes and init.

    hidden (B, L, d_model)
      -> in_proj -> x, z          (B, d_inner, L) each, unit stride along L
      -> causal depthwise conv1d + SiLU on x
      -> x_proj(x) -> dt (rank R), B, C (N each);  delta = dt_proj.weight @ dt
      -> selective scan: softplus(delta + dt_proj.bias), A = -exp(A_log), D skip, SiLU(z) gate
      -> out_proj -> (B, L, d_model)

The parameter layout is exactly mamba_ssm's (``conv1d`` is an ``nn.Conv1d`` with weight
(d_inner, 1, d_conv)), so its checkpoints and HF transformers' map onto this module key for key.
All heavy lifting goes through ``seqmamba.kernels`` (Triton on GPU, chunked PyTorch on CPU).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqmamba import kernels
from seqmamba.config import ModelConfig

from .channel_linear import channel_linear, from_channels, to_channels

def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """y such that softplus(y) == x (x > 0), computed stably as x + log(1 - exp(-x))."""
    return x + torch.log(-torch.expm1(-x))


class MambaMixer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int = 0,
                 in_proj: Optional[nn.Linear] = None, out_proj: Optional[nn.Linear] = None):
        """``in_proj`` / ``out_proj`` may be passed to share them with another mixer (the tied
        bidirectional variant); shared modules are not re-initialised here."""
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.d_model = config.d_model
        self.d_inner = config.d_inner
        self.d_state = config.d_state
        self.d_conv = config.d_conv
        self.dt_rank = config.dt_rank_value

        self.in_proj = in_proj if in_proj is not None else \
            nn.Linear(self.d_model, 2 * self.d_inner, bias=config.bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=self.d_conv,
                                groups=self.d_inner, padding=self.d_conv - 1, bias=config.conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, self.d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = out_proj if out_proj is not None else \
            nn.Linear(self.d_inner, self.d_model, bias=config.bias)
        self.reset_parameters(init_shared=in_proj is None)

    @torch.no_grad()
    def reset_parameters(self, init_shared: bool = True) -> None:
        """mamba_ssm's init: S4D-real A, D = 1, dt log-uniform in [dt_min, dt_max] through the
        inverse softplus in dt_proj.bias, and out_proj scaled by 1/sqrt(n_layer) (GPT-2's
        rescaled pre-norm residual; one residual branch per layer)."""
        cfg = self.config
        if init_shared:
            self.in_proj.reset_parameters()
            self.out_proj.reset_parameters()  # kaiming_uniform(a=sqrt(5)), as mamba_ssm
            self.out_proj.weight /= math.sqrt(cfg.n_layer)
            for lin in (self.in_proj, self.out_proj):
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
        self.conv1d.reset_parameters()
        self.x_proj.reset_parameters()

        dt_init_std = self.dt_rank ** -0.5 * cfg.dt_scale
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
                       + math.log(cfg.dt_min)).clamp(min=cfg.dt_init_floor)
        self.dt_proj.bias.copy_(inverse_softplus(dt))
        self.dt_proj.bias._no_reinit = True  # a generic bias-zeroing init must leave it alone

        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)
        # Weight decay would pull A towards -1 and D towards 0: both are excluded.
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def _conv_weight(self) -> torch.Tensor:
        return self.conv1d.weight[:, 0, :]  # (d_inner, d_conv) view

    def forward(self, hidden: torch.Tensor, layer_cache=None) -> torch.Tensor:
        """hidden (B, L, d_model) -> (B, L, d_model).

        With ``layer_cache`` the sequence continues from the cached conv/SSM states, which are
        overwritten with the states after the last position (prompt prefill).
        """
        # channel-major (B, channels, L) from in_proj to out_proj: the kernels' layout (unit
        # stride along L), reached without transposing copies (see channel_linear)
        x, z = to_channels(hidden, self.in_proj.weight, self.in_proj.bias,
                           parts=(self.d_inner, self.d_inner))  # (B, d_inner, L) each
        if layer_cache is None:
            x = kernels.causal_conv1d_fn(x, self._conv_weight(), self.conv1d.bias, activation="silu")
        else:
            x, conv_state = kernels.causal_conv1d_fn(
                x, self._conv_weight(), self.conv1d.bias, initial_state=layer_cache.conv_state,
                activation="silu", return_final_state=True)
            layer_cache.conv_state.copy_(conv_state)

        x_dbl = channel_linear(x, self.x_proj.weight)  # (B, R + 2N, L)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        delta = channel_linear(dt, self.dt_proj.weight)  # (B, d_inner, L); bias added in the scan
        A = -torch.exp(self.A_log.float())
        y = kernels.selective_scan_fn(
            x, delta, A, B, C, D=self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True, return_last_state=layer_cache is not None,
            initial_state=None if layer_cache is None else layer_cache.ssm_state)
        if layer_cache is not None:
            y, last_state = y
            layer_cache.ssm_state.copy_(last_state)
        return from_channels(y, self.out_proj.weight, self.out_proj.bias)

    def step(self, hidden: torch.Tensor, layer_cache) -> torch.Tensor:
        """One token: hidden (B, d_model) -> (B, d_model); layer_cache is updated in place.

        Allocates no persistent tensors, so it can be captured in a CUDA graph.
        """
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, d_inner) each
        x = kernels.causal_conv1d_update(x, layer_cache.conv_state, self._conv_weight(),
                                         self.conv1d.bias, "silu")
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)
        A = -torch.exp(self.A_log.float())
        y = kernels.selective_state_update(layer_cache.ssm_state, x, delta, A, B, C, D=self.D, z=z,
                                           dt_bias=self.dt_proj.bias, dt_softplus=True)
        return self.out_proj(y)


def reverse_within_length(x: torch.Tensor, reverse_index: Optional[torch.Tensor]) -> torch.Tensor:
    """Reverse (B, L, ...) along L. With ``reverse_index`` (B, L) only each sequence's valid
    prefix is reversed and right padding stays at the end, so padding never flows into real tokens
    of the reverse direction. The map is its own inverse."""
    if reverse_index is None:
        return x.flip(1)
    idx = reverse_index.view(*reverse_index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)


class BiMambaMixer(nn.Module):
    """Caduceus-style bidirectional mixer: a mixer over the sequence plus one over its reverse,
    outputs summed. With ``config.bidirectional_tie`` both share in_proj and out_proj."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0):
        super().__init__()
        self.fwd = MambaMixer(config, layer_idx)
        if config.bidirectional_tie:
            self.rev = MambaMixer(config, layer_idx, in_proj=self.fwd.in_proj,
                                  out_proj=self.fwd.out_proj)
        else:
            self.rev = MambaMixer(config, layer_idx)

    def forward(self, hidden: torch.Tensor, layer_cache=None,
                reverse_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        if layer_cache is not None:
            raise ValueError("recurrent inference (cache/step) needs a causal model; "
                             "this one is bidirectional")
        back = self.rev(reverse_within_length(hidden, reverse_index))
        return self.fwd(hidden) + reverse_within_length(back, reverse_index)
