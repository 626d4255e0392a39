"""The checks behind config keys and settings objects say one thing in one way: an
argument that takes a settings object refuses anything else with a TypeError naming the
class (and, for the arguments that may be left out, takes None as the defaults)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from verifier.config_checks import instance_of, options_or_default


@dataclass(frozen=True)
class _Knobs:
    depth: int = 3


def test_a_settings_argument_is_its_class_or_a_clear_type_error() -> None:
    knobs = _Knobs(depth=5)
    assert instance_of("knobs", knobs, _Knobs) is knobs
    assert options_or_default("knobs", knobs, _Knobs) is knobs
    assert options_or_default("knobs", None, _Knobs) == _Knobs()
    with pytest.raises(TypeError, match=r"^knobs must be a _Knobs \(e\.g\. _Knobs\(depth=5\)\), got dict \{'depth': 5\}$"):
        options_or_default("knobs", {"depth": 5}, _Knobs, "e.g. _Knobs(depth=5)")
    with pytest.raises(TypeError, match=r"^knobs must be a _Knobs, got NoneType None$"):
        instance_of("knobs", None, _Knobs)     # None is the defaults only where the argument may be left out
    with pytest.raises(TypeError, match=r"got str '.{10,30}'$"):
        instance_of("knobs", "x" * 1000, _Knobs)   # a long value is shortened
