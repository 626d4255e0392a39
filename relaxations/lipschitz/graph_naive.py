"""Naive certified Lipschitz bound of any supported feed-forward or residual `Graph`.

The walk visits the nodes in topological order and keeps, per tensor ``t``, a certified
bound of the form

    t = M . F . b   (+ constants),    Lip(t) <= ||M|| * ||F|| * Lip(b),

where ``b`` is the last tensor whose bound was *materialised* (a number, w.r.t. the
graph input), ``F`` is a linear map known only through a certified norm bound
(``frozen``) and ``M`` an explicit float64 matrix (kept while it is small). Linear nodes
are multiplied into ``M`` rather than bounded one by one: ``||W2 W1|| <= ||W2|| ||W1||``
and is often much smaller (MatMul then Add, a Sandwich layer's two factors, BatchNorm
after a linear layer). Everything else materialises:

* elementwise activations: ``Lip <= slope * Lip(in)``, the slope from the op's registry rule
  (`OpRule.lipschitz`: ReLU, Tanh, Clip 1; Sigmoid 1/4;
  LeakyReLU max(1, |alpha|)); MaxPool: 1 in l-inf, ``sqrt(windows per entry)`` in l2;
* Add / Sub / Sum of variables: ``sum sqrt(r_i) L_i`` in l2 (``r_i`` is how often
  broadcasting repeats input ``i``), ``sum L_i`` in l-inf; when every operand is a
  pending ``M`` on the same base they are added as matrices first (a residual block
  with a linear branch costs ``||I + W||``, not ``1 + ||W||``);
* Concat of variables: ``sqrt(sum L_i^2)`` in l2, ``max L_i`` in l-inf; Max / Min of
  variables: the same (``|max a - max a'| <= max |da_i|`` entrywise).

Rounding: ``M`` is computed in float64 with an entrywise error below ``err * N`` where
``N = |A_k| ... |A_1|`` is carried along (standard dot-product error bounds); the norm
of ``M`` is certified (Cholesky for l2, upward-rounded row sums for l-inf) and
``err * ||N||`` is added. Products of bounds are rounded up. The result is therefore an
upper bound on the Lipschitz constant of the real-arithmetic function with the
model's (float32) weights, which is what every other method in this package certifies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models import Graph, Node, UnsupportedModel
from relaxations.lipschitz.linear_ops import (
    FLAT_IDENTITY_OPS,
    LINEAR_OPS,
    LinearOp,
    constant_slope,
    linear_op,
    window_multiplicity,
)
from relaxations.lipschitz.norms import certified_spectral_norm, inf_operator_norm_upper, round_up_product
from relaxations.registry import is_affine_node, rule_for

__all__ = ["GraphNaiveBound", "graph_naive_bound", "MAX_ENTRIES"]

_EPS = float(np.finfo(np.float64).eps)
MAX_ENTRIES = 1 << 22  # an explicit M (and its |.| twin) stays below 32 MiB each
MAX_GRAM = 4096  # the Cholesky certificate factors a Gram matrix of min(rows, cols)


@dataclass(frozen=True)
class GraphNaiveBound:
    """A certified bound ``value`` and, per materialisation, what produced it."""

    value: float
    norm: str
    steps: tuple[dict[str, Any], ...]


@dataclass
class _Pending:
    """``t = M . F . base``; ``mt`` holds ``M^T`` as [n_mid, *shape of t] (None: M = I)."""

    base: str
    frozen: float
    mid_size: int
    shape: tuple[int, ...]
    mt: torch.Tensor | None = None
    nt: torch.Tensor | None = None
    err: float = 0.0
    nodes: list[str] = field(default_factory=list)


def _gamma(work: int) -> float:
    g = 2.0 * (work + 4) * _EPS
    return g / (1.0 - g)


class _Walk:
    def __init__(self, graph: Graph, norm: str) -> None:
        if norm not in ("2", "inf"):
            raise ValueError(f"norm must be '2' or 'inf', got {norm!r}")
        self.g, self.norm = graph, norm
        self.lip: dict[str, float] = {graph.input_name: 1.0}
        self.pend: dict[str, _Pending] = {
            graph.input_name: _Pending(graph.input_name, 1.0, graph.input_size, tuple(graph.input_shape))}
        self.steps: list[dict[str, Any]] = []

    # -- materialising --------------------------------------------------------------
    def _matrix_norm(self, p: _Pending) -> float:
        """Certified ``||M||`` including the rounding of its computation."""
        if p.mt is None:
            return 1.0
        m = p.mt.reshape(p.mid_size, -1).T.numpy()
        n = p.nt.reshape(p.mid_size, -1).T.numpy()
        if self.norm == "2":
            base = certified_spectral_norm(m)
            slack = p.err * float(np.linalg.norm(n)) if p.err else 0.0
        else:
            base = inf_operator_norm_upper(m)
            slack = p.err * inf_operator_norm_upper(n) if p.err else 0.0
        return float(np.nextafter((base + slack) * (1.0 + 4.0 * _EPS), np.inf))

    def _freeze(self, p: _Pending) -> _Pending:
        """Replace M by its norm bound (keeps ``t = I . F' . base``)."""
        if p.mt is None:
            return p
        f = round_up_product([p.frozen, self._matrix_norm(p)])
        self.steps.append({"nodes": list(p.nodes), "factor": f / p.frozen if p.frozen else 0.0, "kind": "composed"})
        return _Pending(p.base, f, math.prod(p.shape), p.shape)

    def value(self, name: str) -> float:
        """The materialised bound of tensor ``name`` (w.r.t. the graph input)."""
        if name not in self.lip:
            p = self.pend[name]
            f = round_up_product([p.frozen, self._matrix_norm(p)])
            if p.mt is not None:
                self.steps.append({"nodes": list(p.nodes), "factor": f / p.frozen if p.frozen else 0.0,
                                   "kind": "composed"})
            self.lip[name] = round_up_product([f, self.lip[p.base]])
        return self.lip[name]

    def _set_base(self, name: str, value: float, node: Node, why: str) -> None:
        self.lip[name] = value
        self.pend[name] = _Pending(name, 1.0, math.prod(self.g.shapes[name]), tuple(self.g.shapes[name]))
        self.steps.append({"nodes": [node.name], "op": node.op, "kind": why, "L": value})

    # -- linear nodes ---------------------------------------------------------------
    def _compose(self, p: _Pending, op: LinearOp, out_name: str, node: Node) -> _Pending:
        n_mid = p.mid_size if p.mt is not None else op.n_in
        small = n_mid * op.n_out <= MAX_ENTRIES and min(n_mid, op.n_out) <= MAX_GRAM
        if not small:
            p = self._freeze(p)
            f = round_up_product([p.frozen, op.norm(self.norm)])
            self.steps.append({"nodes": [node.name], "op": node.op, "kind": "operator norm",
                               "factor": f / p.frozen if p.frozen else 0.0})
            return _Pending(p.base, f, op.n_out, op.out_shape)
        run, run_abs = torch.func.vmap(op.apply), torch.func.vmap(op.apply_abs)
        g = _gamma(op.work)
        with torch.no_grad():
            if p.mt is None:
                basis = torch.eye(op.n_in, dtype=torch.float64).reshape(op.n_in, *op.in_shape)
                mt, nt, err = run(basis), run_abs(basis), g / (1.0 - g)
            else:
                mt, nt = run(p.mt), run_abs(p.nt)
                err = (p.err + g * (1.0 + p.err)) / (1.0 - g)
        return _Pending(p.base, p.frozen, n_mid, op.out_shape, mt.contiguous(), nt.contiguous(), err,
                        p.nodes + [node.name])

    def _merge_sum(self, node: Node, signs: list[float]) -> bool:
        """Add pending matrices on a shared base; False when that is not possible."""
        vars_ = [x for x in node.inputs if x and x not in self.g.constants]
        ps = [self.pend[x] for x in vars_]
        out_shape = tuple(self.g.shapes[node.outputs[0]])
        if len({(p.base, p.mid_size) for p in ps}) != 1 or any(p.frozen != 1.0 or p.shape != out_shape for p in ps):
            return False
        n_mid = ps[0].mid_size
        if n_mid * math.prod(out_shape) > MAX_ENTRIES or min(n_mid, math.prod(out_shape)) > MAX_GRAM:
            return False
        eye = torch.eye(n_mid, dtype=torch.float64).reshape(n_mid, *out_shape)
        mt = sum(s * (p.mt if p.mt is not None else eye) for s, p in zip(signs, ps))
        nt = sum((p.nt if p.nt is not None else eye) for p in ps)
        e = max(p.err for p in ps)
        g = _gamma(len(ps))
        err = (e + g * (1.0 + e)) / (1.0 - g)
        self.pend[node.outputs[0]] = _Pending(ps[0].base, 1.0, n_mid, out_shape, mt, nt, err,
                                              [n for p in ps for n in p.nodes] + [node.name])
        return True

    # -- the walk -------------------------------------------------------------------
    def run(self) -> GraphNaiveBound:
        for node in self.g.nodes:
            self.visit(node)
        value = self.value(self.g.output_name)
        return GraphNaiveBound(value, self.norm, tuple(self.steps))

    def _refuse(self, node: Node, why: str) -> UnsupportedModel:
        return UnsupportedModel(f"naive Lipschitz bound: {why}", node=node.name, op=node.qualified_op, opset=node.opset)

    def _repeat(self, name: str, out: str) -> float:
        """How many times broadcasting repeats each entry of ``name`` in ``out``."""
        return math.prod(self.g.shapes[out]) / math.prod(self.g.shapes[name])

    def visit(self, node: Node) -> None:
        g, op = self.g, node.op
        vars_ = [x for x in node.inputs if x and x not in g.constants]
        out = node.outputs[0]
        if op in FLAT_IDENTITY_OPS:
            if op == "Cast" and int(node.attr("to", 1)) not in (1, 11):
                raise self._refuse(node, "a Cast to a non-float32/float64 type is not Lipschitz")
            p = self.pend[vars_[0]]
            self.pend[out] = _Pending(p.base, p.frozen, p.mid_size, tuple(g.shapes[out]), p.mt, p.nt, p.err,
                                      list(p.nodes))
            if p.mt is not None:
                self.pend[out].mt = p.mt.reshape(p.mid_size, *g.shapes[out])
                self.pend[out].nt = p.nt.reshape(p.mid_size, *g.shapes[out])
            if vars_[0] in self.lip and p.mt is None and p.frozen == 1.0:
                self.lip[out] = self.lip[vars_[0]]
            return
        if op in ("Add", "Sub", "Sum") and len(vars_) > 1:
            signs = [1.0 if not (op == "Sub" and x == node.inputs[1]) else -1.0 for x in vars_]
            if len(set(vars_)) == len(vars_) and self._merge_sum(node, signs):
                return
            if self.norm == "2":
                parts = [_sqrt_up(self._repeat(x, out)) * self.value(x) for x in vars_]
            else:
                parts = [self.value(x) for x in vars_]
            self._set_base(out, _sum_up(parts), node, "sum of operand bounds")
            return
        if op in ("MatMul", "Mul", "Gemm", "Div") and len(vars_) > 1:
            raise self._refuse(node, "a product of two variable tensors is not globally Lipschitz")
        if op == "Concat" and len(vars_) > 1:
            vals = [self.value(x) for x in vars_]
            v = _sqrt_sum_sq_up(vals) if self.norm == "2" else max(vals)
            self._set_base(out, v, node, "concat of operand bounds")
            return
        if op in ("Max", "Min"):
            vals = [self.value(x) for x in vars_]
            if self.norm == "2":
                v = _sqrt_sum_sq_up([_sqrt_up(self._repeat(x, out)) * val for x, val in zip(vars_, vals)])
            else:
                v = max(vals)
            self._set_base(out, v, node, "max/min: 1-Lipschitz per entry")
            return
        if op in LINEAR_OPS or (len(vars_) == 1 and _registry_affine(node, vars_[0])):
            for k, name in enumerate(node.outputs):
                if name not in g.shapes:
                    continue
                lin = linear_op(g, node, k)
                self.pend[name] = self._compose(self.pend[vars_[0]], lin, name, node)
            return
        if len(vars_) != 1:
            raise self._refuse(node, f"{op} with {len(vars_)} variable inputs is not supported")
        slope = constant_slope(node, g.constants)
        if op in ("MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin"):
            slope = 1.0
            if op == "MaxPool" and self.norm == "2":
                k = window_multiplicity(node, tuple(g.shapes[vars_[0]]), tuple(g.shapes[out]))
                slope = float(np.nextafter(math.sqrt(k), np.inf)) if k > 1 else 1.0
        if slope is None:
            raise self._refuse(node, f"op {op} has no naive Lipschitz rule (supported: affine ops, the "
                               "activations whose registry rule declares a Lipschitz constant, MaxPool, Max/Min, "
                               "Concat, shape ops)")
        self._set_base(out, round_up_product([slope, self.value(vars_[0])]), node, f"activation slope {slope:g}")


def _registry_affine(node: Node, var: str) -> bool:
    """Whether the bounding registry knows the node as affine in `var` (the others constant):
    `linear_op` then walks it as a dense matrix when it has no rule of its own."""
    try:
        rule = rule_for(node)
    except UnsupportedModel:
        return False
    return is_affine_node(node, rule, [x == var for x in node.inputs])


def _sqrt_up(x: float) -> float:
    r = math.sqrt(x)
    return r if r * r == x and r == int(r) else float(np.nextafter(r, np.inf))


def _sum_up(values: list[float]) -> float:
    s = math.fsum(values)
    return float(np.nextafter(s * (1.0 + 2.0 * len(values) * _EPS), np.inf))


def _sqrt_sum_sq_up(values: list[float]) -> float:
    s = math.fsum(v * v * (1.0 + 8.0 * _EPS) for v in values)
    return float(np.nextafter(math.sqrt(s) * (1.0 + 8.0 * _EPS), np.inf))


def graph_naive_bound(graph: Graph, norm: str = "2") -> GraphNaiveBound:
    """Certified naive Lipschitz bound of ``graph`` from ``norm`` to the same norm.

    Both norms are taken over the flattened input and output tensors. Raises
    `UnsupportedModel` naming the first node without a rule (a product of two
    variables, Exp, Floor, ...)."""
    return _Walk(graph, norm).run()
