"""What a bound computation is asked for and what it returns: `BoundOptions`, `BoundResult`
and the `ClipHook` protocol.

They live apart from `relaxations.compute` so that the modules compute calls
(`intermediate`, `alpha_intermediate`) can name them without importing compute itself.
`relaxations.compute` re-exports all three; callers import them from there or from
`relaxations`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Protocol

import torch

from relaxations.bounds import BoundsTable, IntervalBounds, LinearBounds, Precision

__all__ = ["BoundOptions", "BoundResult", "ClipHook", "Given", "METHODS", "INTERMEDIATE"]

METHODS = ("ibp", "crown", "alpha-crown")
INTERMEDIATE = ("crown", "ibp", "forward")
T = torch.Tensor


@dataclass(frozen=True)
class BoundOptions:
    """What one bound computation computes (the verifier's config embeds this)."""

    method: str = "crown"
    # How intermediate tensors are bounded: "crown" (backward from each unstable
    # neuron), "ibp", or "forward" (forward-mode linear bounds, cheap when the input
    # has few elements; falls back to intervals where an op has no relaxation).
    intermediate: str = "crown"
    alpha_iterations: int = 20
    alpha_lr: float = 0.25
    max_elements: int = 40_000_000       # A-matrix elements per backward pass (memory guard)
    # None: chosen from the dtype. Precision.none(): no rounding margins, bounds sound in
    # exact arithmetic only (certified training's losses; never for a verdict).
    precision: Optional[Precision] = None
    # time.monotonic() value; past it bound passes raise DeadlineExceeded, except
    # alpha-CROWN's optimisation, which stops early with its best (sound) bound so far.
    deadline: Optional[float] = None
    keep_betas: bool = False               # alpha-CROWN also returns the best betas per row (proof logs)
    # Fold C into the trailing affine ops for the interval bound (see the module
    # docstring). None: IBP folds, CROWN and alpha-CROWN take the plain box bound (the
    # checker re-derives that one), except on graphs with slot nodes (no checker reads
    # those; see `_compute`); True also folds for them (certified training).
    fold: Optional[bool] = None
    # Keep the coefficient at every relaxed elementwise node's output from the final
    # pass (`BoundResult.coefficients`): branching heuristics score neurons with them.
    coefficients: bool = False
    # Keep autograd through the bound (certified training backpropagates through it).
    # False runs the passes under no_grad (alpha-CROWN still differentiates its own steps).
    grad: bool = False
    # alpha-CROWN also optimises the intermediate bounds: alphas per CROWN-bounded tensor
    # and earlier relaxed node, every interval recomputed per step; `BoundResult.table`
    # is then the best interval per element (relaxations/alpha_intermediate.py). Falls
    # back to plain alpha-CROWN with a clip hook or with intermediate != "crown".
    optimise_intermediate: bool = False
    # time.monotonic() value past which that optimisation stops with its best so far (its
    # passes, unlike the ones `deadline` governs, never raise): a share of the budget.
    optimise_deadline: Optional[float] = None
    # Row thresholds [R] (or [B, R]): alpha-CROWN's optimisation stops once its best bound
    # of every row of every domain is above them (the rows are proved: more steps change
    # no answer). Only without `coefficients`, which come from the last step.
    stop_above: Optional[torch.Tensor] = None
    # Row lower bounds [B, R] -> bool [B]: the domains whose bounds already decide what the
    # caller asks (branch and bound: every conjunction proved). alpha-CROWN drops those
    # from its later steps once they are `alpha.PRUNE_SHARE` of the domains still in it,
    # and stops when all are; each keeps the best bound it had reached. Set per call by
    # a search, never in a config; the bounds of the other domains are unchanged.
    proved: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    # CROWN's intermediate rows walk back through convolutions as per-row windows
    # (patches, relaxations/patches.py) instead of whole feature maps: the same bound up
    # to float rounding, less work on CNNs. The final rows and alpha passes stay dense.
    patches: bool = True
    # With split decisions: the input box each domain's decisions imply (constraint
    # propagation back through ReLUs and affine nodes, relaxations/reverse.py), and every
    # bound computed again over it where it is smaller (`BoundResult.box`).
    tighten_input: bool = False
    # alpha-CROWN keeps a ReLU's alphas only at its unstable elements when they are few
    # (crown.SparseAlpha): the same bounds, less work per step on wide layers.
    sparse_alpha: bool = True
    # Over an l2 ball (a BallBox input), each ReLU's bias is also SDP-CROWN's where that is
    # higher (relaxations/sdp_crown.py, the balls from relaxations/l2.py).
    sdp_crown: bool = True
    # CROWN tightens every element of a relaxed op's input, the stable ones too (their
    # tighter intervals then enter the later layers' IBP). A verification's bounds only
    # need the unstable ones; local Lipschitz bounds read every pre-activation interval
    # (relaxations/lipschitz/local.py), where the wider ones cost a factor of several.
    crown_every_element: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not '{self.method}'")
        if self.intermediate not in INTERMEDIATE:
            raise ValueError(f"intermediate must be one of {', '.join(INTERMEDIATE)}, not '{self.intermediate}'")

    @property
    def folds(self) -> bool:
        return self.method == "ibp" if self.fold is None else bool(self.fold)


@dataclass(frozen=True)
class BoundResult:
    """Sound bounds of C @ output over each box of the batch, and what produced them.

    lower [B, S] (upper [B, S] when asked) are the best of every bound computed: the
    interval bound, CROWN's and alpha-CROWN's. Domains whose splits are infeasible hold
    no input: their lower bounds are +inf and `infeasible` [B] marks them.
    """

    lower: T
    upper: Optional[T]
    table: BoundsTable                       # intervals of every tensor, keyed by name
    infeasible: T                            # [B] bool
    interval_lower: T                        # [B, S]: the interval part alone (box or folded IBP)
    # The linear bound over the input that gave the CROWN part of the rows (alpha's best
    # per row when optimised): A [B, R, *input_shape], R = S, or 2S with the upper rows.
    linear: Optional[LinearBounds] = None
    crown_linear: Optional[LinearBounds] = None   # plain CROWN's, before alpha-CROWN changed it
    alphas: Mapping[str, T] = field(default_factory=dict)   # node -> [B, R, *shape]: used per row
    betas: Mapping[str, T] = field(default_factory=dict)    # tensor -> [B, R, *shape] (keep_betas)
    coefficients: Mapping[str, T] = field(default_factory=dict)  # node -> A at its output
    alpha_iterations: int = 0
    # The input box the bounds hold over: the given one, or with `tighten_input` the box
    # the split decisions narrowed it to (relaxations/reverse.py).
    box: Optional[IntervalBounds] = None


class ClipHook(Protocol):
    """Relaxed clipping of intermediate bounds (bab/clip_hooks.py builds them).

    Called with a tensor's name, the LinearBounds of a chunk of its rows over the input
    and their plain lower bounds [B, R]; returns lower bounds at least as tight that are
    still sound on the domain. `split_linear`, when a dict, receives the split neurons'
    linear bounds (`_crown_tensor`), filled in topological order, so the hook sees those
    of earlier tensors only; None: nothing is collected.
    """

    split_linear: Optional[dict]

    def __call__(self, name: str, lin: LinearBounds, lb: T) -> T: ...


@dataclass(frozen=True)
class Given:
    """What a caller gives a bound pass beyond the box: what restricts or seeds it.

    `splits`: activation split decisions, tensor -> signs [B, *shape] (+1: >= 0, -1: <= 0,
    0: free; see `intermediate_bounds`); with alpha-CROWN they also get beta multipliers
    (beta-CROWN). `clip`: relaxed clipping of the intermediate bounds (`ClipHook`).
    `alphas` (node -> [B, R, *shape], NaN: the rule's default) and `betas` (split tensor
    -> [B, R, *shape]) are relaxation parameters per row, R = S (2S with the upper rows):
    CROWN uses them as they are, alpha-CROWN starts from them. They are projected into
    their sound range first (alphas into the rule's bounds, betas to >= 0), so no value a
    caller passes can make a bound unsound.
    `known`: tensor -> IntervalBounds [1 or B, *shape] proved beforehand (an LP
    refinement) over a region that contains every box of the batch; each is intersected
    with the tensor's interval. Unlike alphas they cannot be checked: a caller passing a
    wrong interval gets a wrong bound.
    `cuts`: key -> (tensor, s, c) [B, *shape] each, constraints s*z >= s*c (where s != 0)
    that hold on each box's domain (general activation splits); alpha-CROWN dualises them
    with multipliers like beta-CROWN's (`relaxations.alpha.optimise_alpha`), started from
    `betas[key]` [B, R, *shape] where given. Like `known`, they are trusted.
    """

    splits: Optional[Mapping[str, T]] = None
    clip: Optional[ClipHook] = None
    alphas: Optional[Mapping[str, T]] = None
    betas: Optional[Mapping[str, T]] = None
    known: Optional[Mapping[str, IntervalBounds]] = None
    cuts: Optional[Mapping] = None
