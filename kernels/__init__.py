"""seqmamba.kernels: the Mamba ops, each with a fused Triton path (GPU) and a PyTorch path (CPU).

Import the public functions from here; ``dispatch`` picks the path (see SEQMAMBA_KERNELS).
"""
from .causal_conv1d import causal_conv1d_fn, causal_conv1d_update, causal_conv1d_update_torch
from .dispatch import describe, kernel_mode, triton_available, use_triton
from .rms_norm import rms_norm_fn
from .selective_scan import selective_scan_fn
from .selective_scan_ref import selective_scan_ref
from .selective_state_update import selective_state_update

__all__ = [
    "selective_scan_fn", "selective_scan_ref", "causal_conv1d_fn", "causal_conv1d_update",
    "causal_conv1d_update_torch",
    "rms_norm_fn", "selective_state_update", "describe", "kernel_mode", "triton_available",
    "use_triton",
]
