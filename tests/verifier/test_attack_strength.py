"""The stronger attack between the bounds and the search (`attack.stronger_share`).

The first attack is cheap on purpose (it runs before anything else on every instance);
once the bounds have not decided, a longer one gets a capped share of the time. Known
answer: a published counterexample of mnist_fc that 8 starts of 50 steps miss.
"""
from __future__ import annotations

import pytest

import vnnlib
from tests.conftest import BENCH, needs_shared
from verifier import Config, load_model, verify
from verifier.config import load_config

ONNX, SPEC = "onnx/mnist-net_256x4.onnx", "vnnlib/prop_8_0.05.vnnlib"
NO_SEARCH = ["bab.enabled=false", "lp.milp=off", "timeout=30"]


def _run(sets: list[str]):
    model = load_model(BENCH / "2022_mnist_fc" / ONNX)
    spec = vnnlib.load(BENCH / "2022_mnist_fc" / SPEC, model.n_inputs, model.n_outputs)
    return spec, model, verify(model, spec, load_config(None, NO_SEARCH + sets))


@needs_shared
def test_the_stronger_attack_finds_what_the_first_misses() -> None:
    spec, model, weak = _run(["attack.stronger_share=0"])
    assert weak.verdict != "sat", weak.reason
    spec, model, strong = _run([])
    assert strong.verdict == "sat", strong.reason
    assert spec.is_counterexample(strong.x.astype(float), strong.y)
    assert (model.run_onnxruntime(strong.x) == strong.y).all()


@needs_shared
def test_the_stronger_attack_keeps_to_its_share() -> None:
    """A share of nearly nothing leaves the stronger attack no time for its PGD steps:
    what the default share finds (the test above) is not found."""
    _, _, r = _run(["attack.stronger_share=1e-9"])
    assert r.verdict != "sat", r.reason


def test_the_share_is_checked() -> None:
    with pytest.raises(Exception, match="stronger_share"):
        load_config(None, ["attack.stronger_share=2"])
    assert Config().attack.stronger_share > 0
