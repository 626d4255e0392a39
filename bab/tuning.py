"""The tuning constants of branch and bound, in one place, each with its reason.

None of them affects soundness: they decide where the search looks first, how often
it pays for a side task, and how it splits. What they were measured on is in
BENCHMARKS.md ("Clip-and-Verify ablation", "Complete verification").
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tuning", "DEFAULT_TUNING"]


@dataclass(frozen=True)
class Tuning:
    # In-search attack. Signed-gradient steps per attack, from the bound's minimisers
    # (or box centres): a dozen with a geometric step decay reach a local minimum of the
    # spec objective in a small box; more mostly repeat it.
    pgd_steps: int = 12
    # Input split attacks inside the most promising children every `pgd_every`-th round
    # (a round's children overlap their parents' boxes, so every round repeats work).
    pgd_every: int = 2
    pgd_focus_input: int = 64       # children attacked per such round (smallest objective first)
    pgd_focus_activation: int = 32  # activation split: minimisers attacked per round, over the whole region
    confirm_limit: int = 8          # candidates replayed per round (each costs a model run)
    # Input split: sign steps toward each box's point where its conjunction's rows are
    # smallest together (`bab.attack.joint_minimisers`); the point found stopped moving
    # between 5 and 40 steps on the instance it was built for (BENCHMARKS.md, session 40).
    joint_steps: int = 10
    # Activation split's narrowing attack (`bab.narrowing`) checks the root's decisions in
    # at most this share of the time left: 0.1-0.3 s on the hidden needles and mnist_fc,
    # 4.4 s on oval21's cifar_deep_kw, where it finds nothing.
    narrowing_share: float = 0.03
    # A domain that is not fully split goes to the leaf LP (`bab.leaf_lp_unstable`) only
    # while its constraint matrix (split neurons x inputs) stays under this many entries:
    # small LPs cost less than a millisecond, but a dense LP over a CIFAR input with
    # hundreds of split rows would cost more than the round it sits in.
    leaf_lp_max_entries: int = 250_000

    # Domain clipping pays for itself only where it tightens: it keeps running while the
    # last round it ran in tightened at least `clip_rate` of what it saw, and otherwise
    # probes every `clip_probe_every`-th round to notice when it starts to help.
    clip_rate: float = 0.01
    clip_probe_every: int = 8
    # A round with fewer boxes than this always clips them: a few boxes cost little to
    # clip and say little about whether clipping helps.
    box_min_seen: int = 64

    # Input bisection: every dimension keeps this share of the total coefficient weight,
    # so a bound that ignores one input (alpha-CROWN's slopes can zero it) cannot make the
    # search slice the other ones forever; halving any dimension tightens every
    # intermediate bound too.
    split_floor_share: float = 0.05


DEFAULT_TUNING = Tuning()
