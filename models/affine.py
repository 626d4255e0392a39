"""The explicit matrix of one affine node, read off its forward rule by evaluation.

Methods that need an op as a matrix (the LP/MILP in `verifier/lp`, the SDP's lowering to a
fully connected network in `relaxations/sdp`) take it from here rather than from a table
of op names: any op whose forward is affine in its variable inputs (Gemm, MatMul, Conv,
BatchNormalization, AveragePool, Pad, Reshape, ...) is read the same way, so a new affine
op needs no entry in either method.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from models.errors import UnsupportedModel
from models.evaluate import GraphEvaluator
from models.graph import Node

__all__ = ["NotAffine", "affine_map", "MAX_MAP_ENTRIES"]

MAX_MAP_ENTRIES = 4_000_000      # 32 MB of float64 per map (mnist_fc's first layer: 0.2 M)


class NotAffine(UnsupportedModel):
    """The node is not affine in the inputs named, or its matrix is too large to write."""


def affine_map(ev: GraphEvaluator, node: Node, var: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) with the node's output (flattened) = W @ concat(variable inputs, flattened) + b.

    Evaluated in float64 (`ev` should be a float64 evaluator) at 0 and the unit vectors:
    W's entries are out(e_j) - out(0), exact for float32 weights up to the rounding of
    adding b (an ulp of float64). A random point checks affinity, so an op that is not
    affine in these inputs (a product of two of them, a ReLU) is refused, not linearised.
    """
    shapes = ev.graph.shapes
    sizes = [int(np.prod(shapes[x])) for x in var]
    N = sum(sizes)
    n_out = int(np.prod(shapes[node.outputs[0]]))
    if N * n_out > MAX_MAP_ENTRIES:
        raise NotAffine(f"its matrix ({n_out} x {N}) is too large to write densely", node=node.name,
                        op=node.qualified_op, opset=node.opset)
    r = np.random.default_rng(0).uniform(-1, 1, N)
    pts = np.concatenate([np.zeros((1, N)), np.eye(N), r[None]])
    values, at = {}, 0
    for x, k in zip(var, sizes):
        values[x] = torch.tensor(pts[:, at:at + k], dtype=ev.dtype).reshape(len(pts), *shapes[x])
        at += k
    y = ev.run_node(node, values)[0].reshape(len(pts), -1).double().cpu().numpy()
    b = y[0]
    W = (y[1:N + 1] - b).T
    if not np.allclose(W @ r + b, y[-1], rtol=1e-9, atol=1e-9 * (1 + np.abs(y[-1]).max())):
        raise NotAffine("it is not affine in its variable inputs", node=node.name, op=node.qualified_op,
                        opset=node.opset)
    return W, b
