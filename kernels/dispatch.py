"""Chooses the execution path for every kernel op: fused Triton on CUDA, pure PyTorch elsewhere.

``SEQMAMBA_KERNELS`` overrides the choice:
    auto   (default) Triton when the tensor is on CUDA and Triton imports, else PyTorch
    torch  always the pure-PyTorch path (the reference contract)
    triton always Triton (on CPU this needs TRITON_INTERPRET=1; used by the CI kernel tests)
"""
from __future__ import annotations

import functools
import os

import torch

_CHOICES = ("auto", "torch", "triton")


def kernel_mode() -> str:
    mode = os.environ.get("SEQMAMBA_KERNELS", "auto").strip().lower()
    if mode not in _CHOICES:
        raise ValueError(f"SEQMAMBA_KERNELS={mode!r}: expected one of {', '.join(_CHOICES)}")
    return mode


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install on an unsupported platform
        return False
    return True


def use_triton(t: torch.Tensor) -> bool:
    """True when the op on tensor ``t`` should run through Triton."""
    mode = kernel_mode()
    if mode == "torch":
        return False
    if mode == "triton":
        if not triton_available():
            raise RuntimeError("SEQMAMBA_KERNELS=triton but triton cannot be imported")
        return True
    return t.is_cuda and triton_available()


@functools.lru_cache(maxsize=None)
def gluon_available() -> bool:
    """Whether Triton has Gluon (3.5+), which the fast scan backward is written in."""
    if not triton_available():
        return False
    try:
        import triton.experimental.gluon  # noqa: F401
    except Exception:
        return False
    return True


def describe() -> dict:
    """What `seqmamba info` prints about the kernels."""
    cuda = torch.cuda.is_available()
    return {
        "mode": kernel_mode(),
        "triton_importable": triton_available(),
        "gluon_importable": gluon_available(),
        "cuda_available": cuda,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "path": "triton" if (cuda and triton_available() and kernel_mode() != "torch") else "torch",
    }
