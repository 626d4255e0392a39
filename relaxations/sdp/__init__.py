"""SDP relaxations of ReLU MLPs for verification, as problem data (numpy, no solver).

``problem`` holds the lifted-matrix relaxation and its dual matrix ``M(y)``;
``network`` lowers a graph to weight lists. Solvers live in ``verifier.solvers``."""

from relaxations.sdp.network import NotReluMlp, mlp_forward, relu_inputs, relu_mlp_from_graph
from relaxations.sdp.problem import (
    LAYER_FIELDS,
    Multipliers,
    SdpProblem,
    best_offset,
    build_problem,
    centred,
    certified_bound,
    dual_matrix,
    dual_operator,
    dual_triplets,
    eig_margin,
    nonneg_mask,
)

__all__ = [
    "LAYER_FIELDS",
    "Multipliers",
    "NotReluMlp",
    "SdpProblem",
    "best_offset",
    "build_problem",
    "centred",
    "certified_bound",
    "dual_matrix",
    "dual_operator",
    "dual_triplets",
    "eig_margin",
    "mlp_forward",
    "nonneg_mask",
    "relu_inputs",
    "relu_mlp_from_graph",
]
