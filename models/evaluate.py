"""The reference forward of a `Graph` in torch, batched with `torch.func.vmap`.

Each op's forward is written for exact ONNX shapes; vmap adds the leading batch
dimension that bound propagation and attacks use, so ops never need to know about it.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch.func import vmap

from models.graph import Graph, Node
from models.ops import forward_rule

__all__ = ["GraphEvaluator", "cast_constants", "BROADCASTING", "stacked_call", "map_samples"]

# Ops whose forward rule, applied to a batch [B, *sample] at once, computes every sample
# as vmap would: elementwise maths with numpy broadcasting, and MatMul of a variable
# (left) by a constant (right), which torch.matmul broadcasts over leading dimensions.
BROADCASTING = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Add", "Sub", "Mul", "Div", "MatMul"})


def stacked_call(node: Node, fn, args: list, variable: list) -> Optional[list[torch.Tensor]]:
    """`fn(node, args)` for B samples at once, stacked on ONNX's N axis, or None.

    Only for a rule that declares `batches` for these inputs (models/ops/registry.py),
    and only when every variable input is [B, 1, ...] (the graph's own batch is 1): the
    samples' N axes, of size 1, are dropped, the B samples take their place, and each
    output gets its size-1 N axis back. Any other case is None and the caller maps.
    """
    batches = forward_rule(node).batches
    if batches is None or not any(variable):
        return None
    if any(v and (a.dim() < 2 or a.shape[1] != 1) for a, v in zip(args, variable)):
        return None
    if not batches(node, variable, args):
        return None
    outs = fn(node, [a.squeeze(1) if v else a for a, v in zip(args, variable)])
    return [o.unsqueeze(1) for o in outs]


def map_samples(node: Node, fn, args: list, variable: list) -> list[torch.Tensor]:
    """`fn` (written for one sample) over the leading batch axis of the variable inputs:
    stacked on the N axis where the rule allows it (`stacked_call`), else by vmap."""
    out = stacked_call(node, fn, args, variable)
    if out is not None:
        return out

    def call(*xs: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        return tuple(fn(node, list(xs)))

    return list(vmap(call, in_dims=tuple(0 if v else None for v in variable))(*args))


def cast_constants(constants: Mapping[str, torch.Tensor], dtype: torch.dtype,
                   device: torch.device | str) -> dict[str, torch.Tensor]:
    """Floating constants in `dtype` on `device`; integer constants keep their type."""
    out = {}
    for name, t in constants.items():
        out[name] = t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
    return out


class GraphEvaluator:
    """Runs a graph's nodes on tensors with one extra leading batch dimension.

    It holds the constants cast once to the working dtype and device; it keeps no
    other state, so one evaluator serves any number of calls.
    """

    def __init__(self, graph: Graph, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        self.graph = graph
        self.dtype = dtype
        self.device = torch.device(device)
        self.constants = cast_constants(graph.constants, dtype, self.device)

    def node_inputs(self, node: Node, values: Mapping[str, torch.Tensor]) -> tuple[list, list]:
        """Inputs of `node` and their vmap in_dims (0 for batched values, None for constants)."""
        args, dims = [], []
        for name in node.inputs:
            if name == "":
                args.append(None)
                dims.append(None)
            elif name in self.constants:
                args.append(self.constants[name])
                dims.append(None)
            else:
                args.append(values[name])
                dims.append(0)
        return args, dims

    def run_node(self, node: Node, values: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The node's outputs for batched variable inputs taken from `values`.

        Forward rules are written per sample; vmap maps them over the batch. For the ops in
        `BROADCASTING` the rule applied to the whole batch at once is the same function
        (elementwise maths and matrix products broadcast over leading dimensions), and
        skips vmap's per-call cost (a large share of an input-split search's time). The
        result's shape is checked against the graph's; any other shape falls back to vmap,
        or to stacking on the N axis where the rule declares it safe (`stacked_call`).
        """
        fn = forward_rule(node).fn
        args, dims = self.node_inputs(node, values)
        out = None
        if node.op in BROADCASTING and len(node.outputs) == 1 and (node.op != "MatMul" or dims == [0, None]):
            out = self._direct(node, fn, args, dims)
        if out is None:
            out = map_samples(node, fn, args, [d == 0 for d in dims])
        # A Cast from an integer or bool tensor gives torch's default float type: back
        # to the working dtype, so that the next op does not mix float32 and float64.
        return [o.to(self.dtype) if o.is_floating_point() and o.dtype != self.dtype else o for o in out]

    def _direct(self, node: Node, fn, args: list, dims: list) -> Optional[list[torch.Tensor]]:
        """fn on the batch at once, when every variable input has its sample's rank + 1 and
        no constant outranks a sample (numpy broadcasting then aligns them as vmap does)."""
        shapes = self.graph.shapes
        rank = None
        for x, d, a in zip(node.inputs, dims, args):
            if d == 0:
                if a.dim() != len(shapes[x]) + 1 or (rank is not None and a.dim() != rank):
                    return None
                rank = a.dim()
        for d, a in zip(dims, args):
            if d is None and a is not None and rank is not None and a.dim() >= rank:
                return None
        if rank is None:
            return None
        out = fn(node, list(args))
        want = shapes.get(node.outputs[0])
        B = next(a.shape[0] for a, d in zip(args, dims) if d == 0)
        if len(out) != 1 or want is None or tuple(out[0].shape) != (B, *want):
            return None
        return [out[0]]

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every variable tensor for a batch `x` of shape [B, *input_shape]."""
        values: dict[str, torch.Tensor] = {self.graph.input_name: x}
        for node in self.graph.nodes:
            for name, out in zip(node.outputs, self.run_node(node, values)):
                values[name] = out
        return values

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs [B, *output_shape] for inputs [B, *input_shape]."""
        x = x.to(device=self.device, dtype=self.dtype)
        return self.forward_all(x)[self.graph.output_name]
