"""`nncert lipschitz MODEL --method local --center X.npy --radius R`: the local bound.

Kept apart from ``cli_lipschitz`` (global methods) so the two can change separately.
Bad input (no or malformed center, wrong size, negative radius, not a ReLU MLP) raises
``ConfigError`` / ``UnsupportedModel``, which ``nncert`` turns into one line and exit 2.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

__all__ = ["run_local"]


def _load_center(path: str | None) -> np.ndarray:
    from verifier.config import ConfigError

    if not path:
        raise ConfigError("--method local needs --center X.npy (the centre of the input box)")
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # numpy raises several kinds for a damaged or non-.npy file
        raise ConfigError(f"{path}: not a readable .npy array ({type(exc).__name__}: {exc})") from None
    if not np.issubdtype(arr.dtype, np.number):
        raise ConfigError(f"{path}: the center must be numeric, got dtype {arr.dtype}")
    return np.asarray(arr, dtype=np.float64)


def run_local(args: argparse.Namespace) -> int:
    """Bound, print one line, and write the report / certificate if asked."""
    from models import UnsupportedModel
    from relaxations.lipschitz import FeedForward
    from relaxations.sdp.network import NotReluMlp, relu_mlp_from_graph
    from verifier.config import ConfigError
    from verifier.lipschitz_local import local_lipschitz
    from verifier.model import load_model

    center = _load_center(getattr(args, "center", None))
    if args.radius is None:
        raise ConfigError("--method local needs --radius R (the l-inf radius of the input box)")
    model = load_model(args.model)
    try:
        weights, biases = relu_mlp_from_graph(model.graph)
    except NotReluMlp as exc:
        raise UnsupportedModel(f"--method local needs a ReLU MLP (Gemm/MatMul/Add/Relu/Flatten): {exc}") from None
    net = FeedForward(tuple(weights), tuple(biases), "relu")
    try:
        res = local_lipschitz(net, center, args.radius, norm=args.norm,
                              max_domains=args.domains, timeout=args.timeout)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(f"L <= {res.value:.6g}  (local, l{args.norm} box radius {res.radius:g}, {res.domains} domains, "
          f"{res.time_s:.2f} s; root {max(res.root):.6g}, global naive {max(res.naive_rows):.6g})")
    if args.report:
        with open(args.report, "w") as f:
            json.dump({"model": args.model, "norm": args.norm, "method": "local", "value": res.value,
                       "radius": res.radius, "per_row": list(res.per_row), "root": list(res.root),
                       "interval": list(res.interval), "naive_rows": list(res.naive_rows),
                       "domains": res.domains, "leaves": res.leaves, "exhausted": res.exhausted,
                       "time_s": res.time_s}, f, indent=2)
    if args.certificate:
        with open(args.certificate, "w") as f:
            json.dump(res.certificate, f)
    return 0
