"""l2 balls: certified spectral norms, the balls each tensor lies in, SDP-CROWN's bias."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models import GraphEvaluator
from models.from_torch import graph_from_module
from relaxations import BallBox, BoundOptions, IntervalBounds, compute_bounds
from relaxations.crown import BackwardContext, rules_for
from relaxations.l2 import spectral_upper, tensor_balls
from relaxations.sdp_crown import sdp_bias

torch.set_num_threads(1)


def _ball_points(centre: torch.Tensor, radius: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """n points of the l2 ball (a third on its sphere), [n, *centre.shape]."""
    d = torch.randn(n, *centre.shape, generator=gen, dtype=centre.dtype)
    norms = d.reshape(n, -1).norm(dim=1).reshape(n, *([1] * centre.dim()))
    scale = torch.rand(n, generator=gen, dtype=centre.dtype) ** (1 / centre.numel())
    scale[: n // 3] = 1.0
    return centre + d / norms * radius * scale.reshape(n, *([1] * centre.dim()))


@pytest.mark.parametrize("shape", [(5, 5), (40, 7), (7, 40), (30, 30)])
def test_spectral_upper_is_certified_and_tight(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    M = torch.randn(*shape, generator=g, dtype=torch.float64)
    true = float(torch.linalg.svdvals(M)[0])
    bound = spectral_upper(M)
    assert true <= bound <= true * 1.001
    low_rank = M[:, :1] @ M[:1, :]                    # rank one
    assert float(torch.linalg.svdvals(low_rank)[0]) <= spectral_upper(low_rank) <= 1.001 * float(
        torch.linalg.svdvals(low_rank)[0])
    assert spectral_upper(torch.zeros(3, 4, dtype=torch.float64)) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_sdp_bias_holds_on_the_ball(seed: int) -> None:
    """w.relu(z) >= g.z + b for points of the ball, whatever g (random, CROWN-like or not)."""
    gen = torch.Generator().manual_seed(seed)
    n, S = 12, 5
    w = torch.randn(1, S, n, generator=gen, dtype=torch.float64)
    g = torch.randn(1, S, n, generator=gen, dtype=torch.float64) * (seed % 3)
    zc = torch.randn(1, n, generator=gen, dtype=torch.float64) * 0.5
    r = torch.tensor([0.3 + seed * 0.4], dtype=torch.float64)
    b, mass = sdp_bias(w, g, zc, r)
    assert bool(torch.isfinite(b).all() and (mass >= b.abs() * 0).all())
    z = _ball_points(zc[0], float(r), 20000, gen)                       # [N, n]
    lhs = torch.einsum("sn,kn->ks", w[0], torch.relu(z))
    rhs = torch.einsum("sn,kn->ks", g[0], z) + b[0]
    assert bool((lhs >= rhs - 1e-9).all())


def test_sdp_bias_is_exact_where_crown_loses_sqrt_n() -> None:
    """zc = 0, w = -1 on n neurons, g = -1/2 (CROWN's upper line of relu over [-r, r]): the
    minimum of w.relu(z) - g.z over the ball is -sqrt(n) r / 2, which SDP-CROWN reaches
    (up to its lambda grid) while CROWN's bias is -n r / 2."""
    n, r = 100, 0.5
    w = -torch.ones(1, 1, n, dtype=torch.float64)
    g = -0.5 * torch.ones(1, 1, n, dtype=torch.float64)
    b, _ = sdp_bias(w, g, torch.zeros(1, n, dtype=torch.float64), torch.tensor([r], dtype=torch.float64))
    exact = -math.sqrt(n) * r / 2
    assert exact - 1e-9 >= float(b) - 1e-9 and float(b) >= exact - 1e-9 - 0.01 * abs(exact)
    assert float(b) > -n * r / 2 / 5


def _mlp() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)).eval()


class _ResCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        h = torch.relu(h + self.c2(h))
        return self.fc(h.flatten(1))


CASES = {"mlp": (_mlp, (1, 20)), "residual-cnn": (lambda: _ResCNN().eval(), (1, 1, 5, 5))}


def _ball(shape: tuple[int, ...], radius: float) -> BallBox:
    c = torch.full((1, *shape), 0.5, dtype=torch.float64)
    return BallBox(c - radius, c + radius, c, torch.tensor([radius], dtype=torch.float64))


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_tensor_stays_in_its_ball(case: str) -> None:
    make, shape = CASES[case]
    net = make().double()
    graph = graph_from_module(net, shape)
    ev = GraphEvaluator(graph, dtype=torch.float64)
    ball = _ball(shape, 0.4)
    ctx = BackwardContext(graph, ev, {}, rules_for(graph))
    with torch.no_grad():
        balls = tensor_balls(graph, ev, ball, ctx)
        pts = _ball_points(ball.ball_centre[0], 0.4, 3000, torch.Generator().manual_seed(0))
        values = ev.forward_all(pts)
    assert len(balls) > len(graph.nodes) // 2
    for name, (centre, radius) in balls.items():
        dist = (values[name] - centre).reshape(len(pts), -1).norm(dim=1)
        assert bool((dist <= float(radius[0]) + 1e-9).all()), name


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bounds_with_sdp_crown_hold_and_tighten(case: str, method: str) -> None:
    """Over a wide ball: below the outputs at points of the ball, and never looser in total
    than the same bounds without SDP-CROWN (tighter on the MLP)."""
    make, shape = CASES[case]
    net = make()
    graph = graph_from_module(net, shape)
    ball = _ball(shape, 1.0)
    box = IntervalBounds(ball.lower.float(), ball.upper.float())
    ball32 = BallBox(box.lower, box.upper, ball.ball_centre.float(), ball.ball_radius.float())
    with_sdp = compute_bounds(graph, ball32, None, BoundOptions(method=method))
    without = compute_bounds(graph, ball32, None, BoundOptions(method=method, sdp_crown=False))
    pts = _ball_points(ball.ball_centre[0].float(), 1.0, 4000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net(pts[:, 0])
    assert bool((out >= with_sdp.lower.reshape(1, -1) - 1e-5).all() and (out <= with_sdp.upper.reshape(1, -1) + 1e-5).all())
    width = float((with_sdp.upper - with_sdp.lower).sum())
    assert width <= float((without.upper - without.lower).sum()) + 1e-6
    if case == "mlp":   # 64 neurons a layer: the ball's coupling pays (on the small CNN it does not)
        assert width < 0.98 * float((without.upper - without.lower).sum())


def test_degenerate_balls_give_no_bias_that_is_not_finite() -> None:
    """A zero or tiny radius sends lambda to overflow: whatever comes out is never a
    finite value above the truth (the backward pass only takes finite biases)."""
    w = torch.tensor([[[1.0, -2.0, 0.5]]])
    g = torch.tensor([[[0.5, -1.0, 0.0]]])
    zc = torch.tensor([[0.0, 1.0, -1.0]])
    for r in (0.0, 1e-30, 1e-3):
        b, m = sdp_bias(w, g, zc, torch.tensor([r]))
        exact = float((w * torch.relu(zc)).sum() - (g * zc).sum())     # the ball is (almost) its centre
        assert not bool(torch.isfinite(b) & torch.isfinite(m)) or float(b) <= exact + 1e-3
