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

__all__ = ["Node", "Graph", "qualified", "DEFAULT_DOMAINS"]

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


def _numel(shape: tuple[int, ...]) -> int:
    size = 1
    for d in shape:
        size *= d
    return size
