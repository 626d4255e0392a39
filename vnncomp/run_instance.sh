#!/usr/bin/env bash
# VNN-COMP: run one instance. Usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS TIMEOUT
# One `nncert verify` process; it writes RESULTS itself (sat with the counterexample,
# unsat, unknown, timeout or error) and ends itself shortly after TIMEOUT. If it dies
# without writing RESULTS (killed, out of memory), RESULTS says `error`, never a verdict.
# NNCERT_CONFIG=path.yaml passes a config file (e.g. per category).
set -uo pipefail
VERSION="${1:-}"; CATEGORY="${2:-}"; ONNX="${3:-}"; VNNLIB="${4:-}"; RESULTS="${5:-}"; TIMEOUT="${6:-}"
if [[ "$VERSION" != "v1" || -z "$RESULTS" || -z "$TIMEOUT" ]]; then
    echo "usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS TIMEOUT (got '$*')" >&2
    exit 1
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rm -f "$RESULTS"
ARGS=(verify "$ONNX" "$VNNLIB" --results-file "$RESULTS" --timeout "$TIMEOUT")
if [[ -n "${NNCERT_CONFIG:-}" ]]; then
    ARGS+=(--config "$NNCERT_CONFIG")
fi
# The console script, not `python -m verifier.cli`: -m puts the working directory first
# on sys.path, and a benchmark folder's `vnnlib/` would hide nncert's `vnnlib` package.
"$ROOT/.venv/bin/nncert" "${ARGS[@]}"
STATUS=$?
if [[ ! -s "$RESULTS" ]]; then
    echo "error" > "$RESULTS"
fi
echo "nncert: category $CATEGORY, exit status $STATUS, result $(head -n 1 "$RESULTS")"
exit 0
