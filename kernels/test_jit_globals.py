"""Every Triton kernel reads only globals the GPU compiler accepts.

Triton's code generator refuses a module global that is a plain Python value (an int constant,
a tuple...) inside @triton.jit code: it must be a ``tl.constexpr``, another jit function or a
module. The interpreter (TRITON_INTERPRET=1, our CPU tests) runs such code happily, so this
mistake otherwise shows only on a GPU (it once broke every fused decode step). This test reads
each kernel's source and checks the globals it names, so CPU-only CI catches it.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pkgutil
import textwrap
import types

import pytest

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from triton.runtime.jit import JITFunction  # noqa: E402

import seqmamba.kernels as kernels_pkg  # noqa: E402

if os.environ.get("TRITON_INTERPRET") == "1":  # triton.jit then makes interpreter functions
    pytest.skip("reads @triton.jit functions; run without TRITON_INTERPRET", allow_module_level=True)

try:  # the Python builtins Triton's code generator knows (abs, sum, ... are not among them)
    from triton.compiler.code_generator import CodeGenerator
    TRITON_BUILTINS = set(CodeGenerator.builtin_namespace)
except (ImportError, AttributeError):
    TRITON_BUILTINS = {"float", "getattr", "hasattr", "int", "isinstance", "len", "list", "max",
                       "min", "print", "range"}


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


def _names(fn_node: ast.FunctionDef) -> tuple[set[str], set[str]]:
    """(names the function reads, names it binds: arguments, assignments, loop targets)."""
    bound = {a.arg for a in fn_node.args.args + fn_node.args.kwonlyargs}
    read = set()
    for node in ast.walk(fn_node):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
    return read, bound


def _allowed(value) -> bool:
    """What the code generator accepts as a global: constexprs, jit functions, modules and
    triton.language's own objects (dtypes, builtins)."""
    return (isinstance(value, (types.ModuleType, JITFunction, tl.constexpr, tl.dtype))
            or getattr(value, "__triton_builtin__", False)
            or getattr(value, "__module__", "").startswith("triton.language"))


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
    read, bound = _names(fn_node)
    glb = jit.fn.__globals__
    for name in sorted(read):
        if name in bound:
            # a local; but one that also names a plain global is read as that global wherever
            # it is not yet assigned, which the GPU compiler rejects
            if name in glb and not _allowed(glb[name]):
                bad.append(f"{name} is both a local and a plain global")
        elif name in glb:
            if not _allowed(glb[name]):
                bad.append(f"{name} = {glb[name]!r} ({type(glb[name]).__name__})")
        elif name not in TRITON_BUILTINS:
            bad.append(f"{name} is not defined for Triton (not a global, not a Triton builtin)")
    assert not bad, f"{qualname} reads globals the GPU compiler rejects: " + "; ".join(bad)


PROBE = """
import triton
import triton.language as tl
from triton import cdiv
K = 4

@triton.jit
def plain_int(x_ptr):
    tl.store(x_ptr, K)

@triton.jit
def python_builtin(x_ptr):
    tl.store(x_ptr, abs(tl.load(x_ptr)))

@triton.jit
def host_helper(x_ptr, n):
    tl.store(x_ptr, cdiv(n, 4))

@triton.jit
def shadowed(x_ptr, flag: tl.constexpr):
    if flag:
        K = 2
    tl.store(x_ptr, K)

@triton.jit
def fine(x_ptr, n):
    tl.store(x_ptr, tl.cdiv(n, 4) + max(n, 1) + tl.load(x_ptr).to(tl.float32))
"""


def test_checker_rejects_what_the_compiler_rejects(tmp_path, monkeypatch):
    """The rule above, on kernels that Triton's GPU compiler refuses (and the interpreter runs)."""
    path = tmp_path / "jit_globals_probe.py"
    path.write_text(PROBE)
    spec = importlib.util.spec_from_file_location("jit_globals_probe", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    verdicts = {}
    for name in ("plain_int", "python_builtin", "host_helper", "shadowed", "fine"):
        monkeypatch.setitem(FUNCTIONS, f"probe.{name}", getattr(probe, name))
        try:
            test_jit_globals_are_constexpr(f"probe.{name}")
            verdicts[name] = "ok"
        except AssertionError:
            verdicts[name] = "rejected"
    assert verdicts == {"plain_int": "rejected", "python_builtin": "rejected",
                        "host_helper": "rejected", "shadowed": "rejected", "fine": "ok"}
