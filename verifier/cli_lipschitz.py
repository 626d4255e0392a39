"""`nncert lipschitz MODEL`: a certified global Lipschitz bound of a model in ONNX (sdp-*: ReLU MLPs)."""
from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from verifier.lipschitz import lipschitz_of_graph
    from verifier.model import load_model

    if args.method == "local":  # local bound over a box: verifier/cli_lipschitz_local.py
        from verifier.cli_lipschitz_local import run_local

        return run_local(args)
    model = load_model(args.model)
    # naive: any supported graph (graph walk); sdp-*: ReLU MLPs only, UnsupportedModel otherwise
    result = lipschitz_of_graph(model.graph, norm=args.norm, method=args.method)
    print(f"L <= {result.value:.6g}  ({result.method}, l{args.norm}, {result.time_s:.2f} s, {result.solver_status})")
    if args.report:
        with open(args.report, "w") as f:
            json.dump({"model": args.model, "norm": args.norm, "method": result.method, "value": result.value,
                       "time_s": result.time_s, "solver_status": result.solver_status}, f, indent=2)
    if args.certificate:
        with open(args.certificate, "w") as f:
            json.dump(result.certificate, f)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lipschitz", help="certified global Lipschitz bound (naive: any supported graph; sdp-*: ReLU MLPs)")
    p.add_argument("model")
    p.add_argument("--norm", default="2", choices=["2", "inf"])
    p.add_argument("--method", default="naive", choices=["naive", "sdp-neuron", "sdp-layer", "sdp-layerwise", "local"])
    p.add_argument("--center", default=None, help="local: centre of the l-inf input box (.npy)")
    p.add_argument("--radius", type=float, default=None, help="local: l-inf radius of the input box")
    p.add_argument("--domains", type=int, default=200, help="local: branch-and-bound budget (bound computations)")
    p.add_argument("--timeout", type=float, default=60.0, help="local: branch-and-bound time budget (s)")
    p.add_argument("--report", default=None, help="write a JSON report here")
    p.add_argument("--certificate", default=None, help="write the certificate (JSON) here")
    p.set_defaults(func=_run)
