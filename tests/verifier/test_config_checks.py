"""The checks behind config keys and settings objects say one thing in one way: an
argument that takes a settings object refuses anything else with a TypeError naming the
class (and, for the arguments that may be left out, takes None as the defaults)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


def test_settings_objects_meet_the_config_keys_checks_and_words() -> None:
    """A settings object outside the config tree refuses a value with the config's rule and
    words (the budget of `LocalSearch` as the run's timeout, ...), names the field as
    `Class.field`, and keeps the value normalised as a key's (numpy scalars as Python's)."""
    from verifier.config import Config, ConfigError
    from verifier.lipschitz_local import LocalSearch
    from verifier.pytorch.perturbation import Perturbation
    from verifier.sdp import SdpOptions

    with pytest.raises(ConfigError) as key:
        Config(timeout=-1)
    config_words = str(key.value).split(": ", 1)[1]   # "expected a number of seconds >= 0, or inf (...), got -1"
    for make, name in [(lambda: LocalSearch(timeout=-1), "LocalSearch.timeout"),
                       (lambda: SdpOptions(scs_time_limit_s=-1), "SdpOptions.scs_time_limit_s")]:
        with pytest.raises(ConfigError) as field:
            make()
        assert str(field.value) == f"{name}: {config_words}"
    for bad, message in [(lambda: LocalSearch(max_domains=-1), "LocalSearch.max_domains: expected an integer >= 0"),
                         (lambda: LocalSearch(batch=0), "LocalSearch.batch: expected an integer >= 1"),
                         (lambda: LocalSearch(linear="no"), "LocalSearch.linear: expected true or false"),
                         (lambda: SdpOptions(skip_proved=1), "SdpOptions.skip_proved: expected true or false"),
                         (lambda: Perturbation(norm="1"), "Perturbation.norm: expected one of inf, 2"),
                         (lambda: Perturbation(lower=float("nan")), "Perturbation.lower: expected a finite number, "
                                                                    "or an array or tensor of finite numbers"),
                         (lambda: Perturbation(upper=True), "Perturbation.upper: expected a finite number, or an "
                                                            "array or tensor of finite numbers")]:
        with pytest.raises(ConfigError, match=f"^{message}, got "):
            bad()
    search = LocalSearch(max_domains=np.int64(5), timeout=np.float32(2.0), linear=np.True_)
    assert (search.max_domains, search.timeout, search.linear) == (5, 2.0, True)
    assert type(search.max_domains) is int and type(search.timeout) is float and type(search.linear) is bool
    assert SdpOptions(scs_time_limit_s=np.inf, skip_proved=np.bool_(False)).skip_proved is False
    assert Perturbation(lower=-1, upper=np.float64(2)) == Perturbation(lower=-1.0, upper=2.0)
