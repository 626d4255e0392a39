"""The explicit matrix of one affine node, read off its forward rule by evaluation.

Methods that need an op as a matrix (the LP/MILP in `verifier/lp`, the SDP's lowering to a
fully connected network in `relaxations/sdp`) take it from here rather than from a table
of op names: any op whose forward is affine in its variable inputs (Gemm, MatMul, Conv,
BatchNormalization, AveragePool, Pad, Reshape, ...) is read the same way, so a new affine
op needs no entry in either method.

`segment_map` reads a chain of affine nodes (a convolution, its padding, a pooling and
the Gemm after it) as one sparse matrix from the tensors the chain starts at: an LP then
needs columns only where a ReLU or the output needs them, and a map from 23,328 ReLU
outputs to 10 logits is read by 10 backward passes instead of a 25,088 x 23,328 probe
of the padding alone.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from models.errors import UnsupportedModel
from models.evaluate import GraphEvaluator
from models.graph import Node

__all__ = ["NotAffine", "affine_map", "segment_map", "MAX_MAP_ENTRIES", "MAX_PROBE"]

MAX_MAP_ENTRIES = 4_000_000      # 32 MB of float64 per map (mnist_fc's first layer: 0.2 M)
# segment_map's work: (inputs x outputs) pairs probed, in batches of at most _CHUNK
# values. verivital's convolution, 784 -> 23,328: 18 M, half a second.
MAX_PROBE = 64_000_000
_CHUNK = 4_000_000


class NotAffine(UnsupportedModel):
    """The node is not affine in the inputs named, or its matrix is too large to write."""


def affine_map(ev: GraphEvaluator, node: Node, var: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) with the node's output (flattened) = W @ concat(variable inputs, flattened) + b.

    Evaluated in float64 (`ev` should be a float64 evaluator) at 0 and the unit vectors:
    W's entries are out(e_j) - out(0), exact for float32 weights up to the rounding of
    adding b (an ulp of float64). A random point checks affinity, so an op that is not
    affine in these inputs (a product of two of them, a ReLU) is refused, not linearised.
    """
    shapes = ev.graph.shapes
    sizes = [int(np.prod(shapes[x])) for x in var]
    N = sum(sizes)
    n_out = int(np.prod(shapes[node.outputs[0]]))
    if N * n_out > MAX_MAP_ENTRIES:
        raise NotAffine(f"its matrix ({n_out} x {N}) is too large to write densely", node=node.name,
                        op=node.qualified_op, opset=node.opset)
    r = np.random.default_rng(0).uniform(-1, 1, N)
    pts = np.concatenate([np.zeros((1, N)), np.eye(N), r[None]])
    values, at = {}, 0
    for x, k in zip(var, sizes):
        values[x] = torch.tensor(pts[:, at:at + k], dtype=ev.dtype).reshape(len(pts), *shapes[x])
        at += k
    y = ev.run_node(node, values)[0].reshape(len(pts), -1).double().cpu().numpy()
    b = y[0]
    W = (y[1:N + 1] - b).T
    if not np.allclose(W @ r + b, y[-1], rtol=1e-9, atol=1e-9 * (1 + np.abs(y[-1]).max())):
        raise NotAffine("it is not affine in its variable inputs", node=node.name, op=node.qualified_op,
                        opset=node.opset)
    return W, b


def segment_map(ev: GraphEvaluator, nodes: Sequence[Node], sources: Sequence[str], target: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, vals, b) with target (flat) = W @ concat(sources, flat) + b, W as COO triplets.

    `nodes`, in topological order, compute `target` from `sources` (and constants);
    each must be affine in its variable inputs. Evaluated in float64 (`ev` should be a
    float64 evaluator) at 0 and then at the unit vectors of the sources in batches
    (forward), or, for a target of a few hundred entries fed by more, by one backward
    pass per entry (reverse), keeping the nonzero entries. A random point checks affinity, as
    `affine_map` does, so a product of two variable tensors is refused.
    """
    shapes = ev.graph.shapes
    sizes = [int(np.prod(shapes[x])) for x in sources]
    N, n = sum(sizes), int(np.prod(shapes[target]))
    where = nodes[-1]   # the chain's last node names it in an error
    if N * n > MAX_PROBE:
        raise NotAffine(f"the affine map to '{target}' ({n} x {N}) is too large to read", node=where.name,
                        op=where.qualified_op, opset=where.opset)

    def run(x: torch.Tensor) -> torch.Tensor:
        values, at = {}, 0
        for name, k in zip(sources, sizes):
            values[name] = x[:, at:at + k].reshape(len(x), *shapes[name])
            at += k
        for node in nodes:
            values.update(zip(node.outputs, ev.run_node(node, values)))
        return values[target].reshape(len(x), -1)

    with torch.no_grad():
        b = run(torch.zeros(1, N, dtype=torch.float64))[0]
    rows, cols, vals = [], [], []
    # Forward (unit vectors in, in batches) unless the target has a few hundred entries
    # or fewer fed by more sources: then one backward pass per entry is cheaper.
    if N <= n or n > 256:
        step = max(1, _CHUNK // max(N, n))
        with torch.no_grad():
            for s in range(0, N, step):
                k = min(step, N - s)
                x = torch.zeros(k, N, dtype=torch.float64)
                x[torch.arange(k), s + torch.arange(k)] = 1.0
                y = run(x) - b
                j, i = torch.nonzero(y, as_tuple=True)
                rows.append(i.numpy())
                cols.append((j + s).numpy())
                vals.append(y[j, i].numpy())
    else:
        x = torch.zeros(1, N, dtype=torch.float64, requires_grad=True)
        y = run(x)[0]
        for i in range(n):
            g = torch.autograd.grad(y[i], x, retain_graph=i + 1 < n)[0][0]
            j = torch.nonzero(g, as_tuple=True)[0]
            rows.append(np.full(len(j), i))
            cols.append(j.numpy())
            vals.append(g[j].detach().numpy())
    rows_, cols_, vals_ = (np.concatenate(a) if a else np.zeros(0) for a in (rows, cols, vals))
    if len(vals_) > MAX_MAP_ENTRIES:
        raise NotAffine(f"the affine map to '{target}' has {len(vals_)} nonzeros, too many to write",
                        node=where.name, op=where.qualified_op, opset=where.opset)
    b_np = b.double().numpy()
    r = torch.tensor(np.random.default_rng(0).uniform(-1, 1, N))
    with torch.no_grad():
        want = run(r[None])[0].numpy()
    got = np.bincount(rows_.astype(np.int64), weights=vals_ * r.numpy()[cols_.astype(np.int64)], minlength=n) + b_np
    if not np.allclose(got, want, rtol=1e-9, atol=1e-9 * (1 + np.abs(want).max())):
        raise NotAffine(f"the map to '{target}' is not affine in its variable inputs", node=where.name,
                        op=where.qualified_op, opset=where.opset)
    return rows_.astype(np.int64), cols_.astype(np.int64), vals_.astype(np.float64), b_np
