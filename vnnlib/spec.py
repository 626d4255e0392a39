"""The normalised property: pure numpy data that the rest of nncert consumes.

The classes are frozen and their arrays are read-only float64 copies, so a ``Spec``
can be shared between the attack, the bounding code and the certificate checker
without one of them changing what the others see. Equality compares array contents
(dataclass equality on arrays would raise), and the objects are unhashable like the
arrays they hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["OutputConstraints", "InputRegion", "Disjunct", "Spec"]


def _frozen(values: object, dtype: type = np.float64) -> np.ndarray:
    array = np.array(values, dtype=dtype, copy=True)
    array.flags.writeable = False
    return array


def _arrays_equal(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.array_equal(a, b))


@dataclass(frozen=True, eq=False)
class OutputConstraints:
    """A conjunction of rows ``C @ y <= d`` (row ``i`` strict, ``<``, if ``strict[i]``).

    Zero rows means "any output": the conjunction always holds.
    """

    C: np.ndarray
    d: np.ndarray
    strict: np.ndarray

    def __post_init__(self) -> None:
        C = _frozen(self.C)
        d = _frozen(self.d).reshape(-1)
        strict = _frozen(self.strict, dtype=bool).reshape(-1)
        if C.ndim != 2 or C.shape[0] != d.shape[0] or d.shape != strict.shape:
            raise ValueError(f"OutputConstraints: C {C.shape}, d {d.shape} and "
                             f"strict {strict.shape} do not agree")
        object.__setattr__(self, "C", C)
        object.__setattr__(self, "d", d)
        object.__setattr__(self, "strict", strict)

    def holds(self, y: np.ndarray) -> bool:
        """Whether output ``y`` satisfies every row (i.e. is a counterexample)."""
        lhs = self.C @ np.asarray(y, dtype=np.float64).reshape(-1)
        return bool(np.all(np.where(self.strict, lhs < self.d, lhs <= self.d)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OutputConstraints):
            return NotImplemented
        return (_arrays_equal(self.C, other.C) and _arrays_equal(self.d, other.d)
                and _arrays_equal(self.strict, other.strict))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class InputRegion:
    """A box ``lower <= x <= upper``, optionally cut by general rows ``A x <= b``.

    Inputs are the model's input tensor flattened in C order (X_0..X_{n-1}).
    """

    lower: np.ndarray
    upper: np.ndarray
    A: np.ndarray | None = None
    b: np.ndarray | None = None

    def __post_init__(self) -> None:
        lower = _frozen(self.lower).reshape(-1)
        upper = _frozen(self.upper).reshape(-1)
        if lower.shape != upper.shape:
            raise ValueError(f"InputRegion: lower {lower.shape} and upper {upper.shape} differ")
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        if (self.A is None) != (self.b is None):
            raise ValueError("InputRegion: A and b must be given together")
        if self.A is not None:
            A = _frozen(self.A)
            b = _frozen(self.b).reshape(-1)
            if A.ndim != 2 or A.shape != (b.shape[0], lower.shape[0]):
                raise ValueError(f"InputRegion: A {A.shape} and b {b.shape} do not fit "
                                 f"{lower.shape[0]} inputs")
            object.__setattr__(self, "A", A)
            object.__setattr__(self, "b", b)

    def contains(self, x: np.ndarray) -> bool:
        """Whether ``x`` lies in the region (closed box and rows)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        inside = bool(np.all(self.lower <= x) and np.all(x <= self.upper))
        if inside and self.A is not None:
            inside = bool(np.all(self.A @ x <= self.b))
        return inside

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InputRegion):
            return NotImplemented
        return (_arrays_equal(self.lower, other.lower) and _arrays_equal(self.upper, other.upper)
                and _arrays_equal(self.A, other.A) and _arrays_equal(self.b, other.b))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class Disjunct:
    """One input region and the output conjunctions (a DNF) that violate it.

    Violated iff some ``x`` in ``region`` has an output satisfying ANY of ``outputs``.
    """

    region: InputRegion
    outputs: tuple[OutputConstraints, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "outputs", tuple(self.outputs))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Disjunct):
            return NotImplemented
        return self.region == other.region and self.outputs == other.outputs

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class Spec:
    """A property: it is violated (``sat``) iff some disjunct is violated."""

    n_inputs: int
    n_outputs: int
    disjuncts: tuple[Disjunct, ...]
    path: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "disjuncts", tuple(self.disjuncts))
        for disjunct in self.disjuncts:
            if disjunct.region.lower.shape[0] != self.n_inputs:
                raise ValueError(f"Spec: a region has {disjunct.region.lower.shape[0]} "
                                 f"inputs, expected {self.n_inputs}")
            for conj in disjunct.outputs:
                if conj.C.shape[1] != self.n_outputs:
                    raise ValueError(f"Spec: an output constraint has {conj.C.shape[1]} "
                                     f"columns, expected {self.n_outputs}")

    def is_counterexample(self, x: np.ndarray, y: np.ndarray) -> bool:
        """Whether the pair ``(x, y)`` violates the property, exactly as written."""
        return any(d.region.contains(x) and any(c.holds(y) for c in d.outputs)
                   for d in self.disjuncts)

    def __eq__(self, other: object) -> bool:
        """Same counts and disjuncts; ``path`` is a label and does not count."""
        if not isinstance(other, Spec):
            return NotImplemented
        return (self.n_inputs == other.n_inputs and self.n_outputs == other.n_outputs
                and self.disjuncts == other.disjuncts)

    __hash__ = None  # type: ignore[assignment]
