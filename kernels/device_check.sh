#!/usr/bin/env bash
# Every GPU check and benchmark of the kernels, for a CUDA machine that has torch, triton and
# lightning but not seqmamba installed (and possibly no network):
#   bash kernels/device_check.sh [OUTDIR] [STAGE]
# STAGE: all (default), bench (scan sweep, generation, end-to-end, profile: ~8 min on an H100), tests
# (every `gpu` test: ~10+ min), scan-tests or other-tests (the two halves of `tests`), so that
# each fits a machine lent for 10 minutes a command.
# Wheels for packages the machine lacks (pyfaidx, biopython, soundfile, cffi, pycparser, omegaconf)
# may be placed in .whl/ beside the repository root; they are installed into a private folder.
# Logs go to OUTDIR (default ./device-logs); the last lines printed are the summary tables.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-device-logs}
stage=${2:-all}
case $stage in all|bench|tests|scan-tests|other-tests) ;;
  *) echo "device_check.sh: unknown stage '$stage' (all, bench, tests, scan-tests, other-tests)" >&2
     exit 2 ;;
esac
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/seqmamba-site .whl/*.whl
  export PYTHONPATH=/tmp/seqmamba-site${PYTHONPATH:+:$PYTHONPATH}
fi
# Import the source tree as `seqmamba` with `seqmamba.kernels` = kernels/ (what the wheel installs).
pkg=$(mktemp -d)
python3 - "$pkg" "$PWD" <<'PY'
import pathlib, sys
pkg, root = map(pathlib.Path, sys.argv[1:])
(pkg / "sitecustomize.py").write_text(
    "import seqmamba, importlib.util, sys\n"
    f"spec = importlib.util.spec_from_file_location('seqmamba.kernels', r'{root}/kernels/__init__.py',"
    f" submodule_search_locations=[r'{root}/kernels'])\n"
    "mod = importlib.util.module_from_spec(spec); sys.modules['seqmamba.kernels'] = mod\n"
    "spec.loader.exec_module(mod); seqmamba.kernels = mod\n")
PY
export PYTHONPATH=$pkg:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c "import seqmamba.kernels as k; print('kernels from', k.__file__, k.describe())" || exit 1
gpu_tests() { python3 -m pytest -q -m gpu -p no:cacheprovider --durations=10 "$@" 2>&1; }
case $stage in all|tests|scan-tests)
  gpu_tests kernels/test_selective_scan_triton.py | tee "$out/gpu_tests_scan.log" | tail -14 ;;
esac
case $stage in all|tests|other-tests)
  gpu_tests kernels tests --ignore=kernels/test_selective_scan_triton.py \
    | tee "$out/gpu_tests_other.log" | tail -14 ;;
esac
case $stage in all|bench)
  python3 -m seqmamba.kernels.bench_selective_scan --sweep 2>&1 | tee "$out/bench_scan.log" | tail -60
  python3 -m seqmamba.kernels.bench_generation 2>&1 | tee "$out/bench_generation.log" | tail -22
  python3 -m seqmamba.kernels.bench_generation --unet 2>&1 | tee "$out/bench_unet.log" | tail -32
  python3 -m seqmamba.kernels.bench_end_to_end 2>&1 | tee "$out/bench_end_to_end.log" | tail -6
  python3 -m seqmamba.kernels.bench_end_to_end --profile 2>&1 | tee "$out/profile_train.log" | tail -36 ;;
esac
