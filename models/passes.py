"""Rewrite passes over the node list, each returning new nodes (nothing is mutated).

They make the graph smaller and faster to bound; none of them changes what it
computes, which the onnxruntime check at load time confirms.
"""
from __future__ import annotations

from types import MappingProxyType

import torch

from models.graph import Node

__all__ = ["drop_aliases", "prune_to_output", "fold_batchnorm"]

_ALIAS_OPS = {"Identity", "Dropout"}


def drop_aliases(nodes: list[Node], output: str, graph_input: str) -> tuple[list[Node], str]:
    """Remove Identity and inference-mode Dropout by renaming their readers' inputs."""
    alias: dict[str, str] = {}
    kept = []
    for n in nodes:
        if n.op in _ALIAS_OPS and n.outputs and n.inputs[0] != "":
            alias[n.outputs[0]] = alias.get(n.inputs[0], n.inputs[0])
            continue
        kept.append(n)
    renamed = [Node(n.name, n.op, tuple(alias.get(x, x) for x in n.inputs), n.outputs, n.attrs, n.opset)
               for n in kept]
    return renamed, alias.get(output, output)


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
        constants[w_name] = (w * factor.reshape([-1] + [1] * (w.dim() - 1))).float()
        constants[b_name] = (b * factor + shift - mean * factor).float()
        replaced[conv.name] = Node(conv.name, "Conv", (conv.inputs[0], w_name, b_name), bn.outputs,
                                   MappingProxyType(dict(conv.attrs)), conv.opset)
        dropped.add(bn.name)
    out = [replaced.get(n.name, n) for n in nodes if n.name not in dropped]
    return out, constants
