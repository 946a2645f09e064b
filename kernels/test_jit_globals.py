"""Every Triton kernel reads only globals the GPU compiler accepts.

Triton's code generator refuses a module global that is a plain Python value (an int constant,
a tuple...) inside @triton.jit code: it must be a ``tl.constexpr``, another jit function or a
module. The interpreter (TRITON_INTERPRET=1, our CPU tests) runs such code happily, so this
mistake otherwise shows only on a GPU (it once broke every fused decode step). This test reads
each kernel's source and checks the globals it names, so CPU-only CI catches it.
"""
from __future__ import annotations

import ast
import builtins
import importlib
import pkgutil
import textwrap
import types

import pytest

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from triton.runtime.jit import JITFunction  # noqa: E402

import seqmamba.kernels as kernels_pkg  # noqa: E402


def _jit_functions():
    seen = {}
    for info in pkgutil.iter_modules(kernels_pkg.__path__):
        if info.name.startswith(("test_", "bench_")):
            continue
        mod = importlib.import_module(f"seqmamba.kernels.{info.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, JITFunction) and obj.fn.__module__ == mod.__name__:
                seen[f"{info.name}.{name}"] = obj
    return seen


def _free_names(fn_node: ast.FunctionDef) -> set[str]:
    """Names read in the function that it never binds (arguments, assignments, loop targets)."""
    bound = {a.arg for a in fn_node.args.args + fn_node.args.kwonlyargs}
    read = set()
    for node in ast.walk(fn_node):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
    return read - bound


def _allowed(value) -> bool:
    return (isinstance(value, (types.ModuleType, JITFunction, tl.constexpr, tl.dtype))
            or getattr(value, "__triton_builtin__", False)
            or getattr(value, "__module__", "").startswith("triton"))


FUNCTIONS = _jit_functions()


def test_kernels_found():
    # the scan, conv, norm and decode modules all define kernels; an empty sweep would pass vacuously
    modules = {k.split(".")[0] for k in FUNCTIONS}
    assert {"selective_scan_triton", "causal_conv1d_triton", "rms_norm_triton",
            "mamba_decode_triton", "decode_sample_triton", "unet_decode_triton"} <= modules


@pytest.mark.parametrize("qualname", sorted(FUNCTIONS))
def test_jit_globals_are_constexpr(qualname):
    jit = FUNCTIONS[qualname]
    tree = ast.parse(textwrap.dedent(jit.src))
    fn_node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    bad = []
    for name in sorted(_free_names(fn_node)):
        if name in jit.fn.__globals__:
            value = jit.fn.__globals__[name]
            if not _allowed(value):
                bad.append(f"{name} = {value!r} ({type(value).__name__})")
        elif not hasattr(builtins, name):
            bad.append(f"{name} is not defined")
    assert not bad, f"{qualname} reads globals the GPU compiler rejects: " + "; ".join(bad)
