"""The in-search attack: signed-gradient descent on the spec objective inside boxes.

A plug-in of both searches: input split attacks inside its most promising children
(each point kept in its own box), activation split from its bounds' minimisers over
the whole region. What it finds is only a candidate: `bab.search.Confirm` replays it
in the reference runtime before the search may answer `sat`.
"""
from __future__ import annotations

from typing import Optional

import torch

from bab.problem import Problem, into_region, objective, violations

__all__ = ["domain_pgd", "minimiser_candidates", "joint_minimisers", "input_gradient", "descent_direction"]

T = torch.Tensor


def input_gradient(total: T, x: T) -> Optional[T]:
    """d total / d x, or None where the output does not depend on x through anything
    differentiable (Equal, a Cast of a boolean, Floor: piecewise constant): a gradient
    attack has nothing to follow there, and autograd would raise instead of saying so."""
    if not total.requires_grad:
        return None
    return torch.autograd.grad(total, x, allow_unused=True)[0]


def descent_direction(grad: T, coupled: bool) -> T:
    """Each point's step direction from its gradient [M, ...]. In a box, the sign: the l-inf
    steepest descent, every coordinate moving its full share. Where rows couple the inputs
    (`coupled`), the gradient scaled to a largest entry of 1 instead: along a thin band such
    as |x - x'| <= eps, a sign step is often all across the band, and the projection back
    onto it undoes the step, while the scaled gradient keeps its component along the band."""
    if not coupled:
        return grad.sign()
    peak = grad.reshape(len(grad), -1).abs().amax(1).clamp_min(1e-30)
    return grad / peak.reshape(-1, *([1] * (grad.dim() - 1)))


def domain_pgd(p: Problem, lo: T, hi: T, x0: T, steps: int = 12) -> tuple[T, T]:
    """(best objective [M], best point [M, *input_shape]) from x0, each point kept in its box
    and moved back into the region after each step (its rows and ball: a point off them is
    no counterexample, and its objective would mislead the next step)."""
    x = x0.clone()
    best_x, best = x.clone(), torch.full((len(x),), torch.inf, dtype=x.dtype, device=x.device)
    half = (hi - lo) / 2
    for step in range(steps):
        with torch.enable_grad():
            x.requires_grad_(True)
            obj = objective(p, p.ev(x))
            grad = input_gradient(obj.sum(), x)
        with torch.no_grad():
            better = obj < best
            best = torch.where(better, obj.detach(), best)
            best_x[better] = x[better].detach()
            if grad is None:
                break     # nothing to follow: the points seen are all there is
            size = 0.5 * (1e-3 ** (step / max(steps - 1, 1)))  # geometric decay down to fine steps
            step_ = size * half * descent_direction(grad, p.region_a is not None)
            x = into_region(p, torch.minimum(torch.maximum(x - step_, lo), hi), lo, hi)
    return best, best_x


def minimiser_candidates(p: Problem, mins: T, focus: int, steps: int) -> tuple[T, T]:
    """Counterexample candidates of a bounded batch of activation-split domains: the bound's
    minimisers (one per domain and row), then PGD over the whole region from the `focus`
    most promising of them. Returns (points [M, *input_shape], objective [M])."""
    pts = into_region(p, mins.reshape(-1, *p.lower.shape[1:]))
    obj = violations(p, pts)
    best = torch.argsort(obj)[:focus]
    lo = p.lower.expand(len(best), *p.lower.shape[1:])
    hi = p.upper.expand(len(best), *p.upper.shape[1:])
    pgd_obj, pgd_x = domain_pgd(p, lo, hi, pts[best], steps)
    return torch.cat([pts, pgd_x]), torch.cat([obj, pgd_obj])



def joint_minimisers(p: Problem, lo: T, hi: T, A: T, bias: T, steps: int) -> T:
    """A point per box [N, n_in] where the linear lower bounds of a conjunction's rows are
    all small at once: sign steps down the worst row of the conjunction that is closest
    to holding (A [N, S, n_in] and bias [N, S] bound C y over each box; the best point
    seen is kept).

    A counterexample must meet every row of one conjunction. Each row's own minimiser is
    the box corner that favours that row alone, and where the bad set is a thin slab
    between rows (an output kept inside a narrow band, a bound on another output as well)
    no corner and no centre need lie in it, however small the boxes get (BENCHMARKS.md,
    session 40: a published counterexample missed in 500,000 boxes). Once a box is small
    its linear bounds are nearly the outputs themselves, so a point where the bounds'
    worst row (piecewise linear and convex in x) is smallest is nearly a point of the
    bad set. Only a candidate: the search replays it before answering sat.
    """
    N = A.shape[0]
    lo, hi = lo.reshape(N, -1), hi.reshape(N, -1)
    c = bias - p.d
    owner = p.owner.expand(N, -1)
    rows = torch.arange(N, device=A.device)
    x = (lo + hi) / 2
    best_x, best = x, torch.full((N,), torch.inf, dtype=A.dtype, device=A.device)
    for step in range(steps):
        v = torch.bmm(A, x.unsqueeze(-1)).squeeze(-1) + c                    # [N, S]
        worst = torch.full((N, p.n_conj), -torch.inf, dtype=v.dtype, device=v.device)
        worst = worst.scatter_reduce(1, owner, v, reduce="amax")
        value, conj = worst.min(1)
        better = value < best
        best = torch.where(better, value, best)
        best_x = torch.where(better.unsqueeze(1), x, best_x)
        if step == steps - 1:
            break
        # The subgradient of that conjunction's max: its worst row's coefficients.
        r = torch.where(owner == conj.unsqueeze(1), v, torch.full_like(v, -torch.inf)).argmax(1)
        size = 0.25 / (1 + step)     # steps shrinking like 1/t: a subgradient method's
        x = torch.minimum(torch.maximum(x - size * (hi - lo) * A[rows, r].sign(), lo), hi)
    return best_x
