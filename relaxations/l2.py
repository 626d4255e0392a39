"""l2 input balls: the ball each tensor lies in.

Over an input ball ||x - x0||_2 <= rho (`relaxations.BallBox`), every tensor z that the
input reaches through affine maps and ReLUs lies in a ball too: centre the network's
value at x0, radius rho times the spectral norms on the way (ReLU is 1-Lipschitz, the
triangle inequality adds the radii of a sum). `tensor_balls` computes them, with a
certified upper bound on each affine node's spectral norm (power iteration, then a
Cholesky factorisation of t I - M^T M in float64 proves t >= sigma_max^2; the Frobenius
or sqrt(||M||_1 ||M||_inf) norm where that fails or the node is too large).

Those balls feed SDP-CROWN's bias at each ReLU (`relaxations/sdp_crown.py`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from models import Graph, GraphEvaluator
from relaxations.bounds import BallBox
from relaxations.crown import BackwardContext
from relaxations.registry import is_affine_node, rule_for
from relaxations.reverse import affine_matrix

__all__ = ["tensor_balls", "spectral_upper", "affine_in_input"]

T = torch.Tensor
# The Gram matrix's side up to which sigma_max is certified by Cholesky (n^3 work).
MAX_GRAM = 1024


def spectral_upper(M: T) -> float:
    """A certified upper bound on the largest singular value of the float64 matrix M."""
    M = M.detach().double()
    if M.numel() == 0:
        return 0.0
    G = M.T @ M if M.shape[1] <= M.shape[0] else M @ M.T
    n = G.shape[0]
    fro = math.sqrt(float((M * M).sum())) * (1 + 1e-12)
    if n > MAX_GRAM:
        return min(fro, math.sqrt(float(M.abs().sum(0).max()) * float(M.abs().sum(1).max())) * (1 + 1e-12))
    trace = float(G.diagonal().sum())
    if trace == 0.0:
        return 0.0
    v = torch.ones(n, dtype=torch.float64, device=G.device) / math.sqrt(n)
    for _ in range(60):
        w = G @ v
        norm = float(w.norm())
        if norm == 0.0:
            break
        v = w / norm
    estimate = float(v @ (G @ v))
    eye = torch.eye(n, dtype=torch.float64, device=G.device)
    for factor in (1 + 1e-6, 1 + 1e-3, 1.02, 1.2):
        # Room for the rounding of G and of the factorisation (n eps of the trace, far below 1e-9).
        t = estimate * factor + 1e-9 * trace
        _, info = torch.linalg.cholesky_ex(t * eye - G)
        if int(info) == 0:
            return min(fro, math.sqrt(t + 1e-9 * trace))
    return fro


def affine_in_input(ctx: BackwardContext) -> set[str]:
    """The tensors that are an affine function of the graph input (selections excluded:
    they copy the input's interval). Over an l2 ball their CROWN bound is exact, the ball
    concretised by the dual norm, where IBP over the ball's bounding box would start up to
    sqrt(n) times too wide: the bounding pass tightens every element of them."""
    graph, consts = ctx.graph, ctx.ev.constants
    affine, out = {graph.input_name}, set()
    for node in graph.nodes:
        rule = ctx.rules[node.name]
        variable = [bool(x) and x not in consts for x in node.inputs]
        if len(node.outputs) == 1 and is_affine_node(node, rule, variable) and all(
                x in affine for x, v in zip(node.inputs, variable) if v):
            affine.add(node.outputs[0])
            if "selection" not in rule.facts:
                out.add(node.outputs[0])
    return out


def tensor_balls(graph: Graph, ev: GraphEvaluator, ball: BallBox, ctx: BackwardContext) -> dict[str, tuple[T, T]]:
    """Tensor name -> (centre [B, *shape], radius [B]) of a ball containing every value the
    tensor takes over `ball` (ignoring the box: sound, the ball contains its part in the
    box). Only tensors reached through affine nodes, ReLUs and selections get one; any
    other op ends its branch. Centres and radii are computed in float64 and the radii
    grow by a margin for storing both in the working dtype."""
    # Centres in float64 (the network at x0, exactly up to 1e-16 relative), stored back in
    # the working dtype: the radii's margin covers that last rounding many times over.
    ev64 = ev if ev.dtype == torch.float64 else GraphEvaluator(graph, dtype=torch.float64, device=ev.device)
    dtype = ball.ball_centre.dtype
    x0 = ball.ball_centre.detach().double()
    rho = ball.ball_radius.detach().double()
    centres: dict[str, T] = {graph.input_name: x0}
    balls: dict[str, tuple[T, T]] = {graph.input_name: (ball.ball_centre, ball.ball_radius.to(dtype))}
    radii: dict[str, T] = {graph.input_name: rho}
    cache: dict = {}
    norms: dict = {}
    for node in graph.nodes:
        variable = [bool(x) and x not in ev.constants for x in node.inputs]
        ins = [x for x, v in zip(node.inputs, variable) if v]
        if len(node.outputs) != 1 or not ins or any(x not in radii for x in ins):
            continue
        rule = rule_for(node)
        if node.op == "Relu":
            radius = radii[ins[0]]
        elif is_affine_node(node, rule, variable):
            radius = _affine_radius(ctx, node, radii, cache, norms)
            if radius is None:
                continue
        else:
            continue
        name = node.outputs[0]
        centres[name] = ev64.run_node(node, {x: centres[x] for x in ins})[0]
        radii[name] = radius
        stored = centres[name].to(dtype)
        # The float64 centre's own error and the cast to the working dtype, inside this margin.
        slack = 1e-6 * (centres[name].reshape(centres[name].shape[0], -1).norm(dim=1) + radius) + 1e-9
        balls[name] = (stored, (radius * (1 + 1e-6) + slack).to(dtype))
    return balls


def _affine_radius(ctx: BackwardContext, node, radii: dict, cache: dict, norms: dict) -> Optional[T]:
    """sum over the variable inputs of sigma_max(block) * radius (the triangle inequality)."""
    rows = affine_matrix(ctx, node, cache)
    if rows is None:
        return None
    if node.name not in norms:
        if rows.M.numel() == 0:          # a selection: each output copies one input element
            col = rows.single[0]
            count = int(torch.bincount(col).max()) if col.numel() else 0
            norms[node.name] = [(x, math.sqrt(count)) for x, _ in rows.parts]
        else:
            blocks, start = [], 0
            for x, n in rows.parts:
                blocks.append((x, spectral_upper(rows.M[:, start:start + n])))
                start += n
            norms[node.name] = blocks
    radius = None
    for x, sigma in norms[node.name]:
        term = radii[x] * sigma
        radius = term if radius is None else radius + term
    return radius
