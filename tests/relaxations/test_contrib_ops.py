"""onnxruntime's contrib ops (com.microsoft) are registry entries of their own domain that
bound exactly as the standard op they equal; the independent checker refuses them by
their qualified name rather than reading them as standard ops."""
from __future__ import annotations

import pytest
import torch
from onnx import helper

from models import graph_from_proto
from relaxations import BoundOptions, IntervalBounds, compute_bounds, rule_for
from tests.op_cases import dense_around
from verifier.checker.onnx_net import Unsupported, read_network


def _net(op: str, domain: str, attrs: dict, seed: int):
    node = helper.make_node(op, ["h"], ["z"], domain=domain, **attrs)
    if domain:
        return dense_around([node], "h", "z", 6, 6, seed, domains={domain: 1})
    return dense_around([node], "h", "z", 6, 6, seed, opset=20)


@pytest.mark.parametrize("contrib, approximate", [("Gelu", "none"), ("FastGelu", "tanh")])
@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
def test_contrib_gelu_bounds_equal_the_standard_gelu(contrib: str, approximate: str, method: str) -> None:
    ours = graph_from_proto(_net(contrib, "com.microsoft", {}, 7))
    standard = graph_from_proto(_net("Gelu", "", {"approximate": approximate}, 7))
    assert rule_for(ours.nodes[1]).domain == "com.microsoft" and rule_for(standard.nodes[1]).domain == ""
    g = torch.Generator().manual_seed(1)
    centre = torch.rand(1, 1, 6, generator=g) * 2 - 1
    box = IntervalBounds(centre - 0.3, centre + 0.3)
    opts = BoundOptions(method=method, alpha_iterations=5)
    a, b = compute_bounds(ours, box, options=opts), compute_bounds(standard, box, options=opts)
    assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)


def test_checker_names_the_contrib_op_it_does_not_read() -> None:
    with pytest.raises(Unsupported, match=r"unsupported \(com.microsoft.Gelu\)"):
        read_network(_net("Gelu", "com.microsoft", {}, 7).SerializeToString())
