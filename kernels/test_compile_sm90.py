"""The scan kernels compile for an H100 (sm_90) on a machine without a GPU.

The CPU tests run the kernels in Triton's interpreter, which skips the GPU compiler: its
layout and register passes, and its stricter rules. This test runs that compiler
(Triton's own ptxas included) for the launch configurations the plans use, so a variant that
cannot build on a GPU fails in CI. It needs the ``ASTSource(fn, signature, constexprs, attrs)``
API of Triton 3.2+ and skips on older releases (the device runs Triton 3.6).
"""
from __future__ import annotations

import inspect
import os
import re

import pytest

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiles for the GPU; run without TRITON_INTERPRET", allow_module_level=True)
from triton.compiler import ASTSource  # noqa: E402

if "constexprs" not in inspect.signature(ASTSource.__init__).parameters:
    pytest.skip("needs Triton's ASTSource(constexprs=...) (3.2+)", allow_module_level=True)
try:
    from triton.backends.compiler import GPUTarget  # noqa: E402
except ImportError:  # pragma: no cover
    pytest.skip("no GPUTarget in this Triton", allow_module_level=True)

from seqmamba.kernels import causal_conv1d_triton as conv  # noqa: E402
from seqmamba.kernels import selective_scan_bwd_triton as bwd  # noqa: E402
from seqmamba.kernels import selective_scan_triton as scan  # noqa: E402

BF16_ROWS = {"u_ptr", "dt_ptr", "z_ptr", "g_ptr", "out_ptr", "du_ptr", "ddt_ptr", "dz_ptr",
             "x_ptr", "dy_ptr", "dx_ptr", "init_ptr", "dinit_ptr"}  # the conv's activations
# what the JIT specialises at the benchmark shapes: 16-byte aligned pointers, strides and sizes
DIVISIBLE = ("L", "dim", "CH", "CKPT", "cpg_B", "cpg_C")


def compile_sm90(fn, consts: dict, num_warps: int = 1):
    names = fn.arg_names
    source = ASTSource
    if getattr(fn, "is_gluon", lambda: False)():
        from triton.experimental.gluon._runtime import GluonASTSource as source
    sig = {}
    for a in names:
        if a in consts:
            sig[a] = "constexpr"
        elif a.endswith("_ptr"):
            sig[a] = "*bf16" if a in BF16_ROWS else "*fp32"
        else:
            sig[a] = "i32"
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in names
             if a not in consts and (a.endswith("_ptr") or a.startswith("s_") or a in DIVISIBLE)}
    src = source(fn, sig, constexprs={(names.index(k),): v for k, v in consts.items()},
                 attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))


COMMON = dict(N=16, NP=16, HAS_Z=True, HAS_D=True, HAS_BIAS=True, SOFTPLUS=True, B_VAR=True,
              C_VAR=True)


def bwd_consts(bd, atomic, **extra):
    return dict(COMMON, BD=bd, GSUB_B=bd, GSUB_C=bd, BC_ATOMIC=atomic,
                HAS_INIT=True, **extra)


CASES = {
    "forward": (scan._fwd_kernel, dict(COMMON, BD=32, STATE_ONLY=False, B_GRP=False, C_GRP=False)),
    "forward state pass, groups": (scan._fwd_kernel, dict(COMMON, BD=32, STATE_ONLY=True,
                                                          B_GRP=True, C_GRP=True)),
    "adjoint carry pass": (scan._bwd_state_kernel,
                           dict(N=16, NP=16, BD=32, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True,
                                C_VAR=True, C_GRP=False)),
    "backward, 32 channels": (bwd._bwd_kernel, bwd_consts(32, False, TILE=2)),
    "backward, 32 channels, atomic, 1-step tiles": (bwd._bwd_kernel, bwd_consts(32, True, TILE=1)),
    "backward, 4 channels": (bwd._bwd_kernel, bwd_consts(4, False, TILE=2)),
    "backward, 8 channels, atomic": (bwd._bwd_kernel, bwd_consts(8, True, TILE=2)),
    "forward carry combine": (scan._fwd_combine_kernel, dict(N=16, BLOCK=256)),
    "adjoint carry combine": (scan._bwd_combine_kernel, dict(N=16, BLOCK=256)),
}
# the conv backward at the benchmark's tiles (4 channels x 256 positions), with and without
# the initial-state paths; x's unit L stride is specialised by the JIT, so pass it as a constant
CONV_BWD = dict(HAS_BIAS=True, SILU=True, BLOCK_D=4, BLOCK_L=256, sxl=1, sdl=1, sgl=1)
CONV_CASES = {
    "conv backward, width 4": dict(CONV_BWD, WIDTH=4, HAS_INIT=False, NEED_DINIT=False),
    "conv backward, width 2, initial state": dict(CONV_BWD, WIDTH=2, HAS_INIT=True, NEED_DINIT=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scan_kernel_compiles_for_sm90(case):
    fn, consts = CASES[case]
    kernel = compile_sm90(fn, consts)
    assert ".target sm_90" in kernel.asm["ptx"] and len(kernel.asm["cubin"]) > 0


def test_backward_computes_each_decay_in_one_layout():
    """Every exp2 over the backward's [NP, BD] state tiles runs in one register layout. When B/C
    rows were loaded as [NP, 1], Triton gave them a second layout and computed the adjoint, the
    decays and the dB sums a second time there. The sm_90 main loop had 1360 instructions
    against 972 (BENCHMARKS.md, session 12). _bwd_bc_rows' broadcast row pointers prevent it."""
    fn, consts = CASES["backward, 32 channels"]
    ttgir = compile_sm90(fn, consts).asm["ttgir"]
    layouts = set(re.findall(r"math\.exp2 %\S+ : tensor<16x32xf32, (#\w+)>", ttgir))
    assert len(layouts) == 1, f"decays computed in layouts {sorted(layouts)}"


try:
    from seqmamba.kernels import selective_scan_bwd_gluon as gluon_bwd
except ImportError:  # Triton without Gluon (before 3.5): the Triton backward runs everywhere
    gluon_bwd = None
GLUON_CASES = {
    "gluon backward": bwd_consts(32, False, TILE=2),
    "gluon backward, atomic dB/dC, no z": dict(bwd_consts(32, True, TILE=2), HAS_Z=False),
    "gluon backward, fixed B/C, N=4": dict(bwd_consts(32, False, TILE=2), B_VAR=False,
                                           C_VAR=False, N=4, NP=4),
}


@pytest.mark.skipif(gluon_bwd is None, reason="no triton.experimental.gluon")
@pytest.mark.parametrize("case", sorted(GLUON_CASES))
def test_gluon_backward_compiles_for_sm90(case):
    kernel = compile_sm90(gluon_bwd._bwd_kernel_gluon, GLUON_CASES[case])
    assert ".target sm_90" in kernel.asm["ptx"]
    # Per-channel bf16 tensors move as [32, 32] windows (16 bytes a lane). Loads and stores of
    # one step, one channel a lane ([32] pointer tensors), made the backward 1.4-1.6x slower
    # (BENCHMARKS.md, session 13); only the step after the chunk (one load) is read that way.
    ttgir = kernel.asm["ttgir"]
    assert len(re.findall(r"tt\.load [^\n]*tensor<32x!tt\.ptr<bf16>", ttgir)) <= 1
    assert not re.findall(r"tt\.store [^\n]*tensor<32x!tt\.ptr<bf16>", ttgir)
    assert re.findall(r"tt\.load [^\n]*tensor<32x32x!tt\.ptr<bf16>", ttgir)


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_kernel_compiles_for_sm90(case):
    kernel = compile_sm90(conv._conv_bwd_kernel, CONV_CASES[case], num_warps=conv.BWD_WARPS)
    assert ".target sm_90" in kernel.asm["ptx"] and len(kernel.asm["cubin"]) > 0


def test_compile_catches_what_the_interpreter_lets_through(tmp_path):
    """A kernel reading a plain-int global runs in the interpreter but does not compile."""
    import importlib.util
    path = tmp_path / "sm90_probe.py"
    path.write_text("import triton\nimport triton.language as tl\nK = 4\n\n"
                    "@triton.jit\ndef probe(x_ptr):\n    tl.store(x_ptr, K)\n")
    spec = importlib.util.spec_from_file_location("sm90_probe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(Exception, match="K"):
        compile_sm90(mod.probe, {})
