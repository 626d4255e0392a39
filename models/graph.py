"""The immutable computation graph that every other package reads.

Nodes are frozen and the graph is ordered once at load time; bounds and other results
are kept outside it (in tables keyed by tensor name), so one graph can serve many
verification runs at once without anyone mutating shared state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import torch

__all__ = ["Node", "Graph", "qualified", "DEFAULT_DOMAINS", "output_simplices"]

# ONNX's default operator set, as files spell it.
DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Node:
    """One ONNX node after import: op type, tensor names in and out, attributes.

    `inputs` may contain "" for an omitted optional input, as in ONNX.
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    opset: int = 13          # the version of the node's own domain that the model imports
    domain: str = ""         # ONNX's default domain is "" (also spelled "ai.onnx" in files)

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    @property
    def key(self) -> tuple[str, str]:
        """(domain, op): what the forward and bounding registries look a node up by, so
        that an op of another domain (com.microsoft's Gelu) is never taken for the
        standard op of the same name."""
        return self.domain, self.op

    @property
    def qualified_op(self) -> str:
        """The op as messages name it: "Gelu", or "com.microsoft.Gelu" outside the default domain."""
        return qualified(self.domain, self.op)


def qualified(domain: str, op: str) -> str:
    """"op" in the default domain, "domain.op" elsewhere."""
    return f"{domain}.{op}" if domain else op


@dataclass(frozen=True)
class Graph:
    """A single-input, single-output graph over tensors that depend on the input.

    Every tensor that does not depend on the input has been folded into `constants`,
    so each remaining node has at least one variable input. `shapes` holds the exact
    ONNX shape of every variable tensor (symbolic batch dimensions fixed to 1).
    Tensors in `constants` are never written to after loading.
    """

    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    output_shape: tuple[int, ...]
    nodes: tuple[Node, ...]
    constants: Mapping[str, torch.Tensor]
    shapes: Mapping[str, tuple[int, ...]]
    opset: int
    source: str | None = None
    sha256: str | None = None
    # Tensors whose entries along one axis are nonnegative and sum to exactly 1 (softmax
    # outputs: the importer records each Softmax it reads), tensor name -> axis. A fact
    # about the function, which no op-by-op bound sees: `output_simplices` carries it to
    # the output, where `relaxations.bounds.simplex_lower` uses it.
    row_sums: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def input_size(self) -> int:
        return _numel(self.input_shape)

    @property
    def output_size(self) -> int:
        return _numel(self.output_shape)

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.constants or tensor == ""

    def producer(self) -> dict[str, Node]:
        """Map from tensor name to the node that produces it."""
        return {out: n for n in self.nodes for out in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        """Map from tensor name to the nodes that read it (in graph order)."""
        result: dict[str, list[Node]] = {}
        for n in self.nodes:
            for name in n.inputs:
                if name and name not in self.constants:
                    result.setdefault(name, []).append(n)
        return result

    def op_types(self) -> list[str]:
        return sorted({n.op for n in self.nodes})


# Ops that keep every element's row-major position: a fact about flat positions holds after them.
_SAME_ORDER = frozenset({"Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze"})


def output_simplices(graph: Graph) -> "torch.Tensor | None":
    """The groups of output positions whose values sum to exactly 1, each value in [0, 1]:
    [G, m] flat indices into the output, one row per softmax row, or None when the output
    is no softmax (seen through Reshape, Flatten, Identity, Squeeze and Unsqueeze, which
    keep each element's row-major position)."""
    if not graph.row_sums:
        return None
    producer = graph.producer()
    name = graph.output_name
    while name not in graph.row_sums:
        node = producer.get(name)
        if node is None or node.op not in _SAME_ORDER or node.domain or not node.inputs \
                or graph.is_constant(node.inputs[0]):
            return None
        name = node.inputs[0]
    shape = graph.shapes[name]
    axis = graph.row_sums[name]
    index = torch.arange(_numel(shape)).reshape(shape)
    return index.movedim(axis, -1).reshape(-1, shape[axis])


def _numel(shape: tuple[int, ...]) -> int:
    size = 1
    for d in shape:
        size *= d
    return size
