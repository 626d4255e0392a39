"""`nncert lipschitz MODEL`: a certified global Lipschitz bound of a ReLU MLP in ONNX."""
from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from models import UnsupportedModel
    from relaxations.lipschitz import FeedForward
    from relaxations.sdp.network import NotReluMlp, relu_mlp_from_graph
    from verifier.lipschitz import lipschitz_of_network
    from verifier.model import load_model

    model = load_model(args.model)
    try:
        weights, biases = relu_mlp_from_graph(model.graph)
    except NotReluMlp as exc:
        raise UnsupportedModel(f"nncert lipschitz needs a ReLU MLP (Gemm/MatMul/Add/Relu/Flatten): {exc}") from None
    net = FeedForward(tuple(weights), tuple(biases), "relu")
    result = lipschitz_of_network(net, norm=args.norm, method=args.method)
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
    p = sub.add_parser("lipschitz", help="certified global Lipschitz bound of a ReLU MLP")
    p.add_argument("model")
    p.add_argument("--norm", default="2", choices=["2", "inf"])
    p.add_argument("--method", default="naive", choices=["naive", "sdp-neuron", "sdp-layer", "sdp-layerwise"])
    p.add_argument("--report", default=None, help="write a JSON report here")
    p.add_argument("--certificate", default=None, help="write the certificate (JSON) here")
    p.set_defaults(func=_run)
