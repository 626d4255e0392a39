"""Forward semantics of convolutions and batch normalisation (1-D, 2-D and 3-D)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from models.graph import Node
from models.ops.registry import first_input, register_forward

__all__ = ["register", "spatial_pads", "conv_forward"]

T = torch.Tensor


def spatial_pads(node: Node, in_spatial: Sequence[int], kernel: Sequence[int],
                 strides: Sequence[int], dilations: Sequence[int]) -> list[int]:
    """ONNX pads [b1, b2, ..., e1, e2, ...] resolved from `pads` or `auto_pad`."""
    nd = len(kernel)
    auto = node.attr("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("NOTSET", ""):
        pads = list(node.attr("pads", [0] * (2 * nd)))
        return pads
    if auto == "VALID":
        return [0] * (2 * nd)
    begins, ends = [], []
    for i in range(nd):
        out = -(-in_spatial[i] // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_spatial[i])
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return begins + ends


def torch_pad_order(pads: Sequence[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] to torch F.pad order (last dim first, begin then end)."""
    nd = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(nd)):
        out += [int(pads[i]), int(pads[nd + i])]
    return out


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def conv_forward(node: Node, x: T, w: T, b: T | None) -> T:
    nd = w.dim() - 2
    kernel = list(w.shape[2:])
    strides = list(node.attr("strides", [1] * nd))
    dil = list(node.attr("dilations", [1] * nd))
    pads = spatial_pads(node, x.shape[2:], kernel, strides, dil)
    if any(int(p) < 0 for p in pads):      # ONNX forbids them; say so rather than torch's wording
        raise ValueError(f"pads must be nonnegative, got {list(pads)}")
    groups = int(node.attr("group", 1))
    if pads[:nd] == pads[nd:]:
        # The same pad at both ends: the convolution's own zero padding, where a padded
        # copy of x cost a third of a CNN's interval step under autograd (BENCHMARKS.md,
        # session 39). Uneven pads take an explicit F.pad.
        return _CONV[nd](x, w, b, stride=strides, padding=[int(p) for p in pads[:nd]], dilation=dil, groups=groups)
    x = F.pad(x, torch_pad_order(pads))
    return _CONV[nd](x, w, b, stride=strides, dilation=dil, groups=groups)


def _conv(node: Node, xs: Sequence[T | None]) -> list[T]:
    b = xs[2] if len(xs) > 2 else None
    return [conv_forward(node, xs[0], xs[1], b)]


def _conv_transpose(node: Node, xs: Sequence[T | None]) -> list[T]:
    x, w = xs[0], xs[1]
    b = xs[2] if len(xs) > 2 else None
    nd = w.dim() - 2
    strides = list(node.attr("strides", [1] * nd))
    dil = list(node.attr("dilations", [1] * nd))
    out_pad = list(node.attr("output_padding", [0] * nd))
    pads = list(node.attr("pads", [0] * (2 * nd)))
    auto = node.attr("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if node.attr("output_shape") is not None or auto not in ("NOTSET", "", "VALID"):
        raise ValueError("ConvTranspose with output_shape or SAME auto_pad is not supported")
    y = _CONVT[nd](x, w, None, stride=strides, padding=0, output_padding=0,
                   groups=int(node.attr("group", 1)), dilation=dil)
    # ONNX: crop pads (begin/end) then add output_padding at the end.
    for i in range(nd):
        dim = 2 + i
        start, stop = pads[i], y.shape[dim] - pads[nd + i] + out_pad[i]
        if stop > y.shape[dim]:
            extra = [0, 0] * (y.dim() - dim - 1) + [0, stop - y.shape[dim]]
            y = F.pad(y, extra)
        y = y.narrow(dim, start, stop - start)
    if b is not None:
        y = y + b.reshape([-1] + [1] * nd)
    return [y]


def _batchnorm(node: Node, xs: Sequence[T | None]) -> list[T]:
    x, scale, bias, mean, var = xs[:5]
    eps = float(node.attr("epsilon", 1e-5))
    shape = [1, -1] + [1] * (x.dim() - 2)
    factor = scale / torch.sqrt(var + eps)
    return [x * factor.reshape(shape) + (bias - mean * factor).reshape(shape)]


def register() -> None:
    register_forward("Conv", _conv, batches=first_input)
    register_forward("ConvTranspose", _conv_transpose, batches=first_input)
    register_forward("BatchNormalization", _batchnorm, batches=first_input)
