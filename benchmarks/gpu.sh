#!/usr/bin/env bash
# The prepared GPU check: the device tests, then branch-and-bound and bound throughput on
# cuda against cpu on the same machine. Run from the repository root on a GPU machine with
# ../shared beside the checkout (or SHARED=path); about 6 minutes, under 10.
#
#   benchmarks/gpu.sh                      # writes out/gpu/
#   OUT=/tmp/gpu SHARED=shared benchmarks/gpu.sh
#
# Everything goes under ${OUT:-out/gpu}/, in at most 8 files (what a lent machine returns).
# Every step runs; the exit status is non-zero when any failed.
set -euo pipefail

OUT=${OUT:-out/gpu}
SHARED=${SHARED:-../shared}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
rc=0
step() {  # step LOG CMD...: run CMD, its output shown and appended to $OUT/LOG; a failure is noted
    local log=$1 status=0
    shift
    "$@" 2>&1 | tee -a "$OUT/$log" || status=$?
    if [ "$status" -ne 0 ]; then
        echo "FAILED (exit $status): $*" | tee -a "$OUT/$log" >&2
        rc=1
    fi
}

# The Makefile's venv (.venv: torch, then nncert with its test extras). Where python3
# already has a CUDA torch and there is no network (the lent machines), .venv is made over
# that python's packages instead (pip's pinned torch cannot be fetched there, and would not
# be this one), with this checkout on its path in place of the editable install (offline,
# pip may lack what an editable build needs; nothing here uses the `nncert` script).
if [ ! -e .venv ] && python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    python3 -m venv .venv
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    { python3 -c 'import site; print("\n".join(site.getsitepackages()))'; pwd; } > "$site/nncert-gpu.pth"
    touch .venv/.nncert-installed
fi
make -s .venv/.nncert-installed
PY=.venv/bin/python

"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "this torch sees no CUDA device")'
step gpu.txt nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
step gpu.txt "$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'

# The device tests: the cuda case of every test that takes the `device` fixture.
step pytest_gpu.log "$PY" -m pytest -p no:cacheprovider -m gpu -q -rs --continue-on-collection-errors

# Branch and bound, domains/s: the default set of verifier.bench.bab (3 mnist_fc instances
# that need activation split, 3 ACAS Xu that need input split; about 80 s a run).
BAB=("$PY" -m verifier.bench.bab --bench-root "$SHARED/bench" --timeout 30)
step bab.log "${BAB[@]}" --device cuda --warmup 5 --out "$OUT/bab_cuda.csv"
step bab.log "${BAB[@]}" --device cpu --out "$OUT/bab_cpu.csv"
step bab.log "$PY" -m verifier.bench.bab --compare "$OUT/bab_cpu.csv" "$OUT/bab_cuda.csv"

# Bound passes alone (IBP, CROWN, alpha-CROWN) over mnist_fc and oval21 input regions, cuda then cpu.
for fam_limit in 2022_mnist_fc:10 2022_oval21:5; do
    BOUNDS=("$PY" -m verifier.bench.bounds "$SHARED/bench/${fam_limit%:*}/instances.csv" --limit "${fam_limit#*:}")
    step bounds.log "${BOUNDS[@]}" --device cuda
    step bounds.log "${BOUNDS[@]}" --device cpu
done

exit "$rc"
