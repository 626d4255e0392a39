"""Rewrite passes over the node list, each returning new nodes (nothing is mutated).

They make the graph smaller and faster to bound; none of them changes what it
computes, which the onnxruntime check at load time confirms.
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType

import torch

from models.graph import Node

__all__ = ["drop_aliases", "prune_to_output", "fold_batchnorm", "expand_layernorm", "expand_softmax",
           "expand_gemm", "constant_output", "SOFTMAX_EXPANSION_MAX"]

_ALIAS_OPS = {"Identity", "Dropout"}
# The largest softmax axis `expand_softmax` expands: its pairwise differences hold n times
# the input's elements (an attention map over 64 tokens: 64 x 64 x 64 per head).
SOFTMAX_EXPANSION_MAX = 64


def drop_aliases(nodes: list[Node], output: str, graph_input: str) -> tuple[list[Node], str]:
    """Remove Identity and inference-mode Dropout by renaming their readers' inputs."""
    alias: dict[str, str] = {}
    kept = []
    for n in nodes:
        if n.op in _ALIAS_OPS and n.outputs and n.inputs[0] != "":
            alias[n.outputs[0]] = alias.get(n.inputs[0], n.inputs[0])
            continue
        kept.append(n)
    renamed = [dataclasses.replace(n, inputs=tuple(alias.get(x, x) for x in n.inputs))
               for n in kept]
    return renamed, alias.get(output, output)


def constant_output(graph_input: str, output: str, value: torch.Tensor, opset: int
                    ) -> tuple[list[Node], dict[str, torch.Tensor]]:
    """Nodes that compute a constant output from the input: value + sum(0 * x).

    A model whose output does not depend on its input (Shape of the input, a folded
    subgraph) still states a property: the engine needs a path from the input, and
    0 * x is exactly 0 for the finite inputs of a bounded region, so the output is the
    constant, its bounds are the constant's, and onnxruntime's replay agrees.
    """
    zero, zeros, total = "nncert_const_zero", "nncert_const_zeros", "nncert_const_sum"
    consts = {zero: torch.zeros(1), output + "_value": value.to(torch.float32)}
    attrs = MappingProxyType({"keepdims": 0})
    nodes = [Node("nncert_const_mul", "Mul", (graph_input, zero), (zeros,), MappingProxyType({}), opset),
             Node("nncert_const_reduce", "ReduceSum", (zeros,), (total,), attrs, opset),
             Node("nncert_const_add", "Add", (output + "_value", total), (output,), MappingProxyType({}), opset)]
    return nodes, consts


def prune_to_output(nodes: list[Node], output: str) -> list[Node]:
    """Keep only the nodes the output depends on."""
    needed = {output}
    kept = []
    for n in reversed(nodes):
        if any(o in needed for o in n.outputs):
            kept.append(n)
            needed.update(x for x in n.inputs if x)
    return list(reversed(kept))


def fold_batchnorm(nodes: list[Node], constants: dict[str, torch.Tensor]
                   ) -> tuple[list[Node], dict[str, torch.Tensor]]:
    """Fold BatchNormalization into a preceding Conv that only it reads.

    A fused Conv is one op fewer to bound; the result is the same affine map.
    """
    readers: dict[str, int] = {}
    for n in nodes:
        for x in n.inputs:
            readers[x] = readers.get(x, 0) + 1
    by_output = {o: n for n in nodes for o in n.outputs}
    constants = dict(constants)
    replaced: dict[str, Node] = {}
    dropped: set[str] = set()
    for bn in nodes:
        if bn.op != "BatchNormalization" or len(bn.outputs) != 1:
            continue
        conv = by_output.get(bn.inputs[0])
        params = bn.inputs[1:5]
        if conv is None or conv.op != "Conv" or readers.get(bn.inputs[0], 0) != 1 \
                or not all(p in constants for p in params) or conv.inputs[1] not in constants \
                or (len(conv.inputs) > 2 and conv.inputs[2] and conv.inputs[2] not in constants):
            continue
        scale, shift, mean, var = (constants[p].double() for p in params)
        factor = scale / torch.sqrt(var + float(bn.attr("epsilon", 1e-5)))
        w = constants[conv.inputs[1]].double()
        b = constants[conv.inputs[2]].double() if len(conv.inputs) > 2 and conv.inputs[2] else \
            torch.zeros(w.shape[0], dtype=torch.float64)
        w_name, b_name = f"{conv.name}::bn_weight", f"{conv.name}::bn_bias"
        # Kept in float64: a float64 bound pass is then about the stored Conv and
        # BatchNormalization to float64's rounding (a float32 fused weight would differ
        # from them by up to 6e-8 relative); a float32 pass rounds them once on its cast.
        constants[w_name] = w * factor.reshape([-1] + [1] * (w.dim() - 1))
        constants[b_name] = b * factor + shift - mean * factor
        replaced[conv.name] = Node(conv.name, "Conv", (conv.inputs[0], w_name, b_name), bn.outputs,
                                   MappingProxyType(dict(conv.attrs)), conv.opset)
        dropped.add(bn.name)
    out = [replaced.get(n.name, n) for n in nodes if n.name not in dropped]
    return out, constants


def expand_layernorm(node: Node, rank: int, constants: dict[str, torch.Tensor]) -> list[Node]:
    """LayerNormalization as the ops it is made of, so that every pass (forward, IBP,
    CROWN, alpha-CROWN, branching) handles it by their rules without one of its own:

        m = ReduceMean(x), d = x - m, v = ReduceMean(d^2), y = d * 1/sqrt(v + eps) * scale + bias

    over the axes from `axis` to the last (x of rank `rank`). The square is Pow 2 (its
    convex relaxation is tighter than a product of d with itself); d times the reciprocal
    is a product of two variable tensors. The optional outputs Mean and InvStdDev name m
    and the reciprocal. New constants (axes, 2, eps) are added to `constants`.
    """
    axis = int(node.attr("axis", -1))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        raise ValueError(f"axis {node.attr('axis', -1)} out of range for rank {rank}")
    if int(node.attr("stash_type", 1)) != 1:
        raise ValueError("stash_type other than 1 (float32) is not supported")
    axes = list(range(axis, rank))
    x, scale = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
    outs = list(node.outputs) + ["", ""]
    name = node.name

    def t(suffix: str) -> str:
        return f"{name}::{suffix}"

    constants[t("two")] = torch.tensor(2.0)
    constants[t("eps")] = torch.tensor(float(node.attr("epsilon", 1e-5)))
    if node.opset >= 18:
        constants[t("axes")] = torch.tensor(axes, dtype=torch.int64)

    def mean(src: str, dst: str) -> Node:
        if node.opset >= 18:
            return Node(t(f"mean_{dst}"), "ReduceMean", (src, t("axes")), (dst,), MappingProxyType({"keepdims": 1}),
                        node.opset)
        return Node(t(f"mean_{dst}"), "ReduceMean", (src,), (dst,),
                    MappingProxyType({"keepdims": 1, "axes": axes}), node.opset)

    m, inv = outs[1] or t("m"), outs[2] or t("inv")
    scaled = t("scaled") if bias else outs[0]
    nodes = [mean(x, m),
             Node(t("sub"), "Sub", (x, m), (t("d"),), MappingProxyType({}), node.opset),
             Node(t("square"), "Pow", (t("d"), t("two")), (t("d2"),), MappingProxyType({}), node.opset),
             mean(t("d2"), t("v")),
             Node(t("add_eps"), "Add", (t("v"), t("eps")), (t("ve"),), MappingProxyType({}), node.opset),
             Node(t("sqrt"), "Sqrt", (t("ve"),), (t("s"),), MappingProxyType({}), node.opset),
             Node(t("reciprocal"), "Reciprocal", (t("s"),), (inv,), MappingProxyType({}), node.opset),
             Node(t("normalise"), "Mul", (t("d"), inv), (t("n"),), MappingProxyType({}), node.opset),
             Node(t("scale"), "Mul", (t("n"), scale), (scaled,), MappingProxyType({}), node.opset)]
    if bias:
        nodes.append(Node(t("bias"), "Add", (scaled, bias), (outs[0],), MappingProxyType({}), node.opset))
    return nodes


def expand_softmax(node: Node, shape: tuple, constants: dict[str, torch.Tensor]) -> list[Node]:
    """Softmax along one axis as the ops it is made of, or [node] where it is not expanded:

        y_i = 1 / (1 + sum_{j != i} exp(x_j - x_i))

    (d = x_j - x_i from two Unsqueezes and a Sub, Exp, the diagonal masked out by a
    constant Mul, ReduceSum over j, Add 1, Reciprocal, then a Clip to [0, 1]). The Clip
    is the identity on what Reciprocal yields (1 / (1 + s) with s >= 0) and states
    softmax's range exactly: the interval passes widen Reciprocal's ends by a rounding
    margin, and Clip's interval, a clamp, is exact, so "y < 0" and "y > 1" are refuted.
    (In floating point too: each ratio is a float at most its divisor, and the rounded
    quotient of such is at most 1.) Every piece has a linear
    relaxation (Exp and Reciprocal convex, the rest affine), so CROWN passes through
    softmax instead of stopping at its interval, and without a product of two variable
    tensors, which the form exp(x_i) / sum_j exp(x_j) would need. Its interval is
    softmax's exact one: s_i's lower end is 1 + sum_{j != i} exp(l_j - u_i). With CROWN
    bounds on d, the differences keep the correlation of the logits (d_ij of x_i and
    x_j moving together), which softmax's interval rule cannot.

    Left as it is: an axis longer than SOFTMAX_EXPANSION_MAX (d has n times the
    elements), and before opset 13 an axis other than the last (that Softmax normalises a
    flattened block). New constants are added to `constants`.
    """
    rank = len(shape)
    axis = int(node.attr("axis", -1 if node.opset >= 13 else 1))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank or shape[axis] > SOFTMAX_EXPANSION_MAX or (node.opset < 13 and axis != rank - 1):
        return [node]
    n = shape[axis]
    name, x = node.name, node.inputs[0]

    def t(suffix: str) -> str:
        return f"{name}::{suffix}"

    def axes_op(op: str, src: str, dst: str, axes: list[int], **attrs) -> Node:
        out = t(dst)
        if node.opset >= 13:
            constants[t(f"axes_{dst}")] = torch.tensor(axes, dtype=torch.int64)
            return Node(out, op, (src, t(f"axes_{dst}")), (out,), MappingProxyType(attrs), node.opset)
        return Node(out, op, (src,), (out,), MappingProxyType({**attrs, "axes": axes}), node.opset)

    mask = 1.0 - torch.eye(n)
    constants[t("off_diagonal")] = mask.reshape(n, n, *([1] * (rank - 1 - axis)))
    constants[t("one")] = torch.tensor(1.0)
    plain = MappingProxyType({})
    if node.opset >= 11:
        constants[t("zero")] = torch.tensor(0.0)
        unit = Node(t("unit"), "Clip", (t("r"), t("zero"), t("one")), (node.outputs[0],), plain, node.opset)
    else:
        unit = Node(t("unit"), "Clip", (t("r"),), (node.outputs[0],), MappingProxyType({"min": 0.0, "max": 1.0}),
                    node.opset)
    return [axes_op("Unsqueeze", x, "xi", [axis + 1]),
            axes_op("Unsqueeze", x, "xj", [axis]),
            Node(t("d"), "Sub", (t("xj"), t("xi")), (t("d"),), plain, node.opset),
            Node(t("e"), "Exp", (t("d"),), (t("e"),), plain, node.opset),
            Node(t("others"), "Mul", (t("e"), t("off_diagonal")), (t("others"),), plain, node.opset),
            axes_op("ReduceSum", t("others"), "sum", [axis + 1], keepdims=0),
            Node(t("s"), "Add", (t("sum"), t("one")), (t("s"),), plain, node.opset),
            Node(t("y"), "Reciprocal", (t("s"),), (t("r"),), plain, node.opset),
            unit]


def expand_gemm(node: Node, constants: dict[str, torch.Tensor]) -> list[Node]:
    """Gemm of two variable matrices as Transposes, MatMul, Mul by alpha and Add of beta C,
    so that CROWN relaxes the product by MatMul's McCormick planes (Gemm's own rule has
    only the interval for it: its alpha makes the gathered slots no longer a selection).
    New constants (alpha, beta C) are added to `constants`."""
    name = node.name
    plain = MappingProxyType({})

    def t(suffix: str) -> str:
        return f"{name}::{suffix}"

    a, b = node.inputs[0], node.inputs[1]
    nodes = []
    if int(node.attr("transA", 0)):
        nodes.append(Node(t("at"), "Transpose", (a,), (t("at"),), MappingProxyType({"perm": [1, 0]}), node.opset))
        a = t("at")
    if int(node.attr("transB", 0)):
        nodes.append(Node(t("bt"), "Transpose", (b,), (t("bt"),), MappingProxyType({"perm": [1, 0]}), node.opset))
        b = t("bt")
    alpha = float(node.attr("alpha", 1.0))
    c = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else ""
    out = node.outputs[0]
    product = out if alpha == 1.0 and not c else t("ab")
    nodes.append(Node(t("ab"), "MatMul", (a, b), (product,), plain, max(node.opset, 13)))
    if alpha != 1.0:
        constants[t("alpha")] = torch.tensor(alpha)
        scaled = out if not c else t("scaled")
        nodes.append(Node(t("alpha"), "Mul", (product, t("alpha")), (scaled,), plain, node.opset))
        product = scaled
    if c:
        beta = float(node.attr("beta", 1.0))
        if beta != 1.0:
            if c not in constants:
                constants[t("beta")] = torch.tensor(beta)
                nodes.append(Node(t("beta"), "Mul", (c, t("beta")), (t("c"),), plain, node.opset))
                c = t("c")
            else:
                constants[t("c")] = constants[c] * beta
                c = t("c")
        nodes.append(Node(t("add_c"), "Add", (product, c), (out,), plain, node.opset))
    return nodes
