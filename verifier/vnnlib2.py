"""VNN-LIB 2.0 on the verifier's side: binding a query to its ONNX files, the standard's
assignment output and the answers to ``nncert supports``.

Binding follows the standard: inputs and outputs bind to the model by declaration order
(not by name), every model input and output must be declared, and a declared element
type must equal the model's unless it is ``real``. nncert's analysis is claimed sound
for ``float32`` (bounds widen for float32 rounding at every op, and every ``sat`` is
replayed in onnxruntime on the float32 model) and for ``real`` (the same margins
over-approximate exact arithmetic); a ``float64`` or narrower model is analysed through
float32 weights, which is not the declared network, so such a declaration is refused
with a note that ``real`` accepts it. ``int64`` outputs and hidden nodes (a Cast to an
integer, a Shape) are bounded over the reals, which is their value while no integer op
wraps around; integer inputs are refused (the search's points are not integers).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

import relaxations  # noqa: F401  (registers the bounding rules)
from models.graph import qualified
from models.onnx_import import read_onnx_proto
from models.ops.registry import FORWARD
from models.product import Part, product_model, value_infos
from relaxations.registry import REGISTRY
from verifier.model import Model, model_from_proto
from verifier.verify import SpecMismatch
from vnnlib.query import Query, Tensor, layout
from vnnlib.spec import Spec
from vnnlib.standard import network_pairs

__all__ = ["Bound", "network_files", "bind", "assignment", "format_assignment", "serialise_assignment", "supports",
           "SOUND_ELEMENT_TYPES", "INTEGER_RESULT_TYPES"]

SOUND_ELEMENT_TYPES = ("float32", "real")  # see the module docstring
# Integer outputs and hidden nodes (a Cast to int64, a Shape): the engine bounds them
# over the reals, which is their value while no integer op wraps around.
INTEGER_RESULT_TYPES = ("int64",)
# ONNX TensorProto element types by the name a VNN-LIB 2.0 query gives them.
_ONNX_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
               8: "string", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
               14: "complex64", 15: "complex128", 16: "bfloat16"}


@dataclass(frozen=True)
class Bound:
    """A single-network query bound to its model: the engine decides ``spec`` on ``model``."""

    query: Query
    model: Model
    spec: Spec
    # Input elements the query leaves unbounded: ``spec`` gives them stand-in ends
    # (``Query.to_spec``), so its sat is the query's but its unsat is no answer.
    unbounded: tuple[str, ...] = ()
    # The network's file when ``model`` is that file as it is (one network, one input and
    # one output, no hidden node, product or merged input): a certificate can then name
    # it, and the checker reads the query and the file as for a 1.0 spec. None for a
    # side-by-side model built in memory.
    model_file: Optional[str] = None


def network_files(query: Query, pairs: Optional[Sequence[str]], model: Optional[str]) -> dict[str, str]:
    """The ONNX file of each declared network that is not an ``equal-to`` copy.

    ``pairs`` are ``--network NAME=PATH`` values; ``model`` is the VNN-COMP form's
    positional model, accepted when exactly one network needs a file.
    """
    needed = [n.name for n in query.networks if n.equal_to is None]
    where = query.path or "<query>"   # every message names the query file
    if pairs:
        try:
            files = network_pairs(list(pairs))
        except ValueError as exc:
            raise SpecMismatch(f"{where}: {exc}") from None
        extra = [n for n in files if n not in needed]
        if extra:
            copies = [n.name for n in query.networks if n.equal_to is not None]
            why = " (an equal-to copy takes its network's file)" if extra[0] in copies else ""
            raise SpecMismatch(f"{where}: --network {extra[0]}: the query declares no network {extra[0]} that needs "
                               f"a file{why}; it needs {', '.join(needed)}")
        missing = [n for n in needed if n not in files]
        if missing:
            raise SpecMismatch(f"{where}: network '{missing[0]}' has no file: give --network {missing[0]}=PATH")
        return files
    if model is not None and len(needed) == 1:
        return {needed[0]: model}
    raise SpecMismatch(f"{where}: the query declares networks {', '.join(needed)}: give each --network NAME=PATH")


def _check_sound(declared: Tensor) -> None:
    if declared.element_type in SOUND_ELEMENT_TYPES or (
            declared.kind != "input" and declared.element_type in INTEGER_RESULT_TYPES):
        return
    also = f", and {'/'.join(INTEGER_RESULT_TYPES)} for outputs and hidden nodes"
    raise SpecMismatch(f"{declared.name} is declared {declared.element_type}: nncert's analysis is sound for "
                       f"{' and '.join(SOUND_ELEMENT_TYPES)}{also} (declare it real to accept an analysis "
                       "over the reals)")


def _check_tensor(declared: Tensor, info: object, what: str, path: str) -> None:
    tensor_type = info.type.tensor_type
    onnx_type = _ONNX_TYPES.get(tensor_type.elem_type, f"element type {tensor_type.elem_type}")
    if declared.element_type != "real" and declared.element_type != onnx_type:
        raise SpecMismatch(f"{declared.name} is declared {declared.element_type}, but {what} '{info.name}' "
                           f"is {onnx_type} ({path})")
    _check_sound(declared)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    shape_ok = len(dims) == len(declared.shape) and all(
        d is None or d == s for d, s in zip(dims, declared.shape))
    if tensor_type.HasField("shape") and not shape_ok:
        shown = "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"
        raise SpecMismatch(f"{declared.name} is declared with shape [{','.join(map(str, declared.shape))}], "
                           f"but {what} '{info.name}' has shape {shown} ({path})")


def _file_of(query: Query, name: str, files: dict[str, str]) -> str:
    """An ``equal-to`` copy's file is its network's (following chains of copies)."""
    nets = {n.name: n for n in query.networks}
    while nets[name].equal_to is not None:
        name = nets[name].equal_to
    return files[name]


def bind(query: Query, files: dict[str, str]) -> Bound:
    """Load the query's networks and check the declarations against them.

    One network with one input, one output and no hidden node is the model itself;
    anything else is ``models.product``'s side-by-side model of every network, whose
    input and output vectors are laid out as ``vnnlib.query.layout`` says.
    """
    spec, unbounded = query.to_spec_with_stand_ins()  # refuses what the engine cannot take, before any model
    where = layout(query)
    read: dict[str, tuple[bytes, object]] = {}   # each file parsed once (equal-to copies share one)
    parts = []
    for net in query.networks:
        path = _file_of(query, net.name, files)
        if path not in read:
            read[path] = read_onnx_proto(path)
        proto = read[path][1]
        inputs, outputs = value_infos(proto)
        for declared, infos, what in ((net.inputs, inputs, "input"), (net.outputs, outputs, "output")):
            if len(declared) != len(infos):
                raise SpecMismatch(f"network '{net.name}' declares {len(declared)} {what}s; model "
                                   f"'{path}' has {len(infos)}")
            for tensor, info in zip(declared, infos):
                _check_tensor(tensor, info, f"model {what}", path)
        for tensor in net.hidden:
            _check_sound(tensor)
            if tensor.onnx_name is None:
                raise SpecMismatch(f"hidden node {tensor.name} names no ONNX tensor")
        positions = tuple(where.x_of[t.offset:t.offset + t.size] for t in net.inputs)
        parts.append(Part(net.name, proto, tuple(t.onnx_name for t in net.hidden), positions))
    merged = where.n_x < sum(t.size for t in query.tensors if t.kind == "input")
    simple = len(parts) == 1 and not parts[0].hidden and len(query.networks[0].inputs) == 1 \
        and len(query.networks[0].outputs) == 1 and not where.echo and not merged and not query.products
    if simple:
        path = files[query.networks[0].name]
        model = model_from_proto(read[path][1], path, data=read[path][0])
    else:
        monomials = [[("x", int(where.x_of[i])) if where.x_of[i] >= 0 else ("y", int(where.y_of[i])) for i in mono]
                     for mono in query.products]
        product = product_model(parts, echo_input=where.echo, n_inputs=where.n_x, monomials=monomials)
        model = model_from_proto(product, " + ".join(f"{n.name}={_file_of(query, n.name, files)}"
                                                                  for n in query.networks))
    if spec.n_inputs != model.n_inputs or spec.n_outputs != model.n_outputs:
        raise SpecMismatch(f"the query declares {spec.n_inputs} input and {spec.n_outputs} hidden and output "
                           f"elements; the model{'s have' if not simple else ' has'} {model.n_inputs} and "
                           f"{model.n_outputs}")
    return Bound(query, model, spec, tuple(unbounded), path if simple else None)


def assignment(query: Query, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The vector ``z`` of every declared tensor from the engine's input and output vectors."""
    where = layout(query)
    z = np.zeros(query.size)
    x_of = where.x_of[:query.size]                # the extended entries (products) are not in z
    inputs = x_of >= 0
    z[inputs] = np.asarray(x, dtype=np.float64).reshape(-1)[x_of[inputs]]
    rest = where.y_of[:query.size] >= 0          # hidden tensors and outputs: the head of y
    z[rest] = np.asarray(y, dtype=np.float64).reshape(-1)[:int(rest.sum())]
    return z


_NUMPY_TYPES = {"float32": np.float32, "real": np.float64, "float64": np.float64, "int64": np.int64}


def serialise_assignment(query: Query, z: np.ndarray, folder: str) -> None:
    """The standard's serialised assignment: DIR/NAME.pb, one ONNX TensorProto of the
    declared shape per declared tensor (``real`` as float64)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for tensor in query.tensors:
        values = z[tensor.offset:tensor.offset + tensor.size].reshape(tensor.shape)
        array = values.astype(_NUMPY_TYPES.get(tensor.element_type, np.float64))
        (out / f"{tensor.name}.pb").write_bytes(numpy_helper.from_array(array, tensor.name).SerializeToString())


def _value(v: float, element_type: str) -> str:
    if element_type.startswith(("int", "uint")) or element_type == "bool":
        return str(int(v))
    typed = np.float32(v) if element_type == "float32" else np.float64(v)
    return np.format_float_positional(typed, unique=True, trim="0")


def format_assignment(query: Query, z: np.ndarray) -> list[str]:
    """The standard's command-line assignment: for every declared tensor in declaration
    order a ``NAME TYPE [d1,d2]`` line, then one value a line, row-major."""
    lines = []
    for tensor in query.tensors:
        lines.append(f"{tensor.name} {tensor.element_type} [{','.join(map(str, tensor.shape))}]")
        lines.extend(_value(v, tensor.element_type) for v in z[tensor.offset:tensor.offset + tensor.size])
    return lines


def _operators() -> list[str]:
    """Ops a model may hold: those with a bounding rule, and those the importer folds
    (``ForwardRule.shape_only`` and ``reads_shapes``); an op outside ONNX's default
    domain is named with its domain (``com.microsoft.Gelu``)."""
    folded = {key for key, rules in FORWARD.items() if any(r.shape_only or r.reads_shapes for r in rules)}
    return sorted(qualified(*key) for key in (set(REGISTRY) & set(FORWARD)) | folded)


def _opsets() -> list[str]:
    rules = [r for (domain, _), rs in FORWARD.items() if not domain for r in rs]   # ai.onnx's versions
    low = min(r.min_opset for r in rules)
    high = min(max(r.max_opset for r in rules), onnx.defs.onnx_opset_version())
    return [str(low), str(high)]


def supports(flag: str) -> list[str]:
    """The lines ``nncert supports FLAG`` prints (the standard's capability answers)."""
    if flag == "--onnx-opset-versions":
        return _opsets()
    if flag == "--onnx-element-types":
        return [*SOUND_ELEMENT_TYPES, *(f"{t} * outputs and hidden nodes only, bounded over the reals (no "
                                        "wraparound)" for t in INTEGER_RESULT_TYPES)]
    if flag == "--onnx-operators":
        return _operators()
    if flag == "--vnnlib-versions":
        return ["1.0", "2.0"]
    answers = {
        # several networks, inputs, outputs and hidden nodes: one side-by-side model (bind)
        "--hidden-node-theories": ["NH", "H"],
        "--multiple-input-output-theories": ["SIO", "MIO"],
        "--multiple-network-theories": ["SNET", "MNET", "MENET", "MINET"],
        "--multiple-node-comparison-theories": [
            "SNC", "MNC"],
        "--arithmetic-complexity-theories": ["BND", "OUTC", "LIN", "POLY"],
        "--optimised-disjunctive-reasoning": ["false"],  # each DNF term is decided in turn
        "--serialise-assignments": ["true"],
    }
    if flag not in answers:
        raise KeyError(flag)
    return answers[flag]
