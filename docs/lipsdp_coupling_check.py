"""Evidence for docs/bench_lipschitz.md ("Why not 24.32"): NOT part of nncert.

Re-solves LipSDP's variants on LipSDP's ``mnist_weights.mat`` with cvxpy + Clarabel
(raw solver optimum, no certification) and shows on a 1-input network that the
coupling multipliers of LipSDP-Network (``T = diag(d) + sum zeta_ij (e_i - e_j)(e_i - e_j)^T``)
give a bound far below the true Lipschitz constant. The coupled variants are unsound;
they are here only to reproduce the published figures. Never use them for a bound.

    OMP_NUM_THREADS=1 .venv/bin/python docs/lipsdp_coupling_check.py counterexample
    OMP_NUM_THREADS=1 .venv/bin/python docs/lipsdp_coupling_check.py neuron      # ~1 min
    OMP_NUM_THREADS=1 .venv/bin/python docs/lipsdp_coupling_check.py decvars     # ~1 min
    OMP_NUM_THREADS=1 .venv/bin/python docs/lipsdp_coupling_check.py rand 4      # ~1.5 min each
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from pathlib import Path

import cvxpy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MNIST = str(Path(__file__).resolve().parents[2] / "shared" / "models" / "lipsdp" / "mnist_weights.mat")


def lipsdp_one_hidden(w0: np.ndarray, w1: np.ndarray, pairs=()) -> tuple[float, str, float]:
    """sqrt(min rho) of LipSDP (ReLU: alpha = 0, beta = 1) for y = W1 relu(W0 x); ``pairs``
    adds LipSDP-Network coupling multipliers (unsound)."""
    n = w0.shape[0]
    if w0.shape[1] > n:  # same optimum on range(W0^T) (see verifier/solvers/cvxpy_lipsdp.py)
        q, _ = np.linalg.qr(w0.T)
        w0 = w0 @ q
    n0 = w0.shape[1]
    rho = cp.Variable(nonneg=True)
    d = cp.Variable(n, nonneg=True)
    t = cp.diag(d)
    if pairs:
        zeta = cp.Variable(len(pairs), nonneg=True)
        e = np.zeros((n, len(pairs)))
        for k, (i, j) in enumerate(pairs):
            e[i, k], e[j, k] = 1.0, -1.0
        t = t + e @ cp.diag(zeta) @ e.T
    m = cp.bmat([[-rho * np.eye(n0), w0.T @ t], [t @ w0, -2 * t + w1.T @ w1]])
    prob = cp.Problem(cp.Minimize(rho), [0.5 * (m + m.T) << 0])
    t0 = time.time()
    prob.solve(solver="CLARABEL")
    return math.sqrt(max(float(rho.value), 0.0)), str(prob.status), time.time() - t0


def main(argv: list[str]) -> None:
    what = argv[0] if argv else "counterexample"
    if what == "counterexample":
        # f(x) = relu(x) - relu(x - 1): slope 1 on [0, 1], so Lip(f) = 1.
        w0, b0, w1 = np.array([[1.0], [1.0]]), np.array([0.0, -1.0]), np.array([[1.0, -1.0]])
        xs = np.linspace(-2.0, 3.0, 50001)
        f = (np.maximum(np.outer(xs, w0[:, 0]) + b0, 0.0) @ w1.T)[:, 0]
        print("sampled Lipschitz constant:", float(np.max(np.abs(np.diff(f) / np.diff(xs)))))
        print("LipSDP-Neuron : %.6g" % lipsdp_one_hidden(w0, w1)[0])
        print("LipSDP-Network: %.6g  (below the true constant: unsound)" % lipsdp_one_hidden(w0, w1, [(0, 1)])[0])
        return
    from relaxations.lipschitz import load_lipsdp_mat  # lazy: torch (about 2 s) only for the MNIST weights

    w0, w1 = load_lipsdp_mat(MNIST).weights
    pairs_all = list(itertools.combinations(range(w0.shape[0]), 2))  # = MATLAB nchoosek(1:50, 2)
    if what == "neuron":
        print("LipSDP-Neuron raw sqrt(rho) = %.6f (%s, %.0f s)" % lipsdp_one_hidden(w0, w1))
    elif what == "decvars":  # --form network-dec-vars --num-decision-vars 5
        pairs = pairs_all[:: math.ceil(len(pairs_all) / 5)]
        print("pairs (0-based):", pairs)
        print("LipSDP-Network-Dec-Vars(5) = %.6f (%s, %.0f s)" % lipsdp_one_hidden(w0, w1, pairs))
    elif what == "rand":  # --form network-rand --num-neurons 5 (MATLAB's randperm is unseeded)
        for seed in range(int(argv[1]) if len(argv) > 1 else 1):
            idx = np.random.default_rng(seed).permutation(len(pairs_all))[:5]
            r = lipsdp_one_hidden(w0, w1, [pairs_all[k] for k in idx])
            print("LipSDP-Network-Rand(5) seed %d = %.6f (%s, %.0f s)" % ((seed,) + r), flush=True)
    else:
        raise SystemExit(f"unknown mode {what!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
