"""The threat model shared by certified training and `verify_module`, less its radius.

No torch at import: `verifier.Perturbation` is importable without paying for it (torch is
imported when a range end is an array, where the caller holds arrays anyway).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from verifier.config_checks import Choice, Real, _Rejected, check_settings, instance_of, setting

if TYPE_CHECKING:
    import torch

__all__ = ["Perturbation", "NORMS", "checked_perturbation"]

NORMS = ("inf", "2")

End = Union[float, "torch.Tensor"]


@dataclass(frozen=True)
class _RangeEnd(Real):
    """A finite number, as `Real` takes it (a 0-d tensor or array is its number: the old
    signatures clamped with one); or an array or tensor of finite numbers, kept as a float64
    CPU tensor of its own (a copy, so that the caller's later writes cannot move a frozen
    range)."""

    def expected(self) -> str:
        return "a finite number, or an array or tensor of finite numbers"

    def __call__(self, value: Any) -> End:
        ndim = None if isinstance(value, (numbers.Real, str)) else getattr(value, "ndim", None)
        if ndim is None or ndim == 0:
            return super().__call__(value.item() if ndim == 0 else value)
        import torch  # lazy: no torch at import (module docstring); the caller holds arrays here

        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise _Rejected(self.expected()) from None
        if t.dtype == torch.bool or t.is_complex() or t.numel() == 0:
            raise _Rejected(self.expected())
        t = t.detach().to(device="cpu", dtype=torch.float64).clone()
        if not bool(torch.isfinite(t).all()):
            raise _Rejected(self.expected())
        return t


@dataclass(frozen=True)
class Perturbation:
    """How a point may be perturbed: within a ball of the norm `norm` ("inf": the box
    x +- eps; "2": the l2 ball of radius eps) and inside the valid input range
    [lower, upper] (pixels in [0, 1] by default) that the ball is clipped to.

    These stay fixed for a model and its data, so they travel together. The radius eps
    does not: it is each call's own argument, because a training schedule
    (`EpsilonSchedule`) changes it every step and it may be a tensor with one radius per
    example, where a frozen object would have to be rebuilt at every step. The fields
    meet the config keys' checks (`verifier.config_checks`), with their words.

    Range ends: a number (a 0-d tensor or array is taken as its number), or, with norm
    "inf", an array or tensor per input feature, kept as a float64 CPU tensor. Its shape
    must broadcast to one example's shape without growing it: the example's own shape
    ([C, H, W]), one with 1s where the range is shared (per channel: [C, 1, 1]), and
    any leading 1s ([1, C, 1, 1]); a batch's shape ([B, C, H, W]) is refused when the
    range is used (`range_for`), since the range belongs to the data, not to one batch.
    lower <= upper must hold at every element. Per-feature ranges are for the l-inf
    paths, where the box x +- eps is clipped elementwise: the l2 paths (`verify_module`'s
    attack and its certificates over the ball) take a range of two numbers.
    """

    norm: str = setting("inf", Choice(NORMS))
    lower: End = setting(0.0, _RangeEnd(None))
    upper: End = setting(1.0, _RangeEnd(None))

    def __post_init__(self) -> None:
        check_settings(self)
        lower, upper = self.lower, self.upper
        if isinstance(lower, float) and isinstance(upper, float):
            if lower > upper:
                raise ValueError(f"lower must be <= upper, got lower={lower} and upper={upper}")
            return
        if self.norm != "inf":
            raise ValueError(f"a range per feature (lower or upper an array) goes with norm 'inf' only, not "
                             f"{self.norm!r}: the l2 paths take a range of two numbers")
        import torch  # lazy: no torch at import (module docstring)

        try:
            bad = torch.as_tensor(lower, dtype=torch.float64) > torch.as_tensor(upper, dtype=torch.float64)
        except RuntimeError:
            raise ValueError(f"lower and upper must broadcast to one shape, got {_shape(lower)} and "
                             f"{_shape(upper)}") from None
        if bool(bad.any()):
            i = tuple(int(k) for k in bad.nonzero()[0])
            lo, hi = torch.broadcast_tensors(torch.as_tensor(lower), torch.as_tensor(upper))
            raise ValueError(f"lower must be <= upper at every element, got lower={float(lo[i])} and "
                             f"upper={float(hi[i])} at index {i}")

    def range_for(self, shape: tuple[int, ...]) -> tuple[End, End]:
        """(lower, upper) for one example of `shape`: a number as it is, an array end
        expanded to `shape` (a view). A ValueError names both shapes where an end does not
        broadcast to `shape` without growing it (see the class docstring)."""
        return _end_for("lower", self.lower, shape), _end_for("upper", self.upper, shape)

    def _key(self) -> tuple:
        return self.norm, _hashable(self.lower), _hashable(self.upper)

    def __eq__(self, other: object) -> bool:
        # By value for tensor ends too: the generated __eq__ would ask a tensor for its truth.
        return self._key() == other._key() if isinstance(other, Perturbation) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())


def _shape(end: End) -> tuple[int, ...]:
    return () if isinstance(end, float) else tuple(end.shape)


def _hashable(end: End) -> Any:
    return end if isinstance(end, float) else (tuple(end.shape), tuple(end.reshape(-1).tolist()))


def _end_for(name: str, end: End, shape: tuple[int, ...]) -> End:
    if isinstance(end, float):
        return end
    own = tuple(end.shape)
    lead, tail = own[:max(0, len(own) - len(shape))], own[len(own) - min(len(own), len(shape)):]
    if any(n != 1 for n in lead) or any(a not in (1, b) for a, b in zip(tail[::-1], shape[::-1])):
        raise ValueError(f"Perturbation.{name} has shape {own}, which does not broadcast to one example's shape "
                         f"{tuple(shape)}: give a number, or an array of the example's shape or of 1s where the "
                         f"range is shared (e.g. {(shape[0],) + (1,) * (len(shape) - 1) if shape else ()} per channel)")
    return end.reshape(tail).expand(shape)


def checked_perturbation(value: object) -> Perturbation:
    """`value` if it is a `Perturbation`: a clear error for a call written against the
    old signatures, whose norm or range would otherwise land in its place."""
    return instance_of("perturbation", value, Perturbation, "e.g. Perturbation(norm='2', lower=0.0, upper=1.0)")
