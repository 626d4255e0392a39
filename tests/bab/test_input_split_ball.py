"""Input split over a box cut by an l2 ball (bab/input_split.py): a domain box the ball
misses is proved without a bound, and one that touches the ball never is."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from bab.input_split import _misses_ball


def _problem(centre, radius: float):
    c = torch.tensor([centre], dtype=torch.float32)
    return SimpleNamespace(ball=(c, torch.tensor([radius], dtype=torch.float32)))


def test_a_box_the_ball_misses_is_found_and_one_it_touches_is_not() -> None:
    p = _problem([0.0, 0.0], 1.0)
    lo = torch.tensor([[1.0, 0.0], [0.6, 0.6], [0.8, 0.8], [1.0 + 1e-6, -1.0], [-3.0, -3.0]])
    hi = torch.tensor([[2.0, 1.0], [1.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 3.0]])
    # touching at (1, 0); inside at (0.6, 0.6); (0.8, 0.8) is at 1.131 > 1; just past 1; containing
    assert _misses_ball(p, lo, hi).tolist() == [False, False, True, True, False]


def test_missed_boxes_hold_no_point_of_the_ball() -> None:
    """Random boxes around a random ball: every box called missed holds none of 20,000
    points sampled in the ball, and every box whose nearest point to the centre lies in
    the ball (by float64 arithmetic with room) is not called missed."""
    g = np.random.default_rng(0)
    c, r = g.random(3), 0.3
    p = _problem(c.tolist(), r)
    lo = torch.tensor(g.random((500, 3)) * 1.2 - 0.1, dtype=torch.float32)
    hi = lo + torch.tensor(g.random((500, 3)) * 0.2, dtype=torch.float32)
    missed = _misses_ball(p, lo, hi).numpy()
    d = g.standard_normal((20000, 3))
    pts = c + d / np.linalg.norm(d, axis=1, keepdims=True) * r * g.random((20000, 1)) ** (1 / 3)
    lo64, hi64 = lo.double().numpy(), hi.double().numpy()
    for i in np.nonzero(missed)[0]:
        assert not np.any(np.all((pts >= lo64[i]) & (pts <= hi64[i]), axis=1))
    nearest = np.clip(c, lo64, hi64)
    inside = np.linalg.norm(nearest - c, axis=1) < r * (1 - 1e-6)
    assert not np.any(missed & inside) and missed.any() and (~missed).any()
