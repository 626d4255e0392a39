"""A torch module to `Graph` directly, by `torch.fx`, with the module's LIVE parameters.

Certified training bounds the network at every optimiser step and needs gradients of
the bounds with respect to the weights. An ONNX round trip copies the weights (and
would have to be redone after every step); here the graph's `constants` are the
module's own `nn.Parameter` and buffer objects, so one graph serves the whole
training run: bounds computed on it always use the current weights and autograd
links them back to the parameters.

Consequences that callers must keep in mind:

- The graph is the module's inference function: BatchNorm uses its running
  statistics and Dropout is the identity, whatever `module.training` says.
- Nothing derived from a weight may be computed at build time (a transpose, a BN
  fold): it would go stale after the first optimiser step. Every op therefore reads
  the parameters exactly as the module holds them (Linear is a Gemm with transB=1).
- The "tensors in `constants` are never written to" rule of `Graph` is relaxed: the
  optimiser writes them between bound computations. Bounds are values computed at
  call time, so this is safe as long as nobody caches weight-derived data across
  steps (the relaxations do not: their caches live for one call).
"""
from __future__ import annotations

import dataclasses
import math
import operator
from types import MappingProxyType
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from models.errors import UnsupportedModel
from models.evaluate import GraphEvaluator
from models.graph import Graph, Node
from models.passes import expand_layernorm
from models.ops import forward_rule

__all__ = ["graph_from_module", "structure_key"]

T = torch.Tensor
OPSET = 13


class _Builder:
    """Collects nodes, live constants and shapes while walking the fx graph."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.module = module
        self.nodes: list[Node] = []
        self.constants: dict[str, T] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.example: dict[str, T] = {}
        self.env: dict[str, Any] = {}          # fx node name -> tensor name or a static Python value
        self.input_shape = input_shape

    # -- helpers ---------------------------------------------------------------------------
    def constant(self, name: str, value: T) -> str:
        if name in self.constants and self.constants[name] is not value:
            name = f"{name}::{len(self.constants)}"
        self.constants[name] = value
        return name

    def emit(self, name: str, op: str, inputs: Sequence[str], attrs: dict | None = None,
             opset: int = OPSET) -> str:
        """Add one node, run its forward rule on the example values for the output shape.
        `opset`: the node's own, for ops newer than `OPSET` (Gelu is opset 20)."""
        return self.add(Node(name=name, op=op, inputs=tuple(inputs), outputs=(name,),
                             attrs=MappingProxyType(dict(attrs or {})), opset=opset))

    def add(self, node: Node) -> str:
        """Add a node of one output (renamed after it, as `emit` names nodes); its forward
        rule runs on the example values for the output's shape."""
        name = node.outputs[0]
        node = dataclasses.replace(node, name=name, outputs=(name,))
        args = [None if x == "" else (self.constants[x] if x in self.constants else self.example[x])
                for x in node.inputs]
        try:
            with torch.no_grad():
                out = forward_rule(node).fn(node, args)[0]
        except UnsupportedModel:
            raise
        except Exception as exc:
            raise UnsupportedModel(f"cannot evaluate ({type(exc).__name__}: {exc})", node=name, op=node.qualified_op,
                                   opset=OPSET) from None
        self.nodes.append(node)
        self.example[name] = out
        self.shapes[name] = tuple(out.shape)
        return name

    def tensor_arg(self, arg: Any, where: str) -> str:
        """The graph tensor name of an fx argument that must be a variable tensor."""
        if isinstance(arg, fx.Node) and isinstance(self.env.get(arg.name), str):
            return self.env[arg.name]
        raise UnsupportedModel(f"expected a tensor that depends on the input, got {arg!r}", node=where)

    def static(self, arg: Any) -> Any:
        """A Python value (int, tuple, ...) known at build time, with fx nodes resolved."""
        if isinstance(arg, fx.Node):
            value = self.env.get(arg.name)
            if isinstance(value, str):
                raise UnsupportedModel(f"'{arg.name}' is a tensor where a static value is needed",
                                       node=arg.name)
            return value
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.static(a) for a in arg)
        return arg


def _global(size: Any) -> bool:
    """An adaptive pooling's output size of 1 everywhere: a global pooling."""
    return all(v == 1 for v in (size if isinstance(size, (list, tuple)) else (size,)))


def _pair(v: Any, n: int) -> list[int]:
    return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)] * n


def _conv_attrs(b: _Builder, m: nn.Conv2d | nn.Conv1d, name: str) -> dict:
    nd = m.weight.dim() - 2
    if m.padding_mode != "zeros":
        raise UnsupportedModel(f"padding_mode '{m.padding_mode}' (only 'zeros')", node=name, op="Conv")
    k, s, d = _pair(m.kernel_size, nd), _pair(m.stride, nd), _pair(m.dilation, nd)
    if isinstance(m.padding, str):
        if m.padding == "valid":
            pads = [0] * (2 * nd)
        else:  # "same" (stride 1): torch puts the odd extra pixel at the end
            total = [d[i] * (k[i] - 1) for i in range(nd)]
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
    else:
        p = _pair(m.padding, nd)
        pads = p + p
    return {"kernel_shape": k, "strides": s, "dilations": d, "pads": pads, "group": int(m.groups)}


def _module_node(b: _Builder, fxn: fx.Node, m: nn.Module) -> None:
    name, target = fxn.name, str(fxn.target)
    x = b.tensor_arg(fxn.args[0], name) if fxn.args else ""
    if isinstance(m, (nn.Identity, nn.Dropout)):
        b.env[name] = x
        return
    if isinstance(m, nn.Linear):
        if len(b.shapes[x]) != 2:
            raise UnsupportedModel(f"Linear '{target}' on a {len(b.shapes[x])}-D tensor (only 2-D)",
                                   node=name, op="Gemm")
        ins = [x, b.constant(f"{target}.weight", m.weight)]
        if m.bias is not None:
            ins.append(b.constant(f"{target}.bias", m.bias))
        b.env[name] = b.emit(name, "Gemm", ins, {"transB": 1})
    elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
        ins = [x, b.constant(f"{target}.weight", m.weight)]
        if m.bias is not None:
            ins.append(b.constant(f"{target}.bias", m.bias))
        b.env[name] = b.emit(name, "Conv", ins, _conv_attrs(b, m, name))
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if m.running_mean is None or m.running_var is None:
            raise UnsupportedModel(f"BatchNorm '{target}' without running statistics", node=name,
                                   op="BatchNormalization")
        c = m.num_features
        scale = m.weight if m.weight is not None else torch.ones(c, device=m.running_mean.device)
        shift = m.bias if m.bias is not None else torch.zeros(c, device=m.running_mean.device)
        ins = [x, b.constant(f"{target}.weight", scale), b.constant(f"{target}.bias", shift),
               b.constant(f"{target}.running_mean", m.running_mean),
               b.constant(f"{target}.running_var", m.running_var)]
        b.env[name] = b.emit(name, "BatchNormalization", ins, {"epsilon": float(m.eps)})
    elif isinstance(m, nn.ReLU):
        b.env[name] = b.emit(name, "Relu", [x])
    elif isinstance(m, nn.LeakyReLU):
        b.env[name] = b.emit(name, "LeakyRelu", [x], {"alpha": float(m.negative_slope)})
    elif isinstance(m, nn.Sigmoid):
        b.env[name] = b.emit(name, "Sigmoid", [x])
    elif isinstance(m, nn.Tanh):
        b.env[name] = b.emit(name, "Tanh", [x])
    elif isinstance(m, nn.GELU):
        b.env[name] = b.emit(name, "Gelu", [x], {"approximate": m.approximate}, opset=20)
    elif isinstance(m, nn.ELU):
        b.env[name] = b.emit(name, "Elu", [x], {"alpha": float(m.alpha)})
    elif isinstance(m, nn.Softplus) and float(m.beta) == 1.0:
        # torch's Softplus is linear above `threshold` (20): off by at most log(1 + e^-20) = 2e-9.
        b.env[name] = b.emit(name, "Softplus", [x])
    elif isinstance(m, nn.Hardsigmoid):
        b.env[name] = b.emit(name, "HardSigmoid", [x], {"alpha": 1.0 / 6.0, "beta": 0.5})
    elif isinstance(m, nn.Hardswish):
        b.env[name] = b.emit(name, "HardSwish", [x], opset=14)
    elif isinstance(m, nn.LayerNorm):
        _layernorm(b, name, x, m, target)
    elif isinstance(m, nn.Flatten):
        _flatten(b, name, x, m.start_dim, m.end_dim)
    elif isinstance(m, nn.Unflatten):
        shape = list(b.shapes[x])
        dim = m.dim % len(shape)
        _reshape(b, name, x, shape[:dim] + [int(v) for v in m.unflattened_size] + shape[dim + 1:])
    elif isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
        _maxpool(b, name, x, m, target)
    elif isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)) and _global(m.output_size):
        b.env[name] = b.emit(name, "GlobalAveragePool", [x])
    elif isinstance(m, (nn.AvgPool1d, nn.AvgPool2d)):
        nd = 1 if isinstance(m, nn.AvgPool1d) else 2
        if m.ceil_mode or getattr(m, "divisor_override", None):
            raise UnsupportedModel(f"AvgPool '{target}' with ceil_mode or divisor_override", node=name,
                                   op="AveragePool")
        k = _pair(m.kernel_size, nd)
        s = _pair(m.stride if m.stride is not None else m.kernel_size, nd)
        p = _pair(m.padding, nd)
        b.env[name] = b.emit(name, "AveragePool", [x], {"kernel_shape": k, "strides": s, "pads": p + p,
                                                        "count_include_pad": int(m.count_include_pad)})
    else:
        raise UnsupportedModel(f"module '{target}' of type {type(m).__name__} is not supported",
                               node=name, op=type(m).__name__)


def _maxpool(b: _Builder, name: str, x: str, m: nn.MaxPool1d | nn.MaxPool2d, target: str) -> None:
    nd = 1 if isinstance(m, nn.MaxPool1d) else 2
    if m.ceil_mode or m.return_indices:
        raise UnsupportedModel(f"MaxPool '{target}' with ceil_mode or return_indices", node=name, op="MaxPool")
    k = _pair(m.kernel_size, nd)
    s = _pair(m.stride if m.stride is not None else m.kernel_size, nd)
    p = _pair(m.padding, nd)
    d = _pair(m.dilation, nd)
    b.env[name] = b.emit(name, "MaxPool", [x], {"kernel_shape": k, "strides": s, "pads": p + p, "dilations": d})


def _concat(b: _Builder, fxn: fx.Node) -> None:
    """torch.cat of tensors along a dimension other than the batch's."""
    name = fxn.name
    parts = fxn.args[0] if fxn.args else fxn.kwargs.get("tensors")
    dim = fxn.args[1] if len(fxn.args) > 1 else fxn.kwargs.get("dim", 0)
    if not isinstance(parts, (list, tuple)) or not parts:
        raise UnsupportedModel("torch.cat of something other than a list of tensors", node=name, op="Concat")
    ins = []
    for a in parts:
        if isinstance(a, fx.Node) and isinstance(b.env.get(a.name), torch.Tensor):
            ins.append(b.constant(a.name, b.env[a.name]))
        else:
            ins.append(b.tensor_arg(a, name))
    variable = [x for x in ins if x in b.shapes]
    if not variable:
        raise UnsupportedModel("a torch.cat that does not depend on the input", node=name, op="Concat")
    rank = len(b.shapes[variable[0]])
    axis = int(b.static(dim)) % rank
    if axis == 0:
        raise UnsupportedModel("torch.cat along the batch dimension", node=name, op="Concat")
    b.env[name] = b.emit(name, "Concat", ins, {"axis": axis})


def _layernorm(b: _Builder, name: str, x: str, m: nn.LayerNorm, target: str) -> None:
    """nn.LayerNorm as the ops ONNX's LayerNormalization expands into at import."""
    rank = len(b.shapes[x])
    shape = tuple(m.normalized_shape)
    if tuple(b.shapes[x][rank - len(shape):]) != shape:
        raise UnsupportedModel(f"LayerNorm '{target}' over {shape} of a tensor shaped {b.shapes[x]}", node=name,
                               op="LayerNormalization")
    weight = m.weight.detach() if m.weight is not None else torch.ones(shape)
    ins = [x, b.constant(f"{target}.weight", weight)]
    if getattr(m, "bias", None) is not None:
        ins.append(b.constant(f"{target}.bias", m.bias.detach()))
    node = Node(name=name, op="LayerNormalization", inputs=tuple(ins), outputs=(name,),
                attrs=MappingProxyType({"axis": rank - len(shape), "epsilon": float(m.eps)}), opset=17)
    for part in expand_layernorm(node, rank, b.constants):
        b.add(part)
    b.env[name] = name


def _flatten(b: _Builder, name: str, x: str, start: int, end: int) -> None:
    shape = b.shapes[x]
    start, end = start % len(shape), end % len(shape)
    if end == len(shape) - 1:
        b.env[name] = b.emit(name, "Flatten", [x], {"axis": start})
        return
    new = list(shape[:start]) + [math.prod(shape[start:end + 1])] + list(shape[end + 1:])
    _reshape(b, name, x, new)


def _reshape(b: _Builder, name: str, x: str, shape: Sequence[int]) -> None:
    const = b.constant(f"{name}::shape", torch.tensor([int(v) for v in shape], dtype=torch.int64))
    b.env[name] = b.emit(name, "Reshape", [x, const])


def _binary_add(b: _Builder, fxn: fx.Node) -> None:
    """Add of two variable tensors, or of one and a constant (a get_attr or a number)."""
    name = fxn.name
    args = list(fxn.args[:2])
    if "alpha" in fxn.kwargs or len(fxn.args) > 2:
        raise UnsupportedModel("torch.add with alpha", node=name, op="Add")
    ins = []
    for a in args:
        if isinstance(a, fx.Node) and isinstance(b.env.get(a.name), str):
            ins.append(b.env[a.name])
        elif isinstance(a, fx.Node) and isinstance(b.env.get(a.name), torch.Tensor):
            ins.append(b.constant(a.name, b.env[a.name]))
        elif isinstance(a, (int, float)):
            ins.append(b.constant(f"{name}::const", torch.tensor(float(a))))
        else:
            raise UnsupportedModel(f"cannot add {a!r}", node=name, op="Add")
    if not any(x in b.example for x in ins):
        raise UnsupportedModel("an Add that does not depend on the input", node=name, op="Add")
    b.env[name] = b.emit(name, "Add", ins)


_UNARY_FUNCTIONS: dict[Callable, str] = {torch.relu: "Relu", F.relu: "Relu", torch.sigmoid: "Sigmoid",
                                         torch.tanh: "Tanh", F.sigmoid: "Sigmoid", F.tanh: "Tanh"}
_UNARY_METHODS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}


def _function_node(b: _Builder, fxn: fx.Node) -> None:
    name, fn = fxn.name, fxn.target
    if fn in (operator.add, torch.add):
        _binary_add(b, fxn)
    elif fn in _UNARY_FUNCTIONS:
        b.env[name] = b.emit(name, _UNARY_FUNCTIONS[fn], [b.tensor_arg(fxn.args[0], name)])
    elif fn in (torch.cat, torch.concat):
        _concat(b, fxn)
    elif fn is torch.flatten:
        args = [b.static(a) for a in fxn.args[1:]]
        start = fxn.kwargs.get("start_dim", args[0] if args else 0)
        end = fxn.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
        _flatten(b, name, b.tensor_arg(fxn.args[0], name), start, end)
    elif fn is torch.reshape:
        _reshape(b, name, b.tensor_arg(fxn.args[0], name), b.static(fxn.args[1]))
    elif fn is getattr:
        obj, attr = fxn.args
        if attr != "shape":
            raise UnsupportedModel(f"attribute '{attr}' of a tensor", node=name)
        b.env[name] = tuple(b.shapes[b.tensor_arg(obj, name)])
    elif fn is operator.getitem and not isinstance(b.env.get(getattr(fxn.args[0], "name", "")), str):
        b.env[name] = b.static(fxn.args[0])[b.static(fxn.args[1])]
    else:
        label = getattr(fn, "__name__", repr(fn))
        raise UnsupportedModel(f"function '{label}' is not supported", node=name, op=label)


def _method_node(b: _Builder, fxn: fx.Node) -> None:
    name, method = fxn.name, fxn.target
    x = b.tensor_arg(fxn.args[0], name)
    rest = [b.static(a) for a in fxn.args[1:]]
    if method in ("view", "reshape"):
        shape = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)) else rest
        _reshape(b, name, x, shape)
    elif method == "flatten":
        start = fxn.kwargs.get("start_dim", rest[0] if rest else 0)
        end = fxn.kwargs.get("end_dim", rest[1] if len(rest) > 1 else -1)
        _flatten(b, name, x, start, end)
    elif method == "size":
        shape = tuple(b.shapes[x])
        b.env[name] = shape[rest[0]] if rest else shape
    elif method in _UNARY_METHODS:
        b.env[name] = b.emit(name, _UNARY_METHODS[method], [x])
    elif method in ("contiguous",):
        b.env[name] = x
    elif method == "add":
        _binary_add(b, fxn)
    else:
        raise UnsupportedModel(f"tensor method '{method}' is not supported", node=name, op=method)


def _get_attr(module: nn.Module, target: str) -> Any:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def graph_from_module(module: nn.Module, input_shape: Sequence[int], check: bool = True) -> Graph:
    """The `Graph` of `module`'s inference function, its constants the live parameters.

    input_shape includes the batch dimension 1, e.g. (1, 64) or (1, 1, 28, 28); bound
    tensors over it are [B, *input_shape]. `check` compares the graph's forward with the
    module's (in eval mode) on a random input and refuses a graph that disagrees.
    Raises UnsupportedModel naming the module or function it cannot translate.
    """
    input_shape = tuple(int(d) for d in input_shape)
    try:
        traced = fx.symbolic_trace(module)
    except Exception as exc:  # data-dependent control flow and the like
        raise UnsupportedModel(f"torch.fx cannot trace {type(module).__name__} "
                               f"({type(exc).__name__}: {exc})") from None
    b = _Builder(module, input_shape)
    param = next(iter(module.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    input_name, output_name = None, None
    modules = dict(module.named_modules())
    for fxn in traced.graph.nodes:
        if fxn.op == "placeholder":
            if input_name is not None:
                raise UnsupportedModel(f"module takes more than one input ('{fxn.name}')", node=fxn.name)
            input_name = fxn.name
            b.env[fxn.name] = fxn.name
            b.shapes[fxn.name] = input_shape
            b.example[fxn.name] = torch.rand(input_shape, generator=torch.Generator().manual_seed(0)) \
                .to(device=device, dtype=dtype)
        elif fxn.op == "call_module":
            _module_node(b, fxn, modules[str(fxn.target)])
        elif fxn.op == "call_function":
            _function_node(b, fxn)
        elif fxn.op == "call_method":
            _method_node(b, fxn)
        elif fxn.op == "get_attr":
            b.env[fxn.name] = _get_attr(module, str(fxn.target))
        elif fxn.op == "output":
            out = fxn.args[0]
            if isinstance(out, (tuple, list)):
                if len(out) != 1:
                    raise UnsupportedModel(f"module returns {len(out)} values; nncert needs one")
                out = out[0]
            output_name = b.tensor_arg(out, "output")
    if input_name is None or output_name is None:
        raise UnsupportedModel("module has no input or no output")
    if output_name == input_name:
        raise UnsupportedModel("the module's output is its input")
    used = {x for n in b.nodes for x in n.inputs}
    constants = {k: v for k, v in b.constants.items() if k in used}
    graph = Graph(input_name=input_name, input_shape=input_shape, output_name=output_name,
                  output_shape=b.shapes[output_name], nodes=tuple(_prune(b.nodes, output_name)),
                  constants=MappingProxyType(constants),
                  shapes=MappingProxyType({k: v for k, v in b.shapes.items()
                                           if k == input_name or any(k == n.name for n in b.nodes)}),
                  opset=OPSET, source=f"torch:{type(module).__name__}")
    if check:
        _check_forward(graph, module, b.example[input_name])
    return graph


def _prune(nodes: list[Node], output: str) -> list[Node]:
    needed, kept = {output}, []
    for n in reversed(nodes):
        if any(o in needed for o in n.outputs):
            kept.append(n)
            needed.update(x for x in n.inputs if x)
    return list(reversed(kept))


def _check_forward(graph: Graph, module: nn.Module, x: T) -> None:
    """Refuse a translation whose forward differs from the module's eval-mode forward."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            ref = module(x)
            ours = GraphEvaluator(graph, dtype=x.dtype, device=x.device)(x.unsqueeze(0))[0]
    finally:
        module.train(was_training)
    if tuple(ref.shape) != tuple(ours.shape):
        raise UnsupportedModel(f"graph output shape {tuple(ours.shape)} differs from the module's "
                               f"{tuple(ref.shape)}")
    scale = float(ref.abs().max()) + 1.0
    if float((ref - ours).abs().max()) > 1e-4 * scale:
        raise UnsupportedModel("the graph's forward differs from the module's forward")


def structure_key(module: nn.Module, input_shape: Sequence[int]) -> tuple:
    """What a cached graph of `module` depends on besides the weight VALUES.

    Module types and hyper-parameters (by repr), the identity, shape, dtype and device
    of every parameter and buffer, and the input shape: if any of these changes the
    graph must be rebuilt; in-place weight updates by an optimiser do not change it.
    """
    tensors = tuple((n, id(t), tuple(t.shape), t.dtype, str(t.device))
                    for n, t in list(module.named_parameters()) + list(module.named_buffers()))
    layout = tuple((n, type(m).__name__, m.extra_repr()) for n, m in module.named_modules())
    return (tuple(int(d) for d in input_shape), layout, tensors)
