"""Lower a graph to the weight lists of a fully connected ReLU network.

The SDP relaxation is written for ``y = W_L relu(... relu(W_1 x + b_1) ...) + b_L``
only. The graph must be a chain of ReLUs and nodes that the bounding registry knows as
affine in the previous tensor (`relaxations.registry.is_affine_node`): Gemm, MatMul,
Add, Conv, BatchNormalization, AveragePool, Pad, Flatten, Reshape, ... Each such node's
matrix is read off its forward rule by evaluation (`models.affine_map`), so the
lowering has no table of op names; anything else is refused with an error naming the
node. Consecutive affine nodes are composed, so ``MatMul`` then ``Add`` (or a Conv, a
BatchNormalization and a Flatten) become one layer, on the flattened (C order) tensors.
"""

from __future__ import annotations

import numpy as np

import torch

from models import Graph, GraphEvaluator, Node, UnsupportedModel
from models.affine import NotAffine, affine_map
from relaxations.registry import is_affine_node, rule_for

__all__ = ["NotReluMlp", "relu_mlp_from_graph", "relu_inputs", "mlp_forward"]

class NotReluMlp(UnsupportedModel, ValueError):
    """The graph is not a chain of affine layers separated by ReLUs.

    An ``UnsupportedModel``: the model is valid, the method cannot take it, so the CLI
    answers bad input (exit 2, this message) rather than an internal error. Still a
    ValueError for callers written before that."""


def _affine_of(graph: Graph, ev: GraphEvaluator, node: Node, var: str) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) with node output = W @ var + b on flat vectors: any op the bounding registry
    knows as affine in `var` (the others constant), read off by evaluation."""
    for x in node.inputs:
        if x and x != var and x not in graph.constants:
            raise NotReluMlp(f"node '{node.name}' ({node.op}): operand '{x}' must be a constant "
                             "(only affine layers with constant weights are supported)")
    try:
        rule = rule_for(node)
    except UnsupportedModel:
        rule = None
    if rule is None or not is_affine_node(node, rule, [x == var for x in node.inputs]):
        raise NotReluMlp(f"node '{node.name}': op {node.op} is not part of a ReLU MLP "
                         "(supported: Relu and ops affine in the previous layer, such as Gemm, MatMul, Add, "
                         "Conv, BatchNormalization, AveragePool, Flatten, Reshape)")
    try:
        return affine_map(ev, node, [var])
    except NotAffine as exc:
        raise NotReluMlp(str(exc)) from None


def relu_mlp_from_graph(graph: Graph) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Weights ``W_k`` [n_{k+1}, n_k] and biases ``b_k`` [n_{k+1}] (float64) of a ReLU MLP.

    The input is flattened in C order (what ONNX Flatten does). Raises ``NotReluMlp``
    naming the offending node for any other graph (a ReLU on the input or on the
    output, two ReLUs in a row, branches, non-constant weights)."""
    n = graph.input_size
    weights: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    cur_w, cur_b = np.eye(n), np.zeros(n)
    pending = False  # an affine map not yet closed by a ReLU
    var = graph.input_name
    consumers = graph.consumers()
    ev = GraphEvaluator(graph, dtype=torch.float64)
    for node in graph.nodes:
        if var not in node.inputs:
            raise NotReluMlp(f"node '{node.name}' ({node.op}) does not read the previous layer: "
                             "the graph is not a simple chain")
        if len(consumers.get(var, [])) > 1:
            raise NotReluMlp(f"tensor '{var}' has several readers: the graph is not a simple chain")
        if node.op == "Relu":
            if not pending:
                raise NotReluMlp(f"node '{node.name}': a ReLU must follow an affine layer")
            weights.append(cur_w)
            biases.append(cur_b)
            n = cur_w.shape[0]
            cur_w, cur_b, pending = np.eye(n), np.zeros(n), False
        else:
            w, b = _affine_of(graph, ev, node, var)
            cur_w, cur_b = w @ cur_w, w @ cur_b + b
            n, pending = w.shape[0], True
        var = node.outputs[0]
    if var != graph.output_name:
        raise NotReluMlp("the chain does not end at the graph output")
    if not pending:
        raise NotReluMlp("the network must end with an affine layer (no ReLU on the output)")
    weights.append(cur_w)
    biases.append(cur_b)
    if len(weights) < 2:
        raise NotReluMlp("the network has no ReLU layer; its bound is exact by linear programming")
    return weights, biases


def mlp_forward(weights: list[np.ndarray], biases: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Reference float64 forward on a (..., n_0) array (tests and attacks)."""
    z = np.asarray(x, dtype=np.float64)
    for w, b in zip(weights[:-1], biases[:-1]):
        z = np.maximum(z @ w.T + b, 0.0)
    return z @ weights[-1].T + biases[-1]


def relu_inputs(graph: Graph) -> list[str]:
    """Names of the tensors read by the ReLUs, in order (their bounds are the SDP's l, u)."""
    return [n.inputs[0] for n in graph.nodes if n.op == "Relu"]
