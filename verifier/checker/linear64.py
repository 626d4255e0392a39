"""The linear maps of the checker's network (dense, elementwise scale, convolution) in float64.

Trusted code, numpy only. Each linear node computes ``out = M in + b``; this module
applies ``M`` (forward, for IBP and the rounding masses) and its transpose (backward,
for CROWN: ``a -> a M``) without building ``M`` when it is a diagonal or a convolution:

- ``affine``: ``M = W`` (dense, as read),
- ``scale``: ``M = diag(s)``: ``x * s`` and ``a * s``,
- ``conv``: ``M`` is the convolution of `onnx_net.Conv`; forward and transpose are loops
  over the kernel offsets (i, j), each adding one matrix product over the channels:
  forward ``out[:, y, x] += K[:, :, i, j] @ in_padded[:, y sh + i dh, x sw + j dw]``,
  transpose ``g_padded[:, y sh + i dh, x sw + j dw] += K[:, :, i, j]^T @ a[:, y, x]``,
  then the padding is cut off (its coefficients multiply zeros that are not inputs).
  Within one offset, distinct outputs (y, x) read distinct padded positions, so each
  assignment through a strided slice touches every position at most once.

``part`` replaces the weights by ``|.|``, ``max(., 0)`` or ``min(., 0)`` before applying
them: IBP needs ``M+ lo + M- hi`` and the rounding mass ``|M| zmax``. Every entry of
a result is a sum of products of one weight and one input (in some order of
summation), the same terms as the row of the dense product, so the rounding argument
of `bounds64` holds for all three kinds alike.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from verifier.checker.onnx_net import MAX_MATRIX_ELEMENTS, Conv, Layer, Unsupported

__all__ = ["apply", "apply_t", "dense_matrix", "conv_forward", "conv_transpose"]

_BLOCK = 64  # rows per block of a convolution: its intermediates then stay in cache (2-3x faster than all rows)
_PARTS = {"": lambda w: w, "abs": np.abs, "pos": lambda w: np.maximum(w, 0.0), "neg": lambda w: np.minimum(w, 0.0)}


def _offsets(g: Conv) -> Iterator[tuple[int, int, slice, slice]]:
    """(i, j, rows, columns): the padded input positions that kernel offset (i, j) reads, for every output."""
    _, kh, kw = g.K.shape[1:]
    _, Ho, Wo = g.out_shape
    (sh, sw), (dh, dw) = g.strides, g.dilations
    for i in range(kh):
        for j in range(kw):
            yield i, j, slice(i * dh, i * dh + sh * (Ho - 1) + 1, sh), slice(j * dw, j * dw + sw * (Wo - 1) + 1, sw)


def _padded(g: Conv, B: int) -> np.ndarray:
    C, H, W = g.in_shape
    pt, pl, pb, pr = g.pads
    return np.zeros((C, B, H + pt + pb, W + pl + pr))


def _blocked(f, x: np.ndarray, n_out: int) -> np.ndarray:
    """f applied to blocks of _BLOCK rows of x [B, n] -> [B, n_out] (rows are independent)."""
    out = np.empty((x.shape[0], n_out))
    for r in range(0, x.shape[0], _BLOCK):
        out[r:r + _BLOCK] = f(x[r:r + _BLOCK])
    return out


def conv_forward(g: Conv, K: np.ndarray, x: np.ndarray) -> np.ndarray:
    """[B, C H W] -> [B, Co Ho Wo]: the convolution with kernel K (g's, or |g.K| etc.), no bias.

    Computed channel-major ([C, B, H, W]) so that each offset is one matrix product
    [Co, C] @ [C, B Ho Wo].
    """
    C, H, W = g.in_shape
    Co, Ho, Wo = g.out_shape
    pt, pl = g.pads[:2]

    def block(xb: np.ndarray) -> np.ndarray:
        B = xb.shape[0]
        xp = _padded(g, B)
        xp[:, :, pt:pt + H, pl:pl + W] = xb.reshape(B, C, H, W).transpose(1, 0, 2, 3)
        out = np.zeros((Co, B * Ho * Wo))
        for i, j, rows, cols in _offsets(g):
            out += K[:, :, i, j] @ xp[:, :, rows, cols].reshape(C, -1)
        return out.reshape(Co, B, Ho * Wo).transpose(1, 0, 2).reshape(B, -1)

    return _blocked(block, x, Co * Ho * Wo)


def conv_transpose(g: Conv, a: np.ndarray) -> np.ndarray:
    """[B, Co Ho Wo] -> [B, C H W]: ``a M`` for the convolution's matrix M (each output's
    coefficient sent back, times its weight, to every input that feeds it)."""
    C, H, W = g.in_shape
    Co, Ho, Wo = g.out_shape
    pt, pl = g.pads[:2]

    def block(ab: np.ndarray) -> np.ndarray:
        B = ab.shape[0]
        at = ab.reshape(B, Co, Ho * Wo).transpose(1, 0, 2).reshape(Co, -1)
        gp = _padded(g, B)
        for i, j, rows, cols in _offsets(g):
            gp[:, :, rows, cols] += (g.K[:, :, i, j].T @ at).reshape(C, B, Ho, Wo)
        return gp[:, :, pt:pt + H, pl:pl + W].transpose(1, 0, 2, 3).reshape(B, -1)

    return _blocked(block, a, C * H * W)


def apply(layer: Layer, x: np.ndarray, part: str = "") -> np.ndarray:
    """[B, n_in] -> [B, n_out]: ``part(M) x`` per row, without the bias."""
    f = _PARTS[part]
    if layer.kind == "affine":
        return x @ f(layer.W).T
    if layer.kind == "scale":
        return x * f(layer.s)
    if layer.kind == "conv":
        return conv_forward(layer.conv, f(layer.conv.K), x)
    raise ValueError(f"{layer.kind} is not a linear node")


def apply_t(layer: Layer, a: np.ndarray) -> np.ndarray:
    """[B, n_out] -> [B, n_in]: ``a M`` per row (the backward step of a linear bound)."""
    if layer.kind == "affine":
        return a @ layer.W
    if layer.kind == "scale":
        return a * layer.s
    if layer.kind == "conv":
        return conv_transpose(layer.conv, a)
    raise ValueError(f"{layer.kind} is not a linear node")


def dense_matrix(layer: Layer, n_in: int) -> np.ndarray:
    """The explicit [n_out, n_in] matrix M, for code that composes layers (local Lipschitz
    chains); `Unsupported` when it would have more than MAX_MATRIX_ELEMENTS entries."""
    if layer.kind == "affine":
        return layer.W
    n_out = layer.b.size
    if n_out * n_in > MAX_MATRIX_ELEMENTS:
        raise Unsupported(f"{layer.kind} too large for a dense matrix: {n_out} x {n_in}")
    if layer.kind == "scale":
        return np.diag(layer.s)
    return apply(layer, np.eye(n_in)).T  # column k is M e_k
