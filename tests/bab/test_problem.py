"""`bab.problem` with an l2 ball: projected candidates lie in the ball and the box, a point
outside the ball is no counterexample, and the region's box carries the ball."""
from __future__ import annotations

import numpy as np
import torch

from bab.problem import Problem, into_region, region_box, violations
from models import GraphEvaluator
from relaxations import BallBox
from tests.helpers import relu_mlp_onnx
from verifier import load_model


def _problem(tmp_path, radius: float) -> Problem:
    model = load_model(relu_mlp_onnx(tmp_path / "net.onnx", 0, (3, 8, 2)))
    centre = torch.tensor([[0.9, 0.5, 0.1]])
    lo, hi = (centre - radius).clamp(min=0), (centre + radius).clamp(max=1)
    return Problem(model.graph, GraphEvaluator(model.graph), lo, hi, C=torch.tensor([[1.0, -1.0]]),
                   d=torch.tensor([1e9]), strict=torch.tensor([False]), owner=torch.tensor([0]), n_conj=1,
                   ball=(centre, torch.tensor([radius])))


def test_projection_lands_in_the_ball_and_the_box(tmp_path) -> None:
    p = _problem(tmp_path, 0.3)
    xs = torch.rand(500, 3, generator=torch.Generator().manual_seed(0)) * 2 - 0.5
    got = into_region(p, xs)
    centre, radius = p.ball
    assert bool(((got - centre).norm(dim=1) <= radius).all())
    assert bool(((got >= p.lower) & (got <= p.upper)).all())
    inside = into_region(p, centre + 0.01)
    assert torch.allclose(inside, centre + 0.01)      # a point inside stays where it is


def test_points_outside_the_ball_are_no_counterexample(tmp_path) -> None:
    p = _problem(tmp_path, 0.3)
    centre = p.ball[0]
    corner = torch.minimum(centre + 0.29, p.upper)     # in the box, 0.42 from the centre
    v = violations(p, torch.cat([centre, corner]))
    assert np.isfinite(float(v[0])) and float(v[1]) == np.inf


def test_region_box_is_a_ball_box_with_a_ball(tmp_path) -> None:
    p = _problem(tmp_path, 0.3)
    box = region_box(p, 4)
    assert isinstance(box, BallBox) and box.ball_centre.shape == (4, 3) and box.ball_radius.shape == (4,)
