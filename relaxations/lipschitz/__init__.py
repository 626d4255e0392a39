"""Lipschitz relaxations as problem data: networks, certified norms, LipSDP's LMI.

No solver is called in this package; ``verifier.solvers`` holds the back ends."""

from relaxations.lipschitz.lmi import (
    BlockTridiagonal,
    SchurSweep,
    assemble_lmi,
    expand_layer_multiplier,
    fast_layer_multipliers,
    layer_schur,
    lmi_scale,
    maxmin_pair_form,
    multiplier_shape,
    nsd_with_margin,
    output_metric,
    project_multipliers,
    qc_blocks,
    schur_sweep,
)
from relaxations.lipschitz.network import (
    ACTIVATIONS,
    FeedForward,
    SlopeBounds,
    activation_lipschitz,
    load_lipsdp_mat,
    load_maxmin_mat,
    network_sha256,
    slope_bounds,
)
from relaxations.lipschitz.norms import (
    NaiveBound,
    certified_spectral_norm,
    inf_operator_norm_upper,
    is_spectral_upper_bound,
    naive_bound,
)

__all__ = [
    "ACTIVATIONS",
    "BlockTridiagonal",
    "FeedForward",
    "NaiveBound",
    "SchurSweep",
    "SlopeBounds",
    "activation_lipschitz",
    "assemble_lmi",
    "certified_spectral_norm",
    "expand_layer_multiplier",
    "fast_layer_multipliers",
    "inf_operator_norm_upper",
    "is_spectral_upper_bound",
    "layer_schur",
    "lmi_scale",
    "load_lipsdp_mat",
    "load_maxmin_mat",
    "maxmin_pair_form",
    "multiplier_shape",
    "naive_bound",
    "network_sha256",
    "nsd_with_margin",
    "output_metric",
    "project_multipliers",
    "qc_blocks",
    "schur_sweep",
    "slope_bounds",
]
