"""Local Lipschitz bounds on a fixed set of cases, for comparing two trees (run it with
each tree on PYTHONPATH): value, root bound, domains, seconds and whether the float64
checker accepts the certificate, one JSON line per case.

    PYTHONPATH=<tree> python benchmarks/local_lipschitz_ab.py out.json [--shared ../shared]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from models import load_onnx
from relaxations.lipschitz import FeedForward, load_lipsdp_mat
from relaxations.sdp.network import relu_mlp_from_graph
from verifier.checker.lipschitz_local import check_local_lipschitz_certificate
from verifier.lipschitz_local import LocalSearch, local_lipschitz


def _cases(shared: str) -> dict:
    """name -> (network, centre, radii)."""
    nets = {"lipsdp": (load_lipsdp_mat(f"{shared}/models/lipsdp/random_weights.mat"), np.array([1.0, -0.5]),
                       [0.01, 0.5])}
    for size in ("256x2", "256x4"):
        w, b = relu_mlp_from_graph(load_onnx(f"{shared}/bench/2022_mnist_fc/onnx/mnist-net_{size}.onnx"))
        nets[size] = (FeedForward(tuple(w), tuple(b), "relu"), np.full(784, 0.5), [0.001, 0.01])
    w, b = relu_mlp_from_graph(load_onnx(f"{shared}/bench/2022_acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx"))
    nets["acas1_1"] = (FeedForward(tuple(w), tuple(b), "relu"), np.zeros(5), [0.01, 0.1])
    return nets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--shared", default="../shared")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, (net, x0, radii) in _cases(args.shared).items():
        for norm in ("inf", "2"):
            for r in radii:
                for d in (1, 30):
                    t = time.perf_counter()
                    res = local_lipschitz(net, x0, r, norm, search=LocalSearch(max_domains=d, timeout=30))
                    seconds = time.perf_counter() - t
                    ok, _ = check_local_lipschitz_certificate(res.certificate, [np.asarray(x) for x in net.weights],
                                                              [np.asarray(x) for x in net.biases])
                    rows.append(dict(net=name, norm=norm, r=r, d=d, value=res.value, root=max(res.root),
                                     domains=res.domains, t=round(seconds, 2), ok=ok))
                    print(json.dumps(rows[-1]), flush=True)
    with open(args.out, "w") as f:
        json.dump(rows, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
