#!/usr/bin/env bash
# VNN-COMP: prepare one instance. Usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Checks that the files exist (gzipped models are unpacked next to themselves) and
# that the installed tool imports. Nothing is started here, and nothing is killed:
# run_instance.sh starts one process and its own watchdog ends it.
set -uo pipefail
VERSION="${1:-}"; CATEGORY="${2:-}"; ONNX="${3:-}"; VNNLIB="${4:-}"
if [[ "$VERSION" != "v1" || -z "$ONNX" || -z "$VNNLIB" ]]; then
    echo "usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB (got '$*')" >&2
    exit 1
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ ! -f "$ONNX" && -f "$ONNX.gz" ]]; then
    gunzip -k "$ONNX.gz" || exit 1
fi
for f in "$ONNX" "$VNNLIB"; do
    if [[ ! -f "$f" && ! -f "$f.gz" ]]; then
        echo "prepare_instance.sh: $f: no such file (category $CATEGORY)" >&2
        exit 1
    fi
done
(cd "$ROOT" && .venv/bin/python -c "import verifier") || exit 1   # not from the benchmark folder (see run_instance.sh)
exit 0
