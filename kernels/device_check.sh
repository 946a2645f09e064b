#!/usr/bin/env bash
# Every GPU check and benchmark of the kernels in one run, for a CUDA machine that has torch,
# triton and lightning but not seqmamba installed (and possibly no network):
#   bash kernels/device_check.sh [OUTDIR]
# Wheels for packages the machine lacks (pyfaidx, biopython, soundfile, cffi, pycparser, omegaconf)
# may be placed in .whl/ beside the repository root; they are installed into a private folder.
# Logs go to OUTDIR (default ./device-logs); the last lines printed are the summary tables.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-device-logs}
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
python3 -m pytest -q -m gpu -p no:cacheprovider kernels tests 2>&1 | tee "$out/gpu_tests.log" | tail -5
python3 -m seqmamba.kernels.bench_selective_scan 2>&1 | tee "$out/bench_scan.log" | tail -12
python3 -m seqmamba.kernels.bench_generation 2>&1 | tee "$out/bench_generation.log" | tail -10
python3 -m seqmamba.kernels.bench_generation --unet 2>&1 | tee "$out/bench_unet.log" | tail -12
python3 -m seqmamba.kernels.bench_end_to_end 2>&1 | tee "$out/bench_end_to_end.log" | tail -6
