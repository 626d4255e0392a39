"""VNN-LIB 2.0 queries on models the project makes, each verified by `nncert verify`.

What 1.0 cannot say and 2.0 can, on small models trained here in seconds:

- **global robustness** of the digits classifier: two `equal-to` copies f and g, inputs
  within eps of each other in every pixel (`|X - X2| <= eps`, two rows each), f's input
  in a box around a test image, and the argmax of f different from g's (a disjunction
  over the pairs of classes). Over the whole pixel range this is always sat for a
  classifier with two classes; around one image it is a property of the neighbourhood;
- **monotonicity** of a small tabular regression in its first feature: two `equal-to`
  copies, the first input of f at least g's, the other inputs equal, and f's first
  output below g's;
- **equivalence** of the digits network and a smaller student within a tolerance:
  an `isomorphic-to` network (same input and output shapes, its own weights) on the
  same input (`==`), some logit differing by more than the tolerance;
- a **polynomial output constraint**: the squared norm of the tabular model's two
  outputs (`(* Y[0,0] Y[0,0])`) above a bound, over the whole input box.

Each query is written as the standard's text, run through the standard's command line
(`nncert verify QUERY --network NAME=PATH`), and its verdict printed; after `sat`, the
assignment nncert prints (every declared tensor, both networks) is checked here again
against the torch models and the query's own conditions.

    python examples/vnnlib2_queries.py --out out/vnnlib2_examples --timeout 60 [--certificates]

With ``--certificates`` each run also writes its certificate, and ``nncert check`` (the
independent checker, given each network's file) says whether it accepts it.
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_demo import digits_split, export, fit, train_digits  # noqa: E402  (the demo's helpers)

from vnnlib.writer import decimal as num  # noqa: E402  (2.0's plain decimals)

FEATURES = 4


def tabular(seed: int = 0, n: int = 1200) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic table: four features in [0, 1]; two targets, the first increasing in
    feature 0 (a price-like quantity), the second not; a little noise."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, FEATURES)).astype(np.float32)
    y0 = 1.5 * x[:, 0] + np.sin(3 * x[:, 1]) * x[:, 2] + 0.3 * x[:, 3]
    y1 = np.cos(2 * x[:, 0]) - x[:, 1] * x[:, 3]
    y = np.stack([y0, y1], 1) + 0.05 * rng.standard_normal((n, 2))
    return x, y.astype(np.float32)


def train_tabular(epochs: int = 150, seed: int = 0, width: int = 16) -> nn.Module:
    """A 4-16-16-2 ReLU regression by Adam on the squared error."""
    torch.manual_seed(seed)
    x, y = (torch.from_numpy(a) for a in tabular(seed))
    net = nn.Sequential(nn.Linear(FEATURES, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                        nn.Linear(width, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(epochs):
        for i in range(0, len(x), 128):
            opt.zero_grad()
            nn.functional.mse_loss(net(x[i:i + 128]), y[i:i + 128]).backward()
            opt.step()
    return net.eval()


def train_student(epochs: int = 60, seed: int = 1, width: int = 16) -> nn.Module:
    """A 64-16-10 digits network (the teacher is the demo's 64-32-32-10)."""
    torch.manual_seed(seed)
    xtr, ytr, _, _ = digits_split(0)
    net = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
    fit(net, xtr, ytr, epochs)
    return net


def export_tabular(net: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, torch.zeros(1, FEATURES), str(path), input_names=["x"], output_names=["y"],
                          opset_version=13, dynamo=False)


# ---------------------------------------------------------------- the queries


def _box(name: str, lo: np.ndarray, hi: np.ndarray) -> list[str]:
    return [f"(assert (>= {name}[0,{i}] {num(a)})) (assert (<= {name}[0,{i}] {num(b)}))"
            for i, (a, b) in enumerate(zip(lo, hi))]


def _header(f: str, g: str, n_in: int, n_out: int) -> list[str]:
    return ["(vnnlib-version <2.0>)",
            f"(declare-network f (declare-input X float32 [1,{n_in}]) (declare-output Y float32 [1,{n_out}]))",
            f"(declare-network g ({g} f) (declare-input X2 float32 [1,{n_in}]) (declare-output Y2 float32 [1,{n_out}]))"
            ] if g else ["(vnnlib-version <2.0>)",
                         f"(declare-network f (declare-input X float32 [1,{n_in}]) (declare-output Y float32 [1,{n_out}]))"]


def global_robustness(x0: np.ndarray, delta: float, eps: float, classes: int = 10) -> str:
    """f's input within delta of x0 (clipped to [0, 1]), g's within eps of f's in every
    pixel, and argmax f != argmax g: for some classes a != b, f scores a at least as high
    as every class and g scores b so."""
    lo, hi = np.clip(x0 - delta, 0, 1), np.clip(x0 + delta, 0, 1)
    lines = _header("f", "equal-to", len(x0), classes) + _box("X", lo, hi)
    lines += _box("X2", np.clip(lo - eps, 0, 1), np.clip(hi + eps, 0, 1))
    lines += [f"(assert (<= (- X[0,{i}] X2[0,{i}]) {num(eps)})) (assert (>= (- X[0,{i}] X2[0,{i}]) {num(-eps)}))"
              for i in range(len(x0))]
    terms = []
    for a, b in itertools.permutations(range(classes), 2):
        f_top = " ".join(f"(>= Y[0,{a}] Y[0,{j}])" for j in range(classes) if j != a)
        g_top = " ".join(f"(>= Y2[0,{b}] Y2[0,{j}])" for j in range(classes) if j != b)
        terms.append(f"(and {f_top} {g_top})")
    lines.append(f"(assert (or {' '.join(terms)}))")
    return "\n".join(lines) + "\n"


def monotonicity(lo: np.ndarray, hi: np.ndarray, feature: int = 0, drop: float = 0.0) -> str:
    """X[feature] >= X2[feature], the other features equal, both in [lo, hi]; Y[0] <
    Y2[0] - drop: raising that feature lowers the first output by more than `drop`."""
    lines = _header("f", "equal-to", len(lo), 2) + _box("X", lo, hi) + _box("X2", lo, hi)
    lines.append(f"(assert (>= X[0,{feature}] X2[0,{feature}]))")
    lines += [f"(assert (== X[0,{i}] X2[0,{i}]))" for i in range(len(lo)) if i != feature]
    lines.append(f"(assert (< Y[0,0] (- Y2[0,0] {num(drop)})))")
    return "\n".join(lines) + "\n"


def equivalence(x0: np.ndarray, delta: float, tol: float, classes: int = 10) -> str:
    """The student g (`isomorphic-to` f: same shapes, its own weights) on f's input, within
    delta of x0: some logit of the two differs by more than `tol`."""
    lo, hi = np.clip(x0 - delta, 0, 1), np.clip(x0 + delta, 0, 1)
    lines = _header("f", "isomorphic-to", len(x0), classes) + _box("X", lo, hi) + _box("X2", lo, hi)
    lines += [f"(assert (== X[0,{i}] X2[0,{i}]))" for i in range(len(x0))]
    apart = [f"(> (- Y[0,{j}] Y2[0,{j}]) {num(tol)}) (< (- Y[0,{j}] Y2[0,{j}]) {num(-tol)})" for j in range(classes)]
    lines.append(f"(assert (or {' '.join(apart)}))")
    return "\n".join(lines) + "\n"


def squared_norm(lo: np.ndarray, hi: np.ndarray, bound: float) -> str:
    """Y[0]^2 + Y[1]^2 > bound somewhere in [lo, hi] (the POLY theory)."""
    lines = _header("f", "", len(lo), 2) + _box("X", lo, hi)
    lines.append(f"(assert (> (+ (* Y[0,0] Y[0,0]) (* Y[0,1] Y[0,1])) {num(bound)}))")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- running them


@dataclass(frozen=True)
class Outcome:
    verdict: str
    seconds: float
    values: dict[str, np.ndarray]   # after sat: every declared tensor, flattened


def _networks(networks: dict[str, Path]) -> list[str]:
    return [a for name, path in networks.items() for a in ("--network", f"{name}={path}")]


def run_query(query: Path, networks: dict[str, Path], timeout: float, certificate: Path | None = None) -> Outcome:
    """`nncert verify QUERY --network NAME=PATH ...` in a fresh process (the standard's
    command line): the first stdout line is the verdict; after sat, `NAME TYPE [shape]`
    lines each followed by the tensor's values, one a line. With `certificate`, the run
    writes one there (`--certificate`)."""
    args = [sys.executable, "-m", "verifier.cli", "verify", str(query), "--timeout", str(timeout),
            *_networks(networks)]
    if certificate is not None:
        args += ["--certificate", str(certificate)]
    start = time.monotonic()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 120, env=env)
    seconds = time.monotonic() - start
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"nncert verify exited {proc.returncode}: {proc.stderr.strip()}")
    return parse_output(lines, seconds)


def check_certificate(certificate: Path, networks: dict[str, Path], query: Path) -> str:
    """`nncert check CERT --network NAME=PATH ... --spec QUERY`: its one line (accepted,
    or rejected and why), or what it said when there was no certificate to check."""
    if not certificate.is_file():
        return "none written"
    args = [sys.executable, "-m", "verifier.cli", "check", str(certificate), *_networks(networks),
            "--spec", str(query)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    return (proc.stdout.strip() or proc.stderr.strip()).splitlines()[0]


def parse_output(lines: list[str], seconds: float = 0.0) -> Outcome:
    """The standard's stdout: the verdict, then (after sat) `NAME TYPE [d1,d2]` lines,
    each followed by the tensor's values one a line, row-major."""
    values: dict[str, np.ndarray] = {}
    i = 1
    while i < len(lines):
        name, _, shape = lines[i].split(" ", 2)
        n = int(np.prod([int(d) for d in shape.strip("[]").split(",")]))
        values[name] = np.array([float(v) for v in lines[i + 1:i + 1 + n]], np.float32)
        i += 1 + n
    return Outcome(lines[0], seconds, values)


def _forward(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x.reshape(1, -1))).numpy().reshape(-1)


def replayed(outcome: Outcome, nets: dict[str, nn.Module], holds: Callable[[dict], bool]) -> bool:
    """A sat's assignment, checked here: each network's printed output is its torch
    forward on the printed input (to float32 rounding), and the query's condition holds
    for the printed values."""
    v = outcome.values
    for (xn, yn), net in zip((("X", "Y"), ("X2", "Y2")), nets.values()):
        if xn in v and not np.allclose(_forward(net, v[xn]), v[yn], rtol=1e-4, atol=1e-4):
            return False
    return holds(v)


def _mono(v: dict, feature: int, drop: float) -> bool:
    others = [i for i in range(len(v["X"])) if i != feature]
    return bool(v["X"][feature] >= v["X2"][feature] and np.array_equal(v["X"][others], v["X2"][others])
                and v["Y"][0] < v["Y2"][0] - drop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/vnnlib2_examples")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--certificates", action="store_true",
                        help="write each verdict's certificate and check it with nncert check")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t = time.monotonic()
    teacher, xte, yte, acc = train_digits()
    student = train_student()
    table = train_tabular()
    for net, path, fn in ((teacher, out / "digits.onnx", export), (student, out / "student.onnx", export),
                          (table, out / "tabular.onnx", export_tabular)):
        fn(net, path)
    print(f"trained three models in {time.monotonic() - t:.1f} s (digits test accuracy {acc:.3f})")
    x0 = xte[0].astype(np.float64)
    box_lo, box_hi = np.zeros(FEATURES), np.ones(FEATURES)
    with torch.no_grad():   # sampled extremes, for the thresholds on either side of them
        ys = table(torch.rand(20000, FEATURES, generator=torch.Generator().manual_seed(0))).numpy()
        peak = float((ys ** 2).sum(1).max())   # the squared norm's largest value
        near = torch.from_numpy(np.clip(x0 + 0.01 * (2 * np.random.default_rng(0).random((2000, 64)) - 1), 0, 1)
                                ).float()
        gap = float((teacher(near) - student(near)).abs().max())   # largest logit gap on samples
    pair = {"f": out / "digits.onnx", "g": out / "student.onnx"}

    digits = {"f": out / "digits.onnx"}
    tabular_net = {"f": out / "tabular.onnx"}
    cases = [
        ("global robustness, delta 0.05, eps 0.02", global_robustness(x0, 0.05, 0.02), digits, {"f": teacher},
         lambda v: int(np.argmax(v["Y"])) != int(np.argmax(v["Y2"])) and np.abs(v["X"] - v["X2"]).max() <= 0.02),
        ("global robustness, delta 0.1, eps 0.05", global_robustness(x0, 0.1, 0.05), digits, {"f": teacher},
         lambda v: int(np.argmax(v["Y"])) != int(np.argmax(v["Y2"])) and np.abs(v["X"] - v["X2"]).max() <= 0.05),
        ("feature 0 up never lowers output 0 by more than 0.2", monotonicity(box_lo, box_hi, 0, 0.2),
         tabular_net, {"f": table}, lambda v: _mono(v, 0, 0.2)),
        ("feature 1 up never lowers output 0", monotonicity(box_lo, box_hi, 1, 0.0),
         tabular_net, {"f": table}, lambda v: _mono(v, 1, 0.0)),
        (f"student within {gap + 1.0:.2f} of the teacher (sampled gap {gap:.2f}), delta 0.01",
         equivalence(x0, 0.01, gap + 1.0), pair, {"f": teacher, "g": student},
         lambda v: np.abs(v["Y"] - v["Y2"]).max() > gap + 1.0),
        (f"student within {0.9 * gap:.2f} of the teacher, delta 0.01", equivalence(x0, 0.01, 0.9 * gap), pair,
         {"f": teacher, "g": student}, lambda v: np.abs(v["Y"] - v["Y2"]).max() > 0.9 * gap),
        (f"squared norm above 1.5 x its sampled peak {peak:.3f}", squared_norm(box_lo, box_hi, 1.5 * peak),
         tabular_net, {"f": table}, lambda v: float((v["Y"] ** 2).sum()) > 1.5 * peak),
        ("squared norm above 0.9 x its sampled peak", squared_norm(box_lo, box_hi, 0.9 * peak),
         tabular_net, {"f": table}, lambda v: float((v["Y"] ** 2).sum()) > 0.9 * peak),
    ]
    head = "| query | verdict | seconds | assignment checked here |" + (" nncert check |" if args.certificates else "")
    print(head + "\n|---|---|---:|---|" + ("---|" if args.certificates else ""))
    for k, (title, text, networks, nets, holds) in enumerate(cases):
        query = out / f"query_{k}.vnnlib"
        query.write_text(text)
        certificate = out / f"query_{k}.json" if args.certificates else None
        if certificate is not None:
            certificate.unlink(missing_ok=True)
        outcome = run_query(query, networks, args.timeout, certificate)
        check = "" if outcome.verdict != "sat" else ("yes" if replayed(outcome, nets, holds) else "NO")
        checked = f" {check_certificate(certificate, networks, query)} |" if certificate is not None else ""
        print(f"| {title} | {outcome.verdict} | {outcome.seconds:.1f} | {check} |{checked}", flush=True)
        if check == "NO":
            print(f"the assignment printed for {query} does not satisfy it", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
