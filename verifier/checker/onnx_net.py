"""Read an ONNX file into a small float64 ReLU network, for the certificate checker.

Trusted code: it shares nothing with `models` (which the verifier uses), so a bug in
the verifier's reading of a model cannot hide itself by being repeated here. Every
tensor is a flat float64 vector (ONNX C order, batch dimension included: it is 1);
each node is one of five kinds:

- ``affine``: ``out = W @ in + b`` with an explicit dense ``W`` (Gemm, MatMul),
- ``scale``: ``out = s * in + b`` elementwise, ``s`` a vector (BatchNormalization,
  Add/Sub/Mul/Div by a constant): a diagonal matrix without its zeros,
- ``conv``: ``out = conv(in, K) + b``, a 2-D convolution (group 1) kept as its kernel
  and geometry (`Conv`): its dense matrix would have ``Co Ho Wo x C H W`` entries,
  almost all zero (2048 x 3072 for the first layer of a CIFAR model),
- ``sum``: ``out = sum_k coef_k * in_k`` (Add/Sub of two variable tensors: residuals),
- ``relu``: ``out = max(in, 0)``.

The three linear kinds are applied by `verifier.checker.linear64`. Flatten, Reshape,
Identity and Dropout do not move data in C order, so they are aliases. Any other op on
a variable tensor raises `Unsupported` naming the op: the checker then rejects rather
than guess. Gemm and MatMul stay dense: that keeps the code short and obviously right;
a model whose dense matrices would be too big is `Unsupported` as well.

``s`` of a Div is ``1 / c`` and that of a BatchNormalization ``gamma / sqrt(var + eps)``,
rounded in float64: each is within a few units of 2^-53 of the exact value relative to
``|s|``, far inside the rounding mass ``|s| * zmax`` that `bounds64` charges the node.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["Unsupported", "Conv", "Layer", "Network", "read_network", "MAX_MATRIX_ELEMENTS", "LINEAR_KINDS"]

MAX_MATRIX_ELEMENTS = 60_000_000  # 480 MB of float64 per dense matrix
LINEAR_KINDS = ("affine", "scale", "conv")


class Unsupported(ValueError):
    """The model uses something the checker does not read; str() is 'unsupported (<what>)'."""

    def __init__(self, what: str) -> None:
        super().__init__(f"unsupported ({what})")
        self.what = what


@dataclass(frozen=True)
class Conv:
    """A 2-D convolution, group 1, of an input [C, H, W] into [Co, Ho, Wo].

    out[o, y, x] = sum_{c, i, j} K[o, c, i, j] * in_padded[c, y*sh + i*dh, x*sw + j*dw],
    where in_padded has `pads` (top, left, bottom, right) zero rows / columns around in.
    """

    K: np.ndarray                       # [Co, C, kh, kw]
    in_shape: tuple[int, int, int]      # C, H, W
    out_shape: tuple[int, int, int]     # Co, Ho, Wo
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)


@dataclass(frozen=True)
class Layer:
    """One node of the network; `name` is the ONNX node name (the key of a ReLU's alphas).

    affine: W [n_out, n_in] and b; scale: s [n] and b; conv: conv and b (b always
    [n_out], the bias broadcast); sum: coefs; relu: nothing; mul (the elementwise product
    of its two inputs: only in a query's side-by-side network, `checker.product`): nothing.
    """

    kind: str
    out: str
    inputs: tuple[str, ...]
    name: str = ""
    W: Optional[np.ndarray] = None
    b: Optional[np.ndarray] = None
    coefs: tuple[float, ...] = ()
    s: Optional[np.ndarray] = None
    conv: Optional[Conv] = None


@dataclass(frozen=True)
class Network:
    """Layers in topological order; `sizes` maps each tensor to its number of elements."""

    input: str
    output: str
    input_shape: tuple[int, ...]
    input_dtype: int
    layers: tuple[Layer, ...]
    sizes: dict = field(default_factory=dict)
    # ONNX tensor name -> the tensor that holds its values (Flatten, Reshape, Identity and
    # Dropout outputs are not layers): a hidden node of a VNN-LIB 2.0 query may name one.
    aliases: dict = field(default_factory=dict)
    # Every graph input and output in the file's order (`read_network(several=True)`; a
    # side-by-side network of a query feeds each from its own input vector): `input` and
    # `output` are the first of each.
    inputs: tuple = ()
    outputs: tuple = ()

    @property
    def n_in(self) -> int:
        return self.sizes[self.input]

    @property
    def n_out(self) -> int:
        return self.sizes[self.output]


def _dims(value_info) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                 for d in value_info.type.tensor_type.shape.dim)


def _attrs(node) -> dict:
    # lazy: onnx (about 1 s) only where a model is read, not when the checker is imported
    from onnx import helper, numpy_helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if hasattr(v, "dims") and hasattr(v, "data_type"):
            v = numpy_helper.to_array(v)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _check_size(rows: int, cols: int, op: str) -> None:
    if rows * cols > MAX_MATRIX_ELEMENTS:
        raise Unsupported(f"{op} too large for a dense matrix: {rows} x {cols}")


def _bcast(c: np.ndarray, shape: tuple[int, ...], op: str) -> np.ndarray:
    """The constant broadcast to the variable's shape (it must not enlarge the shape)."""
    try:
        if np.broadcast_shapes(np.shape(c), shape) != tuple(shape):
            raise ValueError
        return np.broadcast_to(np.asarray(c, dtype=np.float64), shape).reshape(-1).copy()
    except ValueError:
        raise Unsupported(f"{op} with a constant of shape {np.shape(c)} on a tensor of shape {shape}") from None


def _conv(x_shape: tuple[int, ...], K: np.ndarray, bias: Optional[np.ndarray], a: dict
          ) -> tuple[Conv, np.ndarray, tuple[int, ...]]:
    """The geometry and broadcast bias of a 2-D convolution (group 1) on an input [1, C, H, W]."""
    if len(x_shape) != 4 or x_shape[0] != 1 or K.ndim != 4 or int(a.get("group", 1)) != 1:
        raise Unsupported("Conv other than 2-D, batch 1, group 1")
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise Unsupported("Conv with auto_pad")
    _, C, H, Wd = x_shape
    Co, Ci, kh, kw = K.shape
    if Ci != C or tuple(a.get("kernel_shape", (kh, kw))) != (kh, kw):
        raise Unsupported("Conv with mismatched channels or kernel_shape")
    strides = tuple(int(v) for v in a.get("strides", [1, 1]))
    dilations = tuple(int(v) for v in a.get("dilations", [1, 1]))
    pads = tuple(int(v) for v in a.get("pads", [0, 0, 0, 0]))
    if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4 or min(strides + dilations) < 1 or min(pads) < 0:
        raise Unsupported(f"Conv with strides {strides}, dilations {dilations}, pads {pads}")
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = strides, dilations, pads
    Ho = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    Wo = (Wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if Ho < 1 or Wo < 1:
        raise Unsupported("Conv with an empty output")
    b = np.zeros((Co, Ho, Wo)) if bias is None else np.broadcast_to(bias.reshape(Co, 1, 1), (Co, Ho, Wo))
    geom = Conv(K, (C, H, Wd), (Co, Ho, Wo), strides, pads, dilations)
    return geom, np.asarray(b, dtype=np.float64).reshape(-1), (1, Co, Ho, Wo)


def _topological(nodes: list) -> list[int]:
    """Indices of the nodes in a topological order (files are meant to be ordered; not all are)."""
    produced = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    order, done, state = [], set(), {}

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            k, expanded = stack.pop()
            if k in done:
                continue
            if expanded:
                done.add(k)
                order.append(k)
                continue
            if state.get(k) == "open":
                raise Unsupported("a cycle in the graph")
            state[k] = "open"
            stack.append((k, True))
            for x in nodes[k].input:
                if x in produced and produced[x] not in done:
                    stack.append((produced[x], False))

    for i in range(len(nodes)):
        visit(i)
    return order


def read_network(data: bytes, several: bool = False) -> Network:
    """The ReLU network in the ONNX bytes, or `Unsupported`. `several`: a model with several
    inputs or outputs is read too (each a tensor of `inputs` / `outputs`); otherwise it is
    `Unsupported`, since a spec's input box and output rows are about one of each."""
    # lazy: onnx (about 1 s) only where a model is read, not when the checker is imported
    import onnx
    from onnx import numpy_helper

    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # a damaged file: the parser raises several types
        raise Unsupported(f"not a readable ONNX model: {type(exc).__name__}") from None
    g = proto.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in consts]
    if not inputs or not g.output or (not several and (len(inputs) != 1 or len(g.output) != 1)):
        raise Unsupported("a model without exactly one input and one output")
    shapes: dict[str, tuple[int, ...]] = {i.name: _dims(i) for i in inputs}
    alias: dict[str, str] = {}
    layers: list[Layer] = []
    sizes: dict[str, int] = {i.name: int(np.prod(shapes[i.name])) for i in inputs}

    def real(x: str) -> str:
        return alias.get(x, x)

    def add(kind: str, out: str, ins: tuple[str, ...], name: str, shape: tuple[int, ...], **kw) -> None:
        layers.append(Layer(kind, out, tuple(real(i) for i in ins), name, **kw))
        shapes[out], sizes[out] = tuple(shape), int(np.prod(shape))

    nodes = list(g.node)
    for idx in _topological(nodes):
        # Unnamed nodes are named by their position in the file, as the verifier names them.
        node = nodes[idx]
        op, a, name = node.op_type, _attrs(node), node.name or f"{node.op_type}_{idx}"
        if node.domain not in ("", "ai.onnx"):
            raise Unsupported(f"{node.domain}.{op}")
        if op == "Constant":
            consts[node.output[0]] = np.asarray(a["value"])
            continue
        var = [x for x in node.input if x and x not in consts]
        if not var:
            raise Unsupported(f"{op} on constants")
        x, out = var[0], node.output[0]
        xs = shapes[x]
        c = [consts[i] if i in consts else None for i in node.input]
        if op in ("Identity", "Dropout", "Flatten"):
            if op == "Flatten":
                ax = int(a.get("axis", 1)) % max(len(xs), 1)
                shapes[out] = (int(np.prod(xs[:ax])), int(np.prod(xs[ax:])))
            else:
                shapes[out] = xs
            alias[out], sizes[out] = real(x), sizes[real(x)]
            continue
        if op == "Reshape":
            target = [int(v) for v in c[1].reshape(-1)]
            if not a.get("allowzero", 0):
                target = [xs[i] if v == 0 else v for i, v in enumerate(target)]
            shapes[out] = np.empty(xs).reshape(target).shape
            alias[out], sizes[out] = real(x), sizes[real(x)]
            continue
        if op == "Relu":
            add("relu", out, (x,), name, xs)
        elif op in ("Add", "Sub") and len(var) == 2:
            if shapes[real(var[0])] != shapes[real(var[1])]:
                raise Unsupported(f"{op} of two tensors of different shapes")
            add("sum", out, tuple(var), name, xs, coefs=(1.0, 1.0 if op == "Add" else -1.0))
        elif op in ("Add", "Sub", "Mul", "Div") and len(var) == 1:
            first = node.input[0] == x
            k = c[1] if first else c[0]
            vec = _bcast(np.asarray(k, dtype=np.float64), xs, op)
            ones, zeros = np.ones(vec.size), np.zeros(vec.size)
            if op in ("Add", "Sub"):
                sign = -1.0 if (op == "Sub" and not first) else 1.0
                bias = vec if op == "Add" or not first else -vec
                add("scale", out, (x,), name, xs, s=sign * ones, b=bias)
            elif op == "Mul":
                add("scale", out, (x,), name, xs, s=vec, b=zeros)
            elif first:
                add("scale", out, (x,), name, xs, s=1.0 / vec, b=zeros)
            else:
                raise Unsupported("Div of a constant by a variable")
        elif op in ("Gemm", "MatMul"):
            if node.input[0] != x or len(var) != 1 or c[1] is None:
                raise Unsupported(f"{op} other than variable times constant")
            B = np.asarray(c[1], dtype=np.float64)
            if op == "Gemm":
                if a.get("transA", 0):
                    raise Unsupported("Gemm with transA")
                B = float(a.get("alpha", 1.0)) * (B.T if a.get("transB", 0) else B)
            if B.ndim != 2 or xs[-1] != B.shape[0]:
                raise Unsupported(f"{op} with a weight of shape {B.shape} on {xs}")
            P = int(np.prod(xs[:-1]))
            oshape = tuple(xs[:-1]) + (B.shape[1],)
            _check_size(P * B.shape[1], P * B.shape[0], op)
            W = np.kron(np.eye(P), B.T)
            bias = np.zeros(P * B.shape[1])
            if op == "Gemm" and len(c) > 2 and c[2] is not None:
                bias = _bcast(float(a.get("beta", 1.0)) * np.asarray(c[2], dtype=np.float64), oshape, op)
            add("affine", out, (x,), name, oshape, W=W, b=bias)
        elif op == "Conv":
            if node.input[0] != x or len(var) != 1:
                raise Unsupported("Conv with a variable kernel")
            geom, bias, oshape = _conv(xs, np.asarray(c[1], dtype=np.float64),
                                       None if len(c) < 3 or c[2] is None else np.asarray(c[2], np.float64), a)
            add("conv", out, (x,), name, oshape, conv=geom, b=bias)
        elif op == "BatchNormalization":
            if len(var) != 1 or node.input[0] != x or len(xs) < 2:
                raise Unsupported("BatchNormalization with variable statistics")
            gamma, beta, mean, var_ = (np.asarray(v, dtype=np.float64) for v in c[1:5])
            scale = gamma / np.sqrt(var_ + float(a.get("epsilon", 1e-5)))
            cshape = (1, xs[1]) + (1,) * (len(xs) - 2)
            add("scale", out, (x,), name, xs, s=_bcast(scale.reshape(cshape), xs, op),
                b=_bcast((beta - mean * scale).reshape(cshape), xs, op))
        else:
            raise Unsupported(op)
    outputs = tuple(real(o.name) for o in g.output)
    names = {i.name for i in inputs}
    if any(o not in sizes or o in names for o in outputs):
        raise Unsupported("an output that is not computed from the input")
    dtype = inputs[0].type.tensor_type.elem_type
    return Network(inputs[0].name, outputs[0], shapes[inputs[0].name], dtype, tuple(layers), sizes, dict(alias),
                   tuple(i.name for i in inputs), outputs)
