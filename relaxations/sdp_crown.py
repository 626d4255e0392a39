"""SDP-CROWN's bias at a ReLU whose input lies in an l2 ball (pure maths, no graph).

SDP-CROWN (Chiu, Chen, Zhang, Zhang, ICML 2025): at a ReLU h = relu(z) whose input lies
in the ball B(zc, r), a backward pass with coefficient w on h and CROWN's coefficient g
on z needs a bias b with w.relu(z) >= g.z + b on the ball. CROWN's is per neuron, from
the neuron's interval; the ball couples the neurons. For any lambda > 0, adding
(lambda / 2)(||z - zc||^2 - r^2) <= 0 and minimising each coordinate over both pieces
of the ReLU gives

    b(lambda) = sum_i min(P_i, N_i) - lambda r^2 / 2,
    P_i = (w_i - g_i) zc_i - (w_i - g_i)^2 / (2 lambda)  if w_i - g_i <= lambda zc_i, else lambda zc_i^2 / 2,
    N_i = -g_i zc_i - g_i^2 / (2 lambda)                 if g_i + lambda zc_i <= 0,  else lambda zc_i^2 / 2,

the minima over z_i >= 0 and z_i <= 0 (the dual of the SDP relaxation with every
multiplier but the ball's in closed form). Every lambda gives a sound bias, so
`sdp_bias` takes the best of a small grid around lambda* = ||min(w - g, g, 0)|| / r
(the optimum when zc = 0), row by row, and the backward pass keeps per row the better of
it and CROWN's. On margin rows over wide balls it is up to sqrt(n) tighter than CROWN.

The balls come from `relaxations/l2.py`; the backward pass (`crown._elementwise_backward`)
calls `sdp_bias` where its context holds a ball for the ReLU's input.
"""
from __future__ import annotations

import torch

__all__ = ["sdp_bias"]

T = torch.Tensor
# lambda = lambda* * 4^k for these k.
_GRID = (-3, -2, -1, 0, 1, 2, 3)


def sdp_bias(w: T, g: T, centre: T, radius: T) -> tuple[T, T]:
    """The best SDP-CROWN bias over the lambda grid and its rounding mass, each [B, S].

    w, g: [B, S, *shape] (coefficients on h = relu(z) and on z); centre [B, *shape];
    radius [B]. Sound for every lambda > 0 (module docstring); the mass is the sum of the
    magnitudes of the terms added, for the engine's rounding margin.
    """
    B, S = w.shape[:2]
    w = w.reshape(B, S, -1)
    g = g.reshape(B, S, -1)
    zc = centre.reshape(B, 1, -1).to(w.dtype)
    r = radius.reshape(B, 1).to(w.dtype)
    d = w - g
    psi = torch.minimum(torch.minimum(d, g), torch.zeros_like(g))
    tiny = torch.finfo(w.dtype).tiny
    base = (psi.norm(dim=-1) / r.clamp_min(tiny)).clamp_min(1e-6)            # [B, S]
    best = best_mass = None
    for k in _GRID:
        lam = (base * 4.0 ** k).unsqueeze(-1)                                # [B, S, 1]
        q = lam * zc * zc / 2
        pos = torch.where(d <= lam * zc, d * zc - d * d / (2 * lam), q)
        neg = torch.where(g + lam * zc <= 0, -g * zc - g * g / (2 * lam), q)
        term = torch.minimum(pos, neg)
        value = term.sum(-1) - lam.squeeze(-1) * r * r / 2
        mass = (q + (d * zc).abs() + (g * zc).abs() + (d * d + g * g) / (2 * lam)).sum(-1) \
            + lam.squeeze(-1) * r * r / 2
        if best is None:
            best, best_mass = value, mass
        else:
            better = value > best
            best, best_mass = torch.where(better, value, best), torch.where(better, mass, best_mass)
    return best, best_mass
