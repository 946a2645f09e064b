"""Public selective-scan entry point: same signature and semantics as mamba_ssm's selective_scan_fn.

Dispatches to the fused Triton kernels on CUDA and to the chunked PyTorch scan elsewhere.
See ``selective_scan_ref`` for the definition.
"""
from __future__ import annotations

from .dispatch import use_triton


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, initial_state=None):
    if use_triton(u):
        from .selective_scan_triton import selective_scan_triton
        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                     return_last_state, initial_state)
    from .selective_scan_torch import selective_scan_chunked
    return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  return_last_state, initial_state)
