"""ONNX file to `Graph`: read, order, fold constants, fix shapes, and check.

Loading refuses what it cannot reproduce: an op without forward semantics, an op
that fails on the model's shapes, or a graph whose torch forward disagrees with
onnxruntime. A silent mis-reading would make every later verdict worthless.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import zlib
from pathlib import Path
from types import MappingProxyType
from typing import Any

import heapq

import numpy as np
import torch

from models.errors import ModelError, UnsupportedModel
from models.graph import DEFAULT_DOMAINS, Graph, Node, qualified
from models.ops import forward_rule
from models.ort_check import check_against_onnxruntime
from models.passes import (constant_output, drop_aliases, expand_gemm, expand_layernorm, expand_softmax, fold_batchnorm,
                           prune_to_output)

__all__ = ["load_onnx", "read_onnx_bytes", "read_onnx_proto", "graph_from_proto"]

_GZIP_MAGIC = b"\x1f\x8b"


def read_onnx_bytes(path: str | Path) -> bytes:
    """The ONNX bytes of `path`, decompressed when the file is gzip (`.onnx.gz`).

    A gzip file is recognised by its magic number, as the VNN-LIB loader does for
    `.vnnlib.gz`: an ONNX protobuf never starts with 0x1f 0x8b (0x1f is not a valid
    field tag). An unreadable file or a damaged gzip stream is a `ModelError` naming
    the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file: {exc.strerror or exc}") from None
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ModelError(f"{path}: not a valid gzip file ({exc})") from None
    return data


def read_onnx_proto(path: str | Path) -> tuple[bytes, Any]:
    """The file's (decompressed) bytes and its parsed ModelProto; a ``ModelError`` naming
    the file when it is damaged or has no nodes."""
    data = read_onnx_bytes(path)
    import onnx  # local: keeps `import models` light for the parser-only paths

    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # onnx raises DecodeError and others for a damaged file
        raise ModelError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None
    if len(proto.graph.node) == 0:
        raise ModelError(f"{path}: ONNX model has no nodes")
    return data, proto


def load_onnx(path: str | Path, check: bool = True, check_samples: int = 3) -> Graph:
    """Read an ONNX file into a checked `Graph`.

    `check` runs onnxruntime and the torch forward on `check_samples` random inputs and
    refuses the model if they differ by more than 1e-4 relative to the output scale.
    A gzip-compressed file (`model.onnx.gz`) is decompressed first (`read_onnx_bytes`).
    """
    path = Path(path)
    data, proto = read_onnx_proto(path)
    graph = graph_from_proto(proto, source=str(path), sha256=hashlib.sha256(data).hexdigest())
    if check:
        check_against_onnxruntime(graph, data, samples=check_samples)
    return graph


def _attr_value(attr: Any) -> Any:
    from onnx import helper, numpy_helper  # lazy: onnx (about 1 s) keeps `import models` light (read_onnx_proto)

    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if hasattr(value, "dims") and hasattr(value, "data_type"):
        return numpy_helper.to_array(value)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _to_torch(array: np.ndarray) -> torch.Tensor:
    if array.dtype.kind == "f":
        return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
    if array.dtype.kind == "b":
        return torch.from_numpy(np.array(array, copy=True))
    return torch.from_numpy(np.array(array, dtype=np.int64, copy=True))


def _dims(value_info: Any) -> tuple[int, ...]:
    """Static shape of a graph input/output, symbolic or unknown dimensions taken as 1."""
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1)
    return tuple(dims)


def _topological(nodes: list[Node]) -> list[Node]:
    """Nodes in a topological order, file order kept where it is valid.

    Files are supposed to be ordered; not all are. Kahn's algorithm with a heap on the
    file position (stdlib only: importing networkx for this one sort would slow every start-up).
    """
    producer = {out: i for i, n in enumerate(nodes) for out in n.outputs if out}
    children: list[list[int]] = [[] for _ in nodes]
    indegree = [0] * len(nodes)
    for i, n in enumerate(nodes):
        for p in {producer[x] for x in n.inputs if x in producer and producer[x] != i}:
            children[p].append(i)
            indegree[i] += 1
    ready = [i for i, d in enumerate(indegree) if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for c in children[i]:
            indegree[c] -= 1
            if indegree[c] == 0:
                heapq.heappush(ready, c)
    if len(order) != len(nodes):
        raise UnsupportedModel("the graph has a cycle")
    return [nodes[i] for i in order]


def _expanded(nodes: list[Node], example: dict, constants: dict, row_sums: dict[str, int]):
    """The nodes in order, each LayerNormalization, each Softmax on a variable input and
    each Gemm of two variable matrices replaced by the ops it is made of
    (`models.passes.expand_layernorm`, `expand_softmax`, `expand_gemm`; its input's shape
    is known by the time it is reached). Each Softmax's output and axis go into
    `row_sums` (`Graph.row_sums`). Only ONNX's own ops are expanded: another domain's op
    of the same name goes to the registries as it is (which refuse what they lack)."""
    for node in nodes:
        if node.domain:
            yield node
            continue
        if not node.inputs:   # no input at all (a broken file): the op's own rule refuses it, naming the node
            yield node
            continue
        if node.op == "Softmax" and node.inputs[0] in example:
            shape = tuple(example[node.inputs[0]].shape)
            axis = int(node.attr("axis", -1 if node.opset >= 13 else 1))
            axis = axis + len(shape) if axis < 0 else axis
            if node.opset >= 13 or axis == len(shape) - 1:   # before 13 a row is a flattened block
                row_sums[node.outputs[0]] = axis
            yield from expand_softmax(node, shape, constants)
            continue
        if node.op == "Gemm" and len(node.inputs) > 1 and node.inputs[0] in example and node.inputs[1] in example:
            yield from expand_gemm(node, constants)
            continue
        if node.op != "LayerNormalization":
            yield node
            continue
        x = node.inputs[0]
        value = example.get(x, constants.get(x))
        if value is None or len(node.inputs) < 2 or not node.inputs[1]:
            raise UnsupportedModel("LayerNormalization needs its input and Scale", node=node.name, op=node.qualified_op,
                                   opset=node.opset)
        try:
            yield from expand_layernorm(node, value.dim(), constants)
        except ValueError as exc:
            raise UnsupportedModel(str(exc), node=node.name, op=node.qualified_op, opset=node.opset) from None


def graph_from_proto(proto: Any, source: str | None = None, sha256: str | None = None) -> Graph:
    """Build the graph, folding everything that does not depend on the input."""
    from onnx import numpy_helper  # lazy: onnx (about 1 s) keeps `import models` light (read_onnx_proto)

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    constants: dict[str, torch.Tensor] = {
        init.name: _to_torch(numpy_helper.to_array(init)) for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in constants]
    if len(inputs) != 1:
        raise UnsupportedModel(f"model has {len(inputs)} inputs; nncert needs exactly one")
    if len(proto.graph.output) != 1:
        raise UnsupportedModel(f"model has {len(proto.graph.output)} outputs; nncert needs exactly one")
    in_info, out_info = inputs[0], proto.graph.output[0]
    if in_info.type.tensor_type.elem_type not in (1, 11):
        raise UnsupportedModel(f"input '{in_info.name}' is not float32/float64")

    # Each node's opset is its own domain's version (com.microsoft's ops have their own);
    # the registries look nodes up by (domain, op) and refuse a domain they do not know.
    versions = {("" if o.domain in DEFAULT_DOMAINS else o.domain): o.version for o in proto.opset_import}
    raw: list[Node] = []
    for i, n in enumerate(proto.graph.node):
        domain = "" if n.domain in DEFAULT_DOMAINS else n.domain
        name = n.name or f"{n.op_type}_{i}"
        if domain and domain not in versions:
            raise UnsupportedModel(f"the model imports no opset of domain '{domain}'", node=name,
                                   op=qualified(domain, n.op_type))
        attrs = {a.name: _attr_value(a) for a in n.attribute}
        raw.append(Node(name=name, op=n.op_type, inputs=tuple(n.input), outputs=tuple(n.output),
                        attrs=MappingProxyType(attrs), opset=versions[domain] if domain else opset, domain=domain))

    in_shape = _dims(in_info)
    example = {in_info.name: torch.rand(in_shape, generator=torch.Generator().manual_seed(0))}
    kept: list[Node] = []
    shapes: dict[str, tuple[int, ...]] = {in_info.name: in_shape}
    row_sums: dict[str, int] = {}
    for node in _expanded(_topological(raw), example, constants, row_sums):
        rule = forward_rule(node)
        variable = [x for x in node.inputs if x and x not in constants]
        missing = [x for x in variable if x not in example]
        if missing:
            raise UnsupportedModel(f"input '{missing[0]}' is not produced by any node",
                                   node=node.name, op=node.qualified_op, opset=node.opset)
        args = [None if x == "" else constants.get(x, example.get(x)) for x in node.inputs]
        try:
            outs = rule.fn(node, args)
        except Exception as exc:
            raise UnsupportedModel(f"cannot evaluate ({type(exc).__name__}: {exc})",
                                   node=node.name, op=node.qualified_op, opset=node.opset) from None
        outputs = [o for o in node.outputs if o]
        if len(outs) < len(outputs) and not (node.op in ("Dropout", "MaxPool") and len(outs) == 1):
            raise UnsupportedModel(f"{len(outputs)} outputs requested, {len(outs)} supported",
                                   node=node.name, op=node.qualified_op, opset=node.opset)
        if not variable or rule.shape_only:
            for name, value in zip(node.outputs, outs):
                constants[name] = value
            continue
        for name, value in zip(node.outputs, outs):
            example[name] = value
            shapes[name] = tuple(value.shape)
        kept.append(dataclasses.replace(node, outputs=tuple(node.outputs[:len(outs)])))

    out_name = out_info.name
    if out_name in constants:  # decided by the constant: the passes give it a path from the input
        extra, values = constant_output(in_info.name, out_name, constants.pop(out_name), opset)
        constants.update(values)
        for node in extra:
            args = [constants.get(x, example.get(x)) for x in node.inputs]
            example[node.outputs[0]] = forward_rule(node).fn(node, args)[0]
            shapes[node.outputs[0]] = tuple(example[node.outputs[0]].shape)
        kept.extend(extra)
    if out_name not in shapes:
        raise UnsupportedModel(f"output '{out_name}' is not produced by any node")
    nodes, out_name = drop_aliases(kept, out_name, in_info.name)
    nodes = prune_to_output(nodes, out_name)
    # float64 initializers were read as float32 so that the example forward above runs in
    # one dtype; the graph keeps their stored values (constants folded from them stay as
    # computed). A float64 bound pass is then about the weights as stored (README,
    # Soundness), which float32 would round by up to 6e-8 relative, far beyond that pass's
    # margin; the evaluator casts every constant to its working dtype.
    for init in proto.graph.initializer:
        if init.data_type == 11 and init.name in constants:  # TensorProto.DOUBLE
            constants[init.name] = torch.from_numpy(np.array(numpy_helper.to_array(init), dtype=np.float64))
    nodes, constants = fold_batchnorm(nodes, constants)
    used = {x for n in nodes for x in n.inputs}
    constants = {k: v for k, v in constants.items() if k in used}
    produced = {o for n in nodes for o in n.outputs}
    return Graph(input_name=in_info.name, input_shape=in_shape, output_name=out_name,
                 output_shape=shapes[out_name], nodes=tuple(nodes),
                 constants=MappingProxyType(constants),
                 shapes=MappingProxyType({k: v for k, v in shapes.items() if k == in_info.name or k in produced}),
                 opset=opset, source=source, sha256=sha256,
                 row_sums=MappingProxyType({k: v for k, v in row_sums.items() if k in produced}))
