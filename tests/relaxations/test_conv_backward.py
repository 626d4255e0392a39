"""A convolution's backward step (relaxations/ops/conv.py): the coefficients it hands to
the input are the convolution's transpose applied to them, i.e. the gradient of
<A, conv(x)> in x, onto one input channel and several, with strides, dilations, asymmetric pads (the
part one side pads beyond the other narrowed off after the transpose), and sizes a
stride does not divide."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from onnx import helper

from models import graph_from_proto
from relaxations.ops.conv import _conv_backward

torch.set_num_threads(1)


def _node(strides, dil, pads):
    return graph_from_proto(helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["X", "W"], ["Y"], strides=strides, dilations=dil, pads=pads)], "c",
        [helper.make_tensor_value_info("X", 1, [1, 1, 4, 4])], [helper.make_tensor_value_info("Y", 1, None)],
        [helper.make_tensor("W", 1, [1, 1, 1, 1], [1.0])]))).nodes[0]


@pytest.mark.parametrize("ci, strides, dil, pads, size, train", [
    (c, s, d, p, n, t) for c, s, d, p, n, t in itertools.product(
        (1, 3), ([1, 1], [2, 2], [3, 2]), ([1, 1], [2, 1]), ([0, 0, 0, 0], [1, 2, 0, 1]), (9, 10), (False, True))])
def test_the_step_is_the_transpose_of_the_convolution(ci, strides, dil, pads, size, train):
    """train: weights under autograd, as in certified training, where a convolution from
    one channel goes back as a product with its dense matrix (`_dense_pays`)."""
    g = torch.Generator().manual_seed(ci * 100 + size)
    w = torch.randn(4, ci, 3, 2, generator=g, dtype=torch.float64).requires_grad_(train)
    node = _node(strides, dil, pads)
    x = torch.randn(1, ci, size, size + 1, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(F.pad(x, (pads[1], pads[3], pads[0], pads[2])), w, stride=strides, dilation=dil)
    B, S = 2, 3
    A = torch.randn(B, S, *y.shape, generator=g, dtype=torch.float64)   # [B, S, 1, Co, h, w]
    step = _conv_backward(node, [A], [None, w, None], [tuple(x.shape), None, None])
    assert step is not None
    A_in = step[0][0]
    for b, s in itertools.product(range(B), range(S)):
        want, = torch.autograd.grad((A[b, s] * y[0]).sum(), x, retain_graph=True)
        torch.testing.assert_close(A_in[b, s], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strides, pads", [([1, 1], [1, 1, 1, 1]), ([2, 2], [1, 2, 0, 1])])
def test_the_dense_step_trains_the_weights_as_the_transpose_does(monkeypatch, strides, pads):
    """From one channel under autograd, the product with the dense matrix gives the
    transpose's coefficients and the same gradient in the weights."""
    import relaxations.ops.conv as conv

    g = torch.Generator().manual_seed(7)
    node = _node(strides, [1, 1], pads)
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    y = F.conv2d(F.pad(x, (pads[1], pads[3], pads[0], pads[2])), torch.zeros(4, 1, 3, 3, dtype=torch.float64),
                 stride=strides)
    A = torch.randn(2, 3, *y.shape, generator=g, dtype=torch.float64)
    R = torch.randn(2, 3, 1, 1, 9, 9, generator=g, dtype=torch.float64)
    out = {}
    for name, entries in (("dense", conv._DENSE_ENTRIES), ("transpose", 0)):
        monkeypatch.setattr(conv, "_DENSE_ENTRIES", entries)
        w = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64,
                        requires_grad=True)
        assert conv._dense_pays(w, (1, 1, 9, 9), A) == (name == "dense")
        A_in = _conv_backward(node, [A], [None, w, None], [(1, 1, 9, 9), None, None])[0][0]
        grad, = torch.autograd.grad((A_in * R).sum(), w)
        out[name] = (A_in.detach(), grad)
    torch.testing.assert_close(out["dense"][0], out["transpose"][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["dense"][1], out["transpose"][1], rtol=1e-12, atol=1e-12)
