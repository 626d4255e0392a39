"""Lower a graph to the weight lists of a fully connected ReLU network.

The SDP relaxation is written for ``y = W_L relu(... relu(W_1 x + b_1) ...) + b_L``
only, so rather than teaching it the whole op registry we recognise that shape in
the graph (Gemm / MatMul+Add / Relu / Flatten / Reshape to a row) and refuse
anything else with an error naming the node. Consecutive affine nodes are composed,
so ``MatMul`` then ``Add`` (or two Gemms with nothing between them) become one layer.
"""

from __future__ import annotations

import numpy as np

from models import Graph, Node, UnsupportedModel

__all__ = ["NotReluMlp", "relu_mlp_from_graph", "relu_inputs", "mlp_forward"]

_SHAPE_OPS = ("Flatten", "Reshape", "Identity")


class NotReluMlp(UnsupportedModel, ValueError):
    """The graph is not a chain of affine layers separated by ReLUs.

    An ``UnsupportedModel``: the model is valid, the method cannot take it, so the CLI
    answers bad input (exit 2, this message) rather than an internal error. Still a
    ValueError for callers written before that."""


def _const(graph: Graph, name: str, node: Node) -> np.ndarray:
    if name not in graph.constants:
        raise NotReluMlp(f"node '{node.name}' ({node.op}): operand '{name}' must be a constant "
                         "(only affine layers with constant weights are supported)")
    return graph.constants[name].detach().cpu().double().numpy()


def _affine_of(graph: Graph, node: Node, var: str, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) with node output = W @ var + b on a flat row vector."""
    if node.op == "Gemm":
        if node.inputs[0] != var:
            raise NotReluMlp(f"node '{node.name}' (Gemm): the variable must be the first operand")
        if int(node.attr("transA", 0)):
            raise NotReluMlp(f"node '{node.name}' (Gemm): transA=1 is not supported")
        w = _const(graph, node.inputs[1], node)
        w = w if int(node.attr("transB", 0)) else w.T
        w = float(node.attr("alpha", 1.0)) * w
        b = np.zeros(w.shape[0])
        if len(node.inputs) > 2 and node.inputs[2]:
            b = b + float(node.attr("beta", 1.0)) * np.broadcast_to(
                _const(graph, node.inputs[2], node).reshape(-1), (w.shape[0],))
        return w, b
    if node.op == "MatMul":
        if node.inputs[0] != var:
            raise NotReluMlp(f"node '{node.name}' (MatMul): the variable must be the left operand")
        w = _const(graph, node.inputs[1], node)
        if w.ndim != 2:
            raise NotReluMlp(f"node '{node.name}' (MatMul): weight must be 2-D, got {w.shape}")
        return w.T, np.zeros(w.shape[1])
    if node.op in ("Add", "Sub"):
        other = [x for x in node.inputs if x != var]
        if len(other) != 1:
            raise NotReluMlp(f"node '{node.name}' ({node.op}): needs one constant operand")
        c = np.broadcast_to(_const(graph, other[0], node).reshape(-1), (n_in,)).astype(np.float64)
        if node.op == "Add":
            return np.eye(n_in), c.copy()
        sign = 1.0 if node.inputs[0] == var else -1.0
        return sign * np.eye(n_in), -sign * c
    raise NotReluMlp(f"node '{node.name}': op {node.op} is not part of a ReLU MLP "
                     "(supported: Gemm, MatMul, Add, Sub, Relu, Flatten, Reshape)")


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
    for node in graph.nodes:
        if var not in node.inputs:
            raise NotReluMlp(f"node '{node.name}' ({node.op}) does not read the previous layer: "
                             "the graph is not a simple chain")
        if len(consumers.get(var, [])) > 1:
            raise NotReluMlp(f"tensor '{var}' has several readers: the graph is not a simple chain")
        if node.op in _SHAPE_OPS:
            shape = graph.shapes.get(node.outputs[0])
            if shape is not None and int(np.prod(shape)) != max(shape):
                raise NotReluMlp(f"node '{node.name}' ({node.op}) produces shape {shape}, not a row")
        elif node.op == "Relu":
            if not pending:
                raise NotReluMlp(f"node '{node.name}': a ReLU must follow an affine layer")
            weights.append(cur_w)
            biases.append(cur_b)
            n = cur_w.shape[0]
            cur_w, cur_b, pending = np.eye(n), np.zeros(n), False
        else:
            w, b = _affine_of(graph, node, var, n)
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
