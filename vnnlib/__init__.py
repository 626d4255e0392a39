"""VNN-LIB reading and writing for nncert: pure Python and numpy, no torch.

``load`` turns a ``.vnnlib`` (or ``.vnnlib.gz``) file into a ``Spec``: a disjunction of
input regions, each with output constraints ``C y <= d`` in disjunctive normal form.
Every problem with a file is a ``VnnlibError`` that says ``file:line:col`` and what was
expected (``file: no such file`` when there is no place in it to point at).
``write_results``/``read_results`` handle VNN-COMP result files; ``write_vnnlib`` and
``robustness_spec`` make properties from Python.
"""

from vnnlib.errors import VnnlibError
from vnnlib.loader import load, parse_text
from vnnlib.normalize import MAX_DNF_TERMS
from vnnlib.results import VERDICTS, format_results, parse_results, read_results, write_results
from vnnlib.spec import Disjunct, InputRegion, OutputConstraints, Spec
from vnnlib.writer import format_vnnlib, robustness_spec, write_vnnlib

__all__ = [
    "load",
    "parse_text",
    "Spec",
    "Disjunct",
    "InputRegion",
    "OutputConstraints",
    "VnnlibError",
    "MAX_DNF_TERMS",
    "VERDICTS",
    "write_results",
    "read_results",
    "format_results",
    "parse_results",
    "write_vnnlib",
    "format_vnnlib",
    "robustness_spec",
]
