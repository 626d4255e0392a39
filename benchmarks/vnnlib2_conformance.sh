#!/usr/bin/env bash
# VNN-LIB 2.0 conformance: the outside suite `vnnlib-satisfactory` (PyPI, 1.0.1, 178 cases
# over 41 operator and theory categories) run against nncert's standard command line
# (`nncert verify QUERY --network NAME=PATH --timeout S`, `nncert supports ...`).
#
#   benchmarks/vnnlib2_conformance.sh            # all cases; writes out/conformance/
#   TEST=cast benchmarks/vnnlib2_conformance.sh  # one category
#
# The suite lives in its own venv (out/conformance/venv: it pins its own onnx and
# onnxruntime); nncert is the project's .venv (`make test` or `make demo` builds it).
# Per-case timeout ${TIMEOUT:-20} s: the suite's default 5 s leaves nncert's start-up
# (torch import, about 2 s here) too little room. About 9 minutes on 2 cores.
set -euo pipefail

OUT=${OUT:-out/conformance}
NNCERT=${NNCERT:-$(pwd)/.venv/bin/nncert}
mkdir -p "$OUT"
if [ ! -x "$OUT/venv/bin/vnnlib-satisfactory" ]; then
    python3 -m venv "$OUT/venv"
    "$OUT/venv/bin/pip" install -qq --disable-pip-version-check vnnlib-satisfactory==1.0.1
fi
cd "$OUT"   # the suite writes its cases and report.json under ./.vnnlib-satisfactory
args=(run --solver "$NNCERT" --timeout "${TIMEOUT:-20}" --no-verbose)
[ -n "${TEST:-}" ] && args+=(--test "$TEST")
venv/bin/vnnlib-satisfactory "${args[@]}" | tee run.txt
cp .vnnlib-satisfactory/report.json report.json
