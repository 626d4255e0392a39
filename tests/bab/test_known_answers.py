"""Branch and bound on tiny ReLU nets whose true minimum is known from a dense grid:
thresholds just below it must give unsat, just above it sat, with both split kinds."""
from __future__ import annotations

import pytest

from tests.builders import known_answer_min, known_answer_net, known_answer_spec
from tests.helpers import assert_verdicts_bracket
from verifier import Config, verify
from verifier.config import with_overrides


@pytest.mark.parametrize("mode", ["input", "activation"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bab_agrees_with_the_true_minimum(tmp_path, seed: int, mode: str, device: str) -> None:
    model = known_answer_net(tmp_path, seed)
    m = known_answer_min(model)
    spread = 0.05 * (1 + abs(m))
    cfg = with_overrides(Config(timeout=60), [f"bab.mode={mode}", "attack.enabled=false", "attack.samples=1",
                                              f"device={device}"])
    assert_verdicts_bracket(model, known_answer_spec, m, spread, cfg)


def test_timeout_gives_timeout_not_unsat(tmp_path) -> None:
    model = known_answer_net(tmp_path, 3, widths=(2, 64, 64, 64, 1))
    m = known_answer_min(model)
    threshold = m - 0.05 * (1 + abs(m))  # safely below the minimum: sat would be wrong
    cfg = with_overrides(Config(timeout=0.5), ["bab.mode=activation", "attack.enabled=false"])
    result = verify(model, known_answer_spec(threshold), cfg)
    assert result.verdict in ("timeout", "unknown", "unsat")
    # A zero budget can never produce a verdict: the search stops before proving anything.
    zero = verify(model, known_answer_spec(threshold), with_overrides(Config(timeout=0.0), ["attack.enabled=false"]))
    assert zero.verdict == "timeout"


def test_domain_limit_gives_unknown_not_unsat(tmp_path) -> None:
    model = known_answer_net(tmp_path, 4, widths=(2, 32, 32, 1))
    m = known_answer_min(model)
    cfg = with_overrides(Config(timeout=60), ["bab.mode=input", "bab.max_domains=1", "bab.batch_size=1",
                                              "attack.enabled=false"])
    result = verify(model, known_answer_spec(m - 1e-3 * (1 + abs(m))), cfg)
    assert result.verdict in ("unknown", "unsat")
    if result.verdict == "unsat":
        pytest.fail("a one-domain budget cannot prove a threshold this close to the minimum")


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_input_split_methods_agree_with_the_true_minimum(tmp_path, method: str) -> None:
    """Both bounding methods of input split; alpha-CROWN's coefficients can ignore an
    input entirely, which once made the search slice the other input forever."""
    model = known_answer_net(tmp_path, 0)
    m = known_answer_min(model)
    spread = 0.05 * (1 + abs(m))
    cfg = with_overrides(Config(timeout=60), ["bab.mode=input", "attack.enabled=false",
                                              f"bab.input_split_method={method}"])
    result = verify(model, known_answer_spec(m - spread), cfg)
    assert result.verdict == "unsat", (m, result.reason, result.stats)
    assert result.stats["domains"] < 2000
    above = verify(model, known_answer_spec(m + spread), cfg)
    assert above.verdict == "sat"
