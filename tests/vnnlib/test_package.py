"""The package's public face: what it exports and what it must not pull in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import vnnlib

ROOT = Path(__file__).resolve().parents[2]


def test_public_api_is_exported() -> None:
    for name in ("load", "parse_text", "Spec", "Disjunct", "InputRegion", "OutputConstraints",
                 "VnnlibError", "write_results", "read_results", "write_vnnlib",
                 "robustness_spec"):
        assert name in vnnlib.__all__ and hasattr(vnnlib, name)
    assert issubclass(vnnlib.VnnlibError, Exception)


def test_import_pulls_in_neither_torch_nor_other_nncert_packages() -> None:
    code = ("import sys, vnnlib; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'onnx', 'models', 'relaxations', 'bab', 'verifier')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_solver_commands_are_accepted_and_ignored() -> None:
    text = ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= X_0 0))"
            "(assert (<= X_0 1))(assert (<= Y_0 0))(check-sat)(get-model)(exit)")
    assert vnnlib.parse_text(text).n_inputs == 1
