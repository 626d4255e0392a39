"""The checker's own side-by-side network of a VNN-LIB 2.0 query over several networks.

Trusted code, like `onnx_net`: it shares nothing with `models.product` (the engine's
side-by-side ONNX model), and builds the same function from the networks the checker
read itself, so that a certificate of a query over several networks is checked against
the files and the query, never against a model the verifier made.

The query's layout (`vnnlib.lowering.layout`, the front end the checker already reads
every spec with) says where each declared element lives: inputs in the product's input
vector ``X`` (inputs the query makes equal share one entry), hidden tensors and outputs
in its output vector ``Y``, and a copy of ``X`` at the end of ``Y`` when a row mixes
inputs with outputs. Each input of a network (several in the file's order, as the query
declares them) is a selection from ``X`` (an ``affine`` layer with a 0/1 matrix), its layers follow under the prefix ``n<k>_`` (k its place among
the query's networks; the engine's product names its nodes and tensors the same way, so
a certificate's ReLU names mean the same here), and ``Y`` is the ``sum`` of each piece
placed by a 0/1 matrix. Selections and placements move values without arithmetic: the
rounding mass `bounds64` charges them is sound and all but zero.

A POLY assertion's products of variables are `mul` layers of selected factors (McCormick's
planes in `bounds64`, weight 1/2, as the engine's CROWN). What the checker's reader does
not take is `Unsupported`, named: a hidden node the checker's network does not compute. A file whose
inputs, outputs or hidden nodes do not match the query is bad input (`CheckInputError`).
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from verifier.checker.onnx_net import MAX_MATRIX_ELEMENTS, Layer, Network, Unsupported, read_network
from verifier.checker.verdict import (CheckInputError, CheckResult, check_verdict, load_certificate, model_bytes,
                                      read_file, run_onnx, spec_text)
from vnnlib import VnnlibError
from vnnlib.lowering import layout
from vnnlib.query import parse_query

__all__ = ["product_network", "network_of", "input_positions", "check_product_files", "needed_networks"]


def network_of(query, name: str) -> str:
    """The network whose file an ``equal-to`` copy `name` reads (following chains)."""
    nets = {n.name: n for n in query.networks}
    while nets[name].equal_to is not None:
        name = nets[name].equal_to
    return name


def _placement(rows: int, where: np.ndarray) -> np.ndarray:
    """[rows, len(where)] 0/1: column i goes to row where[i]."""
    if rows * len(where) > MAX_MATRIX_ELEMENTS:
        raise Unsupported(f"a side-by-side selection too large for a dense matrix: {rows} x {len(where)}")
    P = np.zeros((rows, len(where)))
    P[np.asarray(where, dtype=np.int64), np.arange(len(where))] = 1.0
    return P


def input_positions(query, tensor) -> np.ndarray:
    """Entries of the product's input that hold the declared input `tensor`, row-major."""
    return layout(query).x_of[tensor.offset:tensor.offset + tensor.size]


def _monomial(query, k: int, factors, held: Mapping[str, str], layers: list, sizes: dict) -> str:
    """A POLY assertion's product of variables (entries of z) as layers: each factor
    selected from X (an input, at its entry) or from the tensor that holds its hidden node
    or output, then `mul` layers (McCormick in `bounds64`) one factor at a time. Returns
    the tensor [1] that holds the product."""
    where = layout(query)
    names = []
    for f, i in enumerate(factors):
        if where.x_of[i] >= 0:
            source, at = "X", int(where.x_of[i])
        else:
            t = next(t for t in query.tensors if t.offset <= i < t.offset + t.size)
            source, at = held[t.name], int(i - t.offset)
        name = f"mono{k}_{f}"
        W = np.zeros((1, sizes[source]))
        W[0, at] = 1.0
        layers.append(Layer("affine", name, (source,), name, W=W, b=np.zeros(1)))
        sizes[name] = 1
        names.append(name)
    product = names[0]
    for f, name in enumerate(names[1:], 1):
        out = f"mono{k}_p{f}"
        layers.append(Layer("mul", out, (product, name), out))
        sizes[out] = 1
        product = out
    return product


def product_network(query, networks: dict[str, Network]) -> Network:
    """The side-by-side network of `query` over `networks` (by the name of each network
    that has a file; ``equal-to`` copies take their network's)."""
    where = layout(query)
    n_x, n_y = int(where.n_x), int(where.n_y)
    layers: list[Layer] = []
    sizes: dict[str, int] = {"X": n_x}
    pieces: list[tuple[str, np.ndarray]] = []
    held: dict[str, str] = {}   # declared hidden or output tensor -> the tensor holding it here
    for k, declared in enumerate(query.networks):
        net = networks[network_of(query, declared.name)]
        if len(declared.inputs) != len(net.inputs) or len(declared.outputs) != len(net.outputs):
            raise Unsupported(f"network '{declared.name}': {len(net.inputs)} inputs and {len(net.outputs)} outputs, "
                              f"declared {len(declared.inputs)} and {len(declared.outputs)}")
        prefix = f"n{k}_"
        for i, (tensor, name) in enumerate(zip(declared.inputs, net.inputs)):
            if tensor.size != net.sizes[name]:
                raise Unsupported(f"network '{declared.name}': input '{name}' of {net.sizes[name]} elements, "
                                  f"declared {tensor.size}")
            # The input, selected from X: W [n, n_x] with a 1 at each element's entry.
            W = _placement(n_x, input_positions(query, tensor)).T.copy()
            layers.append(Layer("affine", prefix + name, ("X",), f"{prefix}input{i}", W=W, b=np.zeros(tensor.size)))
        for layer in net.layers:
            layers.append(replace(layer, out=prefix + layer.out, inputs=tuple(prefix + x for x in layer.inputs),
                                  name=prefix + layer.name))
        sizes.update({prefix + t: n for t, n in net.sizes.items()})
        output_of = dict(zip((t.name for t in declared.outputs), net.outputs))
        for t in (*declared.hidden, *declared.outputs):
            source = output_of[t.name] if t.kind == "output" else net.aliases.get(t.onnx_name, t.onnx_name)
            if source not in net.sizes or source in net.inputs:
                raise Unsupported(f"hidden node '{t.onnx_name}' of network '{declared.name}' (not computed from "
                                  "its input by the layers the checker reads)")
            if net.sizes[source] != t.size:
                raise Unsupported(f"{t.name}: {net.sizes[source]} elements in the network, declared {t.size}")
            pieces.append((prefix + source, where.y_of[t.offset:t.offset + t.size]))
            held[t.name] = prefix + source
    for k, factors in enumerate(query.products):
        pieces.append((_monomial(query, k, factors, held, layers, sizes), where.y_of[query.size + k: query.size + k + 1]))
    if where.echo:
        pieces.append(("X", np.arange(n_y - n_x, n_y)))
    parts = []
    for j, (source, at) in enumerate(pieces):
        out = f"Y{j}"
        layers.append(Layer("affine", out, (source,), f"place{j}", W=_placement(n_y, at), b=np.zeros(n_y)))
        sizes[out] = n_y
        parts.append(out)
    output = parts[0]
    if len(parts) > 1:
        output = "Y"
        layers.append(Layer("sum", output, tuple(parts), "Y", coefs=(1.0,) * len(parts)))
        sizes[output] = n_y
    return Network("X", output, (1, n_x), 1, tuple(layers), sizes)


def needed_networks(query) -> list[str]:
    """The declared networks that need a file (every one but the ``equal-to`` copies)."""
    return [n.name for n in query.networks if n.equal_to is None]


def _replay(query, data: Mapping[str, bytes]):
    """float32 input vector -> (the product's output vector, the query's assignment z),
    each network run by onnxruntime on its own file, hidden tensors read from inside it."""
    where = layout(query)
    n_x, n_y = int(where.n_x), int(where.n_y)

    def replay(x32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = x32.astype(np.float64)
        y, z = np.zeros(n_y), np.zeros(query.size)
        for declared in query.networks:
            model = data[network_of(query, declared.name)]
            feeds = [x32[input_positions(query, t)] for t in declared.inputs]
            inside = tuple(t.onnx_name for t in declared.hidden)
            values = run_onnx(model, feeds, inside)
            outs = dict(zip([t.name for t in declared.outputs], values))
            outs.update(zip([t.name for t in declared.hidden], values[len(values) - len(inside):]))
            for t in declared.inputs:
                z[t.offset:t.offset + t.size] = x[input_positions(query, t)]
            for t in (*declared.hidden, *declared.outputs):
                v = outs[t.name]
                if v.size != t.size:
                    raise CheckInputError(f"{t.name}: the network gives {v.size} values, the query declares {t.size}")
                y[where.y_of[t.offset:t.offset + t.size]] = v
                z[t.offset:t.offset + t.size] = v
        for k, factors in enumerate(query.products):   # POLY: each product of variables, after the tensors
            y[where.y_of[query.size + k]] = float(np.prod(z[list(factors)]))
        if where.echo:
            y[n_y - n_x:] = x
        return y, z

    return replay


def _check_files(query, data: Mapping[str, bytes], network_paths: Mapping[str, str | Path]) -> None:
    """Each file is an ONNX model with as many inputs and outputs as its network declares,
    and every declared hidden node names a tensor some node of it produces (`verify`
    refuses the query otherwise): a `CheckInputError` naming what does not fit, for a sat
    and an unsat alike."""
    import onnx  # lazy: onnx (about 1 s) only where a model is read, not when the checker is imported

    protos: dict[str, Any] = {}
    for name in data:
        try:
            protos[name] = onnx.load_from_string(data[name])
        except Exception as exc:  # the protobuf parser raises several types
            raise CheckInputError(f"{network_paths[name]}: not a valid ONNX model ({type(exc).__name__})") from None
    for declared in query.networks:
        name = network_of(query, declared.name)
        g = protos[name].graph
        init = {t.name for t in g.initializer}
        ins = [i for i in g.input if i.name not in init]
        if (len(ins), len(g.output)) != (len(declared.inputs), len(declared.outputs)):
            raise CheckInputError(f"network {declared.name} declares {len(declared.inputs)} inputs and "
                                  f"{len(declared.outputs)} outputs; {network_paths[name]} has {len(ins)} and "
                                  f"{len(g.output)}")
        for t, info in zip((*declared.inputs, *declared.outputs), (*ins, *g.output)):
            # A symbolic dimension is 1, as everywhere in nncert (the engine's side-by-side model too).
            size = int(np.prod([d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                                for d in info.type.tensor_type.shape.dim]))
            if size != t.size:
                raise CheckInputError(f"{t.name} of network {declared.name} has {t.size} elements; "
                                      f"'{info.name}' of {network_paths[name]} has {size}")
        produced = {o for n in g.node for o in n.output}
        for t in declared.hidden:
            if t.onnx_name not in produced:
                raise CheckInputError(f"hidden node {t.name} of network {declared.name} names '{t.onnx_name}', which "
                                      f"no node of {network_paths[name]} produces")


def check_product_files(cert_path: str | Path, network_paths: Mapping[str, str | Path], spec_path: str | Path,
                        cert: Any = None) -> CheckResult:
    """Check a certificate of a VNN-LIB 2.0 query over several networks (or one with
    what a single model's input and output cannot carry): each file's hash against the
    certificate's ``networks``, the query's own, then `check_verdict` on the checker's
    side-by-side network (`product_network`)."""
    if cert is None:
        cert = load_certificate(cert_path)
    spec_data = read_file(spec_path, "spec")
    text = spec_text(spec_data, spec_path)
    try:
        query = parse_query(text, str(spec_path))
        spec = query.to_spec()
    except VnnlibError as exc:
        raise CheckInputError(str(exc)) from None
    needed = needed_networks(query)
    extra = [n for n in network_paths if n not in needed]
    missing = [n for n in needed if n not in network_paths]
    if extra or missing:
        raise CheckInputError(f"{spec_path}: the query's networks that need a file are {', '.join(needed)}; "
                              f"{'no file for ' + missing[0] if missing else 'no network ' + extra[0]} "
                              "(give each as --network NAME=PATH)")
    raw = {name: read_file(network_paths[name], f"network {name}") for name in needed}
    if isinstance(cert, dict):
        hashes = cert.get("networks")
        if not isinstance(hashes, dict) or sorted(hashes) != sorted(needed):
            return CheckResult(False, "the certificate names no sha256 for each of the query's networks "
                                      f"({', '.join(needed)})")
        for name in needed:
            if hashes[name] != hashlib.sha256(raw[name]).hexdigest():
                return CheckResult(False, f"network {name}'s file has another sha256 than the certificate's")
        if cert.get("spec_sha256") != hashlib.sha256(spec_data).hexdigest():
            return CheckResult(False, "the spec file's sha256 differs from the certificate's")
    data = {name: model_bytes(raw[name], network_paths[name]) for name in needed}
    _check_files(query, data, network_paths)

    def network() -> Network:
        return product_network(query, {name: read_network(data[name], several=True) for name in needed})

    return check_verdict(cert, spec, int(layout(query).n_x), network, _replay(query, data), query)
