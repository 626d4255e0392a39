"""Several ONNX networks, or one with several inputs, outputs and hidden nodes, as one
ONNX model with one flat input and one flat output.

A VNN-LIB 2.0 query may name several networks (``equal-to`` copies, ``isomorphic-to``
pairs, unrelated ones), several input and output tensors per network, and hidden node
values. The engine decides one function from one input vector to one output vector, so
the query's networks are put side by side in one ONNX graph: the new input ``X`` [1, N]
is every declared input, flattened row-major and concatenated in declaration order
(inputs the query makes equal share their entries); each network's input tensors are
``Gather`` + ``Reshape`` of it; its nodes and tensors are renamed ``n<k>_<name>`` (k its
place among the networks; an unnamed node is first named ``<op>_<position in its file>``,
which `verifier.checker.product` relies on); the new output ``Y``
[1, M] is every declared hidden tensor and output of every network, each ``Reshape``d
to [1, -1] and concatenated in declaration order, then the products of variables a
query's polynomial assertions use (``Mul`` nodes, bounded like any product). Gather,
Reshape and Concat move values without arithmetic, so the product computes exactly what
the networks compute, and as
an ONNX model it is replayed by onnxruntime like any other: every bounding method,
search, attack and replay applies unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from models.errors import ModelError

__all__ = ["Part", "product_model", "value_infos"]

_FLOAT, _DOUBLE = 1, 11


@dataclass(frozen=True)
class Part:
    """One network of the product: its model and which of its tensors become outputs.

    ``hidden`` are ONNX tensor names inside the network (declared hidden nodes), put
    before its graph outputs in the product's output, in the given order.
    """

    name: str
    proto: Any                      # onnx.ModelProto
    hidden: tuple[str, ...] = ()
    # Per graph input, the positions in the product's input of its elements, row-major;
    # None: the next free positions. Two inputs made equal by a query share positions.
    positions: Optional[tuple[np.ndarray, ...]] = None


def value_infos(proto: Any) -> tuple[list, list]:
    """A model's graph inputs (initializers excluded) and outputs."""
    initializers = {i.name for i in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in initializers], list(proto.graph.output)


def _shape(info: Any, where: str) -> list[int]:
    dims = []
    for d in info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(1)  # a symbolic batch dimension: one sample, as the importer reads it
    return dims


def _opset(proto: Any) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)


def _other_domains(parts: Sequence[Part]) -> dict[str, int]:
    """The versions of the domains besides ONNX's default that the parts import (one
    version per domain: the product holds their nodes side by side)."""
    seen: dict[str, int] = {}
    for p in parts:
        for o in p.proto.opset_import:
            if o.domain in ("", "ai.onnx"):
                continue
            if seen.setdefault(o.domain, o.version) != o.version:
                raise ModelError(f"the networks import different versions of domain '{o.domain}' "
                                 f"({seen[o.domain]} and {o.version}); nncert puts them into one model")
    return seen


def product_model(parts: Sequence[Part], echo_input: bool = False, n_inputs: Optional[int] = None,
                  monomials: Sequence[Sequence[tuple[str, int]]] = ()) -> Any:
    """The side-by-side model of ``parts`` (module docstring); a ``ModelError`` names what
    does not fit (different opsets, an input that is not float32/float64, a hidden name
    no node produces). ``echo_input`` appends ``X`` itself to the output, so that a
    property row over inputs and outputs together is a row over the output alone.
    ``n_inputs``: the input's size when parts give their ``positions``. ``monomials``
    (a query's products of variables) are appended to the output before the echo, each
    the product of its factors: ``("x", i)`` entry i of the input, ``("y", j)`` entry j
    of the hidden tensors and outputs concatenated."""
    # lazy: onnx takes about 1 s to import; `import models` does not load it (see models.onnx_import)
    import onnx
    from onnx import compose, helper, numpy_helper

    opsets = {p.name: _opset(p.proto) for p in parts}
    if len(set(opsets.values())) > 1:
        listed = ", ".join(f"{n} opset {v}" for n, v in opsets.items())
        raise ModelError(f"networks of one query must share an ONNX opset to be analysed together ({listed})")
    nodes, inits, offset, outputs = [], [], 0, []
    for index, part in enumerate(parts):
        prefix = f"n{index}_"
        proto = onnx.ModelProto()
        proto.CopyFrom(part.proto)
        for position, node in enumerate(proto.graph.node):
            # Unnamed nodes get the name an importer gives them (op and place in their own
            # file) before the prefix, which leaves empty names empty: a certificate's ReLU
            # names then mean the same in the checker's side-by-side network.
            node.name = node.name or f"{node.op_type}_{position}"
        compose.add_prefix(proto, prefix, inplace=True)
        produced = {o for n in proto.graph.node for o in n.output}
        inputs, outs = value_infos(proto)
        for k, info in enumerate(inputs):
            elem = info.type.tensor_type.elem_type
            if elem not in (_FLOAT, _DOUBLE):
                raise ModelError(f"network '{part.name}': input '{info.name[len(prefix):]}' is not float32/float64")
            shape = _shape(info, part.name)
            size = math.prod(shape)
            tag = f"{prefix}in{k}_"
            where = np.arange(offset, offset + size) if part.positions is None else part.positions[k]
            if len(where) != size:
                raise ModelError(f"network '{part.name}': input '{info.name[len(prefix):]}' has {size} elements, "
                                 f"the query {len(where)}")
            inits += [numpy_helper.from_array(np.asarray(where, np.int64), tag + "index"),
                      numpy_helper.from_array(np.array(shape, np.int64), tag + "shape")]
            nodes.append(helper.make_node("Gather", ["X", tag + "index"], [tag + "flat"], axis=1))
            target = info.name if elem == _FLOAT else tag + "f32"
            nodes.append(helper.make_node("Reshape", [tag + "flat", tag + "shape"], [target]))
            if elem == _DOUBLE:
                nodes.append(helper.make_node("Cast", [target], [info.name], to=_DOUBLE))
            offset += size
        nodes.extend(proto.graph.node)
        inits.extend(proto.graph.initializer)
        for name in part.hidden:
            if prefix + name not in produced:
                raise ModelError(f"network '{part.name}': no node produces the hidden tensor '{name}'")
        for k, name in enumerate([prefix + h for h in part.hidden] + [o.name for o in outs]):
            tag = f"{prefix}out{k}_"
            inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), tag + "shape"))
            nodes.append(helper.make_node("Reshape", [name, tag + "shape"], [tag + "row"]))
            nodes.append(helper.make_node("Cast", [tag + "row"], [tag + "f32"], to=_FLOAT))
            outputs.append(tag + "f32")
    if monomials:
        nodes.append(helper.make_node("Concat", outputs, ["Ybase"], axis=1))
        outputs = ["Ybase"]
        for k, factors in enumerate(monomials):
            names = []
            for f, (source, index) in enumerate(factors):
                tag = f"mono{k}_{f}"
                inits.append(numpy_helper.from_array(np.array([index], np.int64), tag + "_index"))
                nodes.append(helper.make_node("Gather", ["X" if source == "x" else "Ybase", tag + "_index"], [tag],
                                              axis=1))
                names.append(tag)
            product = names[0]
            for f, name in enumerate(names[1:], 1):
                nodes.append(helper.make_node("Mul", [product, name], [f"mono{k}_p{f}"]))
                product = f"mono{k}_p{f}"
            outputs.append(product)
    if echo_input:
        nodes.append(helper.make_node("Identity", ["X"], ["echo_X"]))
        outputs.append("echo_X")
    nodes.append(helper.make_node("Concat", outputs, ["Y"], axis=1))
    width = offset if n_inputs is None else n_inputs
    graph = helper.make_graph(nodes, "nncert_product",
                              [helper.make_tensor_value_info("X", _FLOAT, [1, width])],
                              [helper.make_tensor_value_info("Y", _FLOAT, [1, "M"])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", next(iter(opsets.values())))]
                              + [helper.make_opsetid(d, v) for d, v in _other_domains(parts).items()])
    # IR 4 at least: before it every initializer also had to be a graph input (old ACAS Xu files use IR 3).
    model.ir_version = max(4, *(p.proto.ir_version for p in parts))
    onnx.checker.check_model(model)
    return model
