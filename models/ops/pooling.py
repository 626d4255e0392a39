"""Forward semantics of pooling, padding and nearest-neighbour resizing."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from models.graph import Node
from models.ops.conv import spatial_pads, torch_pad_order
from models.ops.registry import first_input, register_forward

__all__ = ["register", "resize_indices", "pad_arguments"]

T = torch.Tensor
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pool_geometry(node: Node, x: T) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = list(node.attr("kernel_shape"))
    nd = len(kernel)
    strides = list(node.attr("strides", [1] * nd))
    dil = list(node.attr("dilations", [1] * nd))
    pads = spatial_pads(node, x.shape[2:], kernel, strides, dil)
    return kernel, strides, dil, pads


def _maxpool(node: Node, xs: Sequence[T | None]) -> list[T]:
    x = xs[0]
    kernel, strides, dil, pads = _pool_geometry(node, x)
    if any(pads):
        x = F.pad(x, torch_pad_order(pads), value=-math.inf)
    y = _MAXPOOL[len(kernel)](x, kernel, strides, 0, dil, ceil_mode=bool(node.attr("ceil_mode", 0)))
    return [y]


def _avgpool(node: Node, xs: Sequence[T | None]) -> list[T]:
    x = xs[0]
    kernel, strides, dil, pads = _pool_geometry(node, x)
    if node.attr("ceil_mode", 0) or any(d != 1 for d in dil):
        raise ValueError("AveragePool with ceil_mode or dilations is not supported")
    pool = _AVGPOOL[len(kernel)]
    if not any(pads):
        return [pool(x, kernel, strides)]
    padded = F.pad(x, torch_pad_order(pads))
    summed = pool(padded, kernel, strides) * math.prod(kernel)
    if node.attr("count_include_pad", 0):
        return [summed / math.prod(kernel)]
    ones = F.pad(torch.ones_like(x[:1, :1]), torch_pad_order(pads))
    counts = pool(ones, kernel, strides) * math.prod(kernel)
    return [summed / counts]


def _global_avgpool(node: Node, xs: Sequence[T | None]) -> list[T]:
    x = xs[0]
    return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]


def _global_maxpool(node: Node, xs: Sequence[T | None]) -> list[T]:
    x = xs[0]
    return [x.amax(dim=tuple(range(2, x.dim())), keepdim=True)]


def pad_arguments(node: Node, rank: int, args: Sequence[T | None]) -> tuple[list[int], float, str]:
    """A Pad's ONNX pads over all `rank` axes of its data ([b1..bn, e1..en]), its constant
    and its mode, from the attributes (opset < 11) or the constant inputs (pads, value,
    axes): what the forward pass and the closed-form backward step
    (relaxations/ops/pool_backward.py) both read."""
    if node.opset < 11:
        pads, value = list(node.attr("pads")), float(node.attr("value", 0.0))
    else:
        pads = [int(v) for v in args[1].tolist()]
        value = float(args[2]) if len(args) > 2 and args[2] is not None and args[2].numel() else 0.0
        if len(args) > 3 and args[3] is not None:
            axes = [int(a) % rank for a in args[3].tolist()]
            full = [0] * (2 * rank)
            for i, a in enumerate(axes):
                full[a], full[rank + a] = pads[i], pads[len(axes) + i]
            pads = full
    mode = node.attr("mode", "constant")
    return pads, value, mode.decode() if isinstance(mode, bytes) else mode


def _pad(node: Node, xs: Sequence[T | None]) -> list[T]:
    x = xs[0]
    pads, value, mode = pad_arguments(node, x.dim(), xs)
    order = torch_pad_order(pads)
    if mode == "constant":
        return [F.pad(x, order, value=value)]
    # torch pads only trailing dims in these modes; the leading dims must be unpadded.
    nd = len(pads) // 2
    lead = next((i for i in range(nd) if pads[i] or pads[nd + i]), nd)
    spatial = torch_pad_order(pads[lead:nd] + pads[nd + lead:])
    torch_mode = {"reflect": "reflect", "edge": "replicate"}[mode]
    return [F.pad(x, spatial, mode=torch_mode)]


def _pad_batches(node: Node, variable: Sequence[bool], args: Sequence[T | None]) -> bool:
    """Padding treats axis 0 as the batch when it pads nothing there (and only the data varies)."""
    if not first_input(node, variable, args):
        return False
    if node.opset < 11:
        pads = list(node.attr("pads"))
    elif len(args) > 3 and args[3] is not None:
        return False   # pads for some axes only: not worth reading here
    else:
        pads = [int(v) for v in args[1].tolist()]
    return len(pads) >= 2 and pads[0] == 0 and pads[len(pads) // 2] == 0


def resize_indices(in_size: int, out_size: int, scale: float, coord_mode: str, nearest_mode: str) -> list[int]:
    """Source index of each output position for nearest resizing (ONNX formulas)."""
    result = []
    for o in range(out_size):
        if coord_mode == "asymmetric":
            src = o / scale
        elif coord_mode == "align_corners":
            src = 0.0 if out_size == 1 else o * (in_size - 1) / (out_size - 1)
        elif coord_mode == "pytorch_half_pixel":
            src = (o + 0.5) / scale - 0.5 if out_size > 1 else 0.0
        elif coord_mode == "tf_half_pixel_for_nn":
            src = (o + 0.5) / scale
        else:  # half_pixel
            src = (o + 0.5) / scale - 0.5
        if nearest_mode == "floor":
            i = math.floor(src)
        elif nearest_mode == "ceil":
            i = math.ceil(src)
        elif nearest_mode == "round_prefer_ceil":
            i = math.floor(src + 0.5)
        else:  # round_prefer_floor
            i = math.ceil(src - 0.5)
        result.append(min(max(i, 0), in_size - 1))
    return result


def _nearest(x: T, scales: Sequence[float], sizes: Sequence[int], coord_mode: str, nearest_mode: str) -> T:
    for dim in range(x.dim()):
        if sizes[dim] == x.shape[dim] and scales[dim] == 1.0:
            continue
        idx = resize_indices(x.shape[dim], sizes[dim], scales[dim], coord_mode, nearest_mode)
        x = x.index_select(dim, torch.tensor(idx, device=x.device))
    return x


def _text(value: object, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def _resize(node: Node, xs: Sequence[T | None]) -> list[T]:
    x = xs[0]
    mode = _text(node.attr("mode"), "nearest")
    if mode != "nearest":
        raise ValueError(f"Resize mode '{mode}' is not supported (only nearest)")
    if node.opset < 11:
        scales = [float(s) for s in xs[1].tolist()]
        sizes = [int(math.floor(d * s)) for d, s in zip(x.shape, scales)]
        coord, near = "asymmetric", "floor"
    else:
        scale_t = xs[2] if len(xs) > 2 and xs[2] is not None and xs[2].numel() else None
        size_t = xs[3] if len(xs) > 3 and xs[3] is not None and xs[3].numel() else None
        if size_t is not None:
            sizes = [int(v) for v in size_t.tolist()]
            scales = [s / d for s, d in zip(sizes, x.shape)]
        else:
            scales = [float(s) for s in scale_t.tolist()]
            sizes = [int(math.floor(d * s)) for d, s in zip(x.shape, scales)]
        coord = _text(node.attr("coordinate_transformation_mode"), "half_pixel")
        near = _text(node.attr("nearest_mode"), "round_prefer_floor")
    return [_nearest(x, scales, sizes, coord, near)]


def _upsample(node: Node, xs: Sequence[T | None]) -> list[T]:
    x = xs[0]
    mode = _text(node.attr("mode"), "nearest")
    if mode != "nearest":
        raise ValueError(f"Upsample mode '{mode}' is not supported (only nearest)")
    scales = list(node.attr("scales")) if node.opset < 9 else [float(s) for s in xs[1].tolist()]
    sizes = [int(math.floor(d * s)) for d, s in zip(x.shape, scales)]
    return [_nearest(x, scales, sizes, "asymmetric", "floor")]


def register() -> None:
    register_forward("MaxPool", _maxpool, batches=first_input)
    register_forward("AveragePool", _avgpool, batches=first_input)
    register_forward("GlobalAveragePool", _global_avgpool, batches=first_input)
    register_forward("GlobalMaxPool", _global_maxpool, batches=first_input)
    register_forward("Pad", _pad, batches=_pad_batches)
    register_forward("Resize", _resize)
    register_forward("Upsample", _upsample)
