#!/usr/bin/env bash
# VNN-COMP: install nncert. Usage: install_tool.sh v1
# Makes .venv at the repository root (torch pinned as in the Makefile, then nncert
# editable), so run_instance.sh finds one interpreter with everything in it.
set -euo pipefail
VERSION="${1:-v1}"
if [[ "$VERSION" != "v1" ]]; then
    echo "install_tool.sh: expected version v1, got '$VERSION'" >&2
    exit 1
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e .
.venv/bin/python -c "import verifier, vnnlib, models; print('nncert', verifier.__version__, 'installed')"
