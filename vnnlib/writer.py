"""Write a ``Spec`` as VNN-LIB, and build the common l-inf robustness spec.

The writer emits the forms other tools expect (box bounds as one assert per bound,
``(<= Y_a Y_b)`` for a comparison of two outputs, one ``or`` over ``and`` blocks for
several conjunctions) so that files we generate can be run by other verifiers. Numbers
are written with ``repr(float)``, which reads back as the same float64, so
``parse_text(format_vnnlib(spec)) == spec`` for every spec the parser produces.
``format_vnnlib2`` writes the same assertions as a VNN-LIB 2.0 query (indexed tensor
elements, plain decimals: that grammar has no exponent notation), which the standard's
parser reads back to the same Spec.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vnnlib.errors import plain
from vnnlib.spec import Disjunct, InputRegion, OutputConstraints, Spec

__all__ = ["format_vnnlib", "format_vnnlib2", "write_vnnlib", "robustness_spec", "decimal"]


def _num(value: float) -> str:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"cannot write the non-finite value {value!r} to VNN-LIB")
    return repr(value + 0.0)


def decimal(value: float) -> str:
    """A float64 as 2.0's grammar writes it: plain decimal digits, never an exponent,
    always a point (``3.0``: ``3`` would be an integer constant); reads back exactly."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"cannot write the non-finite value {value!r} to VNN-LIB")
    return np.format_float_positional(value + 0.0, unique=True, trim="0")


@dataclass(frozen=True)
class _Style:
    """How a version names variables and writes numbers."""

    name: Callable[[str, int], str]
    num: Callable[[float], str]


_V1 = _Style(lambda prefix, k: f"{prefix}_{k}", _num)


def _v2(input_shape: Sequence[int], output_shape: Sequence[int]) -> _Style:
    shapes = {"X": tuple(input_shape), "Y": tuple(output_shape)}
    return _Style(lambda prefix, k: f"{prefix}[{','.join(map(str, np.unravel_index(k, shapes[prefix])))}]",
                  decimal)


def _term(coefs: np.ndarray, prefix: str, style: _Style) -> str:
    parts = []
    for k in np.flatnonzero(coefs):
        c, name = float(coefs[k]), style.name(prefix, int(k))
        parts.append(name if c == 1.0 else f"(- {name})" if c == -1.0 else f"(* {style.num(c)} {name})")
    if not parts:
        return style.num(0.0)
    return parts[0] if len(parts) == 1 else f"(+ {' '.join(parts)})"


def _row(coefs: np.ndarray, d: float, strict: bool, prefix: str, style: _Style = _V1) -> str:
    """One comparison ``coefs . v <= d`` in the plainest form that means exactly that."""
    le, ge = ("<", ">") if strict else ("<=", ">=")
    nz = np.flatnonzero(coefs)
    if len(nz) == 1 and abs(coefs[nz[0]]) == 1.0:
        name = style.name(prefix, int(nz[0]))
        return f"({le} {name} {style.num(d)})" if coefs[nz[0]] > 0 else f"({ge} {name} {style.num(-d)})"
    if len(nz) == 2 and d == 0.0 and sorted(coefs[nz].tolist()) == [-1.0, 1.0]:
        high, low = (nz[0], nz[1]) if coefs[nz[0]] > 0 else (nz[1], nz[0])
        return f"({le} {style.name(prefix, int(high))} {style.name(prefix, int(low))})"
    return f"({le} {_term(coefs, prefix, style)} {style.num(d)})"


def _region_atoms(region: InputRegion, style: _Style = _V1) -> list[str]:
    atoms = []
    for i, (lo, hi) in enumerate(zip(region.lower, region.upper)):
        atoms.append(f"(>= {style.name('X', i)} {style.num(lo)})")
        atoms.append(f"(<= {style.name('X', i)} {style.num(hi)})")
    if region.A is not None:
        atoms += [_row(row, bi, False, "X", style) for row, bi in zip(region.A, region.b)]
    return atoms


def _output_atoms(conj: OutputConstraints, style: _Style = _V1) -> list[str]:
    return [_row(row, di, bool(si), "Y", style) for row, di, si in zip(conj.C, conj.d, conj.strict)]


def _assertions(spec: Spec, style: _Style) -> list[str]:
    lines = []
    for disjunct in spec.disjuncts:
        if not disjunct.outputs:
            raise ValueError("a disjunct without output constraints can never be violated; "
                             "drop it before writing")
    if len(spec.disjuncts) == 1:
        disjunct = spec.disjuncts[0]
        lines += [f"(assert {atom})" for atom in _region_atoms(disjunct.region, style)]
        conjs = [_output_atoms(c, style) for c in disjunct.outputs]
        if any(not c for c in conjs):
            conjs = []  # an empty conjunction always holds: no output condition at all
        if len(conjs) == 1:
            lines += [f"(assert {atom})" for atom in conjs[0]]
        elif conjs:
            lines.append("(assert (or")
            lines += [f"    (and {' '.join(c)})" for c in conjs]
            lines.append("))")
    elif spec.disjuncts:
        lines.append("(assert (or")
        for disjunct in spec.disjuncts:
            region = _region_atoms(disjunct.region, style)
            for conj in disjunct.outputs:
                lines.append(f"    (and {' '.join(region + _output_atoms(conj, style))})")
        lines.append("))")
    return lines


def format_vnnlib(spec: Spec) -> str:
    """The VNN-LIB 1.0 text of ``spec``."""
    lines = ["; VNN-LIB property written by nncert"]
    lines += [f"(declare-const X_{i} Real)" for i in range(spec.n_inputs)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(spec.n_outputs)]
    return "\n".join(lines + _assertions(spec, _V1)) + "\n"


def format_vnnlib2(spec: Spec, input_shape: Sequence[int] | None = None, output_shape: Sequence[int] | None = None,
                   element_type: str = "float32", network: str = "N") -> str:
    """The VNN-LIB 2.0 text of ``spec``: one network ``network`` with input ``X`` and
    output ``Y`` of the given shapes (default: flat) and element type."""
    ins = tuple(input_shape) if input_shape is not None else (spec.n_inputs,)
    outs = tuple(output_shape) if output_shape is not None else (spec.n_outputs,)
    if math.prod(ins) != spec.n_inputs or math.prod(outs) != spec.n_outputs:
        raise ValueError(f"shapes {list(ins)} and {list(outs)} do not hold {spec.n_inputs} inputs and "
                         f"{spec.n_outputs} outputs")
    dims = lambda shape: "[" + ",".join(map(str, shape)) + "]"
    lines = ["; VNN-LIB property written by nncert", "(vnnlib-version <2.0>)",
             f"(declare-network {network}", f"    (declare-input X {element_type} {dims(ins)})",
             f"    (declare-output Y {element_type} {dims(outs)})", ")"]
    return "\n".join(lines + _assertions(spec, _v2(ins, outs))) + "\n"


def write_vnnlib(path: str | os.PathLike[str], spec: Spec) -> None:
    """Write ``spec`` to ``path`` as VNN-LIB text."""
    with open(os.fspath(path), "w", encoding="ascii") as handle:
        handle.write(format_vnnlib(spec))


def robustness_spec(x0: np.ndarray | Sequence[float], eps: float | np.ndarray, label: int,
                    n_classes: int, lower_clip: float | np.ndarray | None = None,
                    upper_clip: float | np.ndarray | None = None) -> Spec:
    """Local robustness of class ``label`` on the l-inf ball of radius ``eps`` around ``x0``.

    The counterexample is any other class ``j`` with ``y_j >= y_label`` (ties count
    against us, the conservative reading), written ``y_label - y_j <= 0``, one
    conjunction per ``j``. The ball is clipped to ``[lower_clip, upper_clip]`` (e.g.
    the valid pixel range) when given.
    """
    x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
    eps_arr = np.broadcast_to(np.asarray(eps, dtype=np.float64), x0.shape)
    if not (np.all(np.isfinite(x0)) and np.all(np.isfinite(eps_arr)) and np.all(eps_arr >= 0)):
        raise ValueError("x0 must be finite and eps finite and non-negative")
    if not (isinstance(n_classes, (int, np.integer)) and n_classes >= 2):
        raise ValueError(f"n_classes must be an integer >= 2, got {plain(n_classes)}")
    if not (isinstance(label, (int, np.integer)) and 0 <= label < n_classes):
        raise ValueError(f"label must be an integer in [0, {n_classes}), got {plain(label)}")
    lower, upper = x0 - eps_arr, x0 + eps_arr
    if lower_clip is not None:
        lower = np.maximum(lower, np.asarray(lower_clip, dtype=np.float64))
    if upper_clip is not None:
        upper = np.minimum(upper, np.asarray(upper_clip, dtype=np.float64))
    if np.any(lower > upper):
        i = int(np.flatnonzero(lower > upper)[0])
        raise ValueError(f"the clipped ball is empty: input {i} has lower {plain(lower[i])} "
                         f"> upper {plain(upper[i])}")
    conjs = []
    for j in range(n_classes):
        if j != label:
            row = np.zeros((1, n_classes))
            row[0, label], row[0, j] = 1.0, -1.0
            conjs.append(OutputConstraints(row, np.zeros(1), np.zeros(1, dtype=bool)))
    region = InputRegion(lower + 0.0, upper + 0.0)
    return Spec(x0.size, n_classes, (Disjunct(region, tuple(conjs)),), None)
