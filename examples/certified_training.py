"""Certified training with nncert, end to end on scikit-learn's digits (a few CPU minutes).

Six 64-128-128-10 classifiers are trained on the bundled 8x8 digits (pixels in [0, 1]):

  (a) normally (cross-entropy),
  (b) with IBP (`verifier.certified_loss(method="ibp")`),
  (c) with CROWN-IBP (`method="crown-ibp"`, beta from 1 to 0 during the ramp),
  (d) with SABR (`method="sabr"`: IBP over a small box around a PGD point),
  (e) with MTL-IBP (`method="mtl-ibp"`: IBP's loss mixed with an adversarial one),
  (f) as a Lipschitz-by-construction SandwichNet (`models.lipschitz_layers`), trained
      with a Lipschitz margin: a gap of sqrt(2) L r_2 between the true logit and the
      others certifies every input within l2 distance r_2 (Tsuzuku et al. 2018).

Each is exported to ONNX (the SandwichNet through `to_plain()`), then every test image
is checked with the verifier on l-inf robustness specs written by
`vnnlib.robustness_spec`/`write_vnnlib` at two radii (by default in-process through
`verifier.verify`, exactly what `nncert verify` runs; `--cli` runs the `nncert verify`
command itself per spec, which costs an interpreter start each); a 40-step PGD at each
radius gives the PGD-robust share, and a verified image broken by it stops the run. For (f) the
Lipschitz bound of the plain weights gives a second, independent certificate: an
l-inf ball of radius r lies in the l2 ball of radius sqrt(64) r, so a margin above
sqrt(2) L sqrt(64) r certifies it. The table goes to certified_training.md in `--out`
and a plot of verified accuracy against the radius (from CROWN bounds, which `verify`
tries first) to certified_training.png beside it when matplotlib is installed (it is
optional: without it the plot is skipped with a one-line note). `--doc` writes both to
docs/ instead, replacing the tracked copies.

    python examples/certified_training.py            # full run, results in out/certified_training/
    python examples/certified_training.py --quick    # fewer epochs and images
    python examples/certified_training.py --doc      # regenerate docs/certified_training.*
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import verifier
import vnnlib
from models.lipschitz_layers import SandwichNet
from verifier import heap
from relaxations.lipschitz.network import FeedForward
from verifier.config import load_config
from verifier.lipschitz import lipschitz_of_network
from verifier.pytorch.training import CertifiedOptions, EpsilonSchedule, adversarial_points, certified_loss

ROOT = Path(__file__).resolve().parent.parent
N_IN, N_OUT = 64, 10


def load_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # lazy: scikit-learn is the demo extra (pip install nncert[demo]); only loading the digits needs it
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    train, test = order[:1400], order[1400:]
    return x[train], y[train], x[test], y[test]


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(N_IN, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, N_OUT))


def batches(n: int, size: int):
    perm = torch.randperm(n)
    for i in range(0, n, size):
        yield perm[i:i + size]


def train_normal(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = mlp()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(epochs):
        for idx in batches(len(x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def train_certified(x: torch.Tensor, y: torch.Tensor, method: str, eps: float, epochs: int, seed: int,
                    log: bool = True) -> nn.Module:
    """IBP or CROWN-IBP with warm-up, a smooth eps ramp and a natural-loss weight 1 -> 0."""
    torch.manual_seed(seed)
    net = mlp()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    warmup, ramp = max(1, epochs // 20), max(1, epochs // 2)
    schedule = EpsilonSchedule(eps, warmup, ramp, kind="smooth")
    lr_drop = torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.8 * epochs), int(0.92 * epochs)], 0.2)
    steps = math.ceil(len(x) / 128)
    for epoch in range(epochs):
        for k, idx in enumerate(batches(len(x), 128)):
            t = epoch + k / steps
            progress = min(max((t - warmup) / ramp, 0.0), 1.0)
            loss, info = certified_loss(net, x[idx], y[idx], schedule(t), method=method,
                                        beta=1.0 - progress, kappa=1.0 - progress)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            opt.step()
        lr_drop.step()
        if log and (epoch + 1) % max(1, epochs // 5) == 0:
            _, info = certified_loss(net, x[:400], y[:400], eps, method="ibp",
                                     options=CertifiedOptions(tightness=True))
            print(f"    {method} epoch {epoch + 1}/{epochs}: eps {schedule(epoch + 1):.3f}, train IBP "
                  f"verified {info.verified_accuracy:.2f} at {eps}, clean {info.clean_accuracy:.2f}, "
                  f"IBP tightness {info.tightness:.3f}")
    return net.eval()


def train_lipschitz(x: torch.Tensor, y: torch.Tensor, eps: float, epochs: int, seed: int) -> SandwichNet:
    """A 1-Lipschitz (l2) SandwichNet; the margin offset targets the l2 ball around the l-inf one."""
    torch.manual_seed(seed)
    net = SandwichNet(N_IN, [128, 128], N_OUT, gamma=1.0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    offset = math.sqrt(2.0) * net.lipschitz_bound("2") * eps * math.sqrt(N_IN)
    temperature = 8.0  # a 1-Lipschitz net has small logits; scale them for the cross-entropy
    for _ in range(epochs):
        for idx in batches(len(x), 128):
            logits = net(x[idx])
            shifted = logits + offset * (1.0 - nn.functional.one_hot(y[idx], N_OUT))
            opt.zero_grad()
            nn.functional.cross_entropy(temperature * shifted, y[idx]).backward()
            opt.step()
    return net.eval()


def export(net: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), torch.zeros(1, N_IN), str(path), input_names=["x"],
                          output_names=["logits"], opset_version=13, dynamo=False)


def verify_specs(onnx_path: Path, xs: torch.Tensor, ys: torch.Tensor, radius: float, out: Path,
                 timeout: float, cli: bool) -> list[str]:
    """The verdict of `nncert verify` on the robustness spec of every (x, y) at `radius`."""
    verdicts: list[str] = []
    model = verifier.load_model(onnx_path) if not cli else None
    config = load_config(None, [f"timeout={timeout}"])
    for i, (x0, label) in enumerate(zip(xs.numpy(), ys.tolist())):
        spec = vnnlib.robustness_spec(x0, radius, label, N_OUT, lower_clip=0.0, upper_clip=1.0)
        spec_path = out / f"digit{i}_r{radius}.vnnlib"
        vnnlib.write_vnnlib(spec_path, spec)
        if cli:
            run = subprocess.run([sys.executable, "-m", "verifier.cli", "verify", str(onnx_path), str(spec_path),
                                  "--timeout", str(timeout)], capture_output=True, text=True, cwd=ROOT)
            verdict = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "error"
        else:
            start = time.monotonic()
            verdict = verifier.verify(model, vnnlib.load(spec_path, N_IN, N_OUT), config, start=start).verdict
        verdicts.append(verdict)
    return verdicts


def crown_verified(onnx_path: Path, xs: torch.Tensor, ys: torch.Tensor, radius: float) -> float:
    """Fraction of the images whose every margin has a positive CROWN lower bound at `radius`."""
    model = verifier.load_model(onnx_path)
    C = np.stack([np.eye(N_OUT)[[y] * (N_OUT - 1)] - np.eye(N_OUT)[[j for j in range(N_OUT) if j != y]]
                  for y in ys.tolist()])
    lo = (xs - radius).clamp(0, 1).numpy()[:, None, :]
    hi = (xs + radius).clamp(0, 1).numpy()[:, None, :]
    lower, _ = verifier.bounds(model, lo, hi, method="crown", C=C)
    return float((lower > 0).all(1).float().mean())


def pgd_robust(net: nn.Module, xs: torch.Tensor, ys: torch.Tensor, radius: float) -> torch.Tensor:
    """Per image: still classified right after a 40-step PGD within `radius` (clipped to [0, 1])."""
    adv = adversarial_points(net, xs, ys, radius, CertifiedOptions(attack_steps=40, attack_step=0.1))
    with torch.no_grad():
        return net(adv).argmax(1) == ys


def lipschitz_margins(plain: nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> np.ndarray:
    """Margin of the true class over the runner-up (negative when misclassified)."""
    with torch.no_grad():
        logits = plain(xs)
    true = logits.gather(1, ys[:, None]).squeeze(1)
    other = logits.scatter(1, ys[:, None], -math.inf).max(1).values
    return (true - other).numpy()


def plain_lipschitz(net: SandwichNet) -> tuple[float, str]:
    """`lipschitz_of_network` (LipSDP) on the plain weights, with consecutive Linears merged."""
    layers = list(net.to_plain(torch.float64))
    weights, biases, cur_w, cur_b = [], [], None, None
    for m in layers:
        if isinstance(m, nn.Linear):
            w = m.weight.detach().numpy()
            b = m.bias.detach().numpy() if m.bias is not None else np.zeros(w.shape[0])
            cur_w, cur_b = (w, b) if cur_w is None else (w @ cur_w, w @ cur_b + b)
        elif isinstance(m, nn.ReLU):
            weights.append(cur_w)
            biases.append(cur_b)
            cur_w, cur_b = None, None
        else:
            raise TypeError(f"unexpected layer {type(m).__name__}")
    weights.append(cur_w)
    biases.append(cur_b)
    ff = FeedForward(tuple(weights), tuple(biases), "relu")
    try:
        res = lipschitz_of_network(ff, norm="2", method="sdp-layerwise")
    except Exception as exc:  # the solver is optional in spirit: fall back to the product of norms
        print(f"    LipSDP failed ({type(exc).__name__}: {exc}); using the naive bound")
        res = lipschitz_of_network(ff, norm="2", method="naive")
    return res.value, res.method


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/certified_training")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--count", type=int, default=50, help="test images verified per radius")
    parser.add_argument("--radii", type=float, nargs=2, default=[0.05, 0.1])
    parser.add_argument("--train-eps", type=float, default=0.12)
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per nncert verify call")
    parser.add_argument("--cli", action="store_true", help="run the `nncert verify` command per spec")
    parser.add_argument("--quick", action="store_true", help="20 epochs, 20 images")
    parser.add_argument("--doc", action="store_true",
                        help="write the table and plot to docs/certified_training.* (tracked files) "
                             "instead of --out")
    parser.add_argument("--no-doc", action="store_true", help=argparse.SUPPRESS)  # the old default; now a no-op
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.count = 20, 20
    torch.set_num_threads(1)
    heap.keep_freed()   # each step's bound tensors reuse the last step's freed blocks (glibc; README)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = load_data(args.seed)
    xs, ys = xte[:args.count], yte[:args.count]

    nets: dict[str, nn.Module] = {}
    times: dict[str, float] = {}
    t = time.time()
    nets["normal"] = train_normal(xtr, ytr, args.epochs, args.seed)
    times["normal"] = time.time() - t
    for method in ("ibp", "crown-ibp", "sabr", "mtl-ibp"):
        print(f"training {method} (eps {args.train_eps}, {args.epochs} epochs)")
        t = time.time()
        nets[method] = train_certified(xtr, ytr, method, args.train_eps, args.epochs, args.seed)
        times[method] = time.time() - t
    t = time.time()
    sandwich = train_lipschitz(xtr, ytr, args.train_eps, args.epochs, args.seed)
    nets["sandwich (Lipschitz)"] = sandwich.to_plain().eval()
    times["sandwich (Lipschitz)"] = time.time() - t

    rows = []
    all_verdicts: dict[str, list[list[str]]] = {}
    curve_radii = [round(0.02 * k, 2) for k in range(9)]
    curves: dict[str, list[float]] = {}
    for name, net in nets.items():
        path = out / f"digits_{name.split()[0]}.onnx"
        export(net, path)
        with torch.no_grad():
            clean = float((net(xte).argmax(1) == yte).float().mean())
        verified = []
        all_verdicts[name] = []
        for r in args.radii:
            t = time.time()
            verdicts = verify_specs(path, xs, ys, r, out, args.timeout, args.cli)
            all_verdicts[name].append(verdicts)
            counts = {v: verdicts.count(v) for v in sorted(set(verdicts))}
            verified.append(counts.get("unsat", 0) / len(xs))
            print(f"  {name:<22} r={r}: {counts} ({time.time() - t:.1f} s)")
        robust = [pgd_robust(net, xs, ys, r) for r in args.radii]
        # Sound verdicts and a working attack never cross: a verified image is never broken.
        for r, verdicts, ok in zip(args.radii, all_verdicts[name], robust):
            broken = [i for i, (v, o) in enumerate(zip(verdicts, ok)) if v == "unsat" and not o]
            if broken:
                print(f"INCONSISTENT: {name} images {broken} at r={r} are verified but broken by PGD")
                return 1
        rows.append((name, clean, verified, [float(o.float().mean()) for o in robust], times[name]))
        curves[name] = [crown_verified(path, xs, ys, r) for r in curve_radii]

    L_construct = sandwich.lipschitz_bound("2")
    L_checked = sandwich.certified_lipschitz_bound("2")
    L_sdp, sdp_method = plain_lipschitz(sandwich)
    L = min(L_checked, L_sdp)
    margins = lipschitz_margins(nets["sandwich (Lipschitz)"], xs, ys)
    lip_rows = [float((margins > math.sqrt(2.0) * L * math.sqrt(N_IN) * r).mean()) for r in args.radii]
    # Two sound certificates must never contradict: a Lipschitz-certified image has no
    # counterexample, so `verify` must not have answered `sat` for it.
    for r, verdicts in zip(args.radii, all_verdicts["sandwich (Lipschitz)"]):
        certified = margins > math.sqrt(2.0) * L * math.sqrt(N_IN) * r
        clash = [i for i, (c, v) in enumerate(zip(certified, verdicts)) if c and v == "sat"]
        if clash:
            print(f"INCONSISTENT: images {clash} at r={r} are Lipschitz-certified but `verify` says sat")
            return 1
    curves["sandwich, Lipschitz margin"] = [float((margins > math.sqrt(2.0) * L * math.sqrt(N_IN) * r).mean())
                                            for r in curve_radii]

    header = (f"| model | clean accuracy (all {len(xte)} test images) | verified r={args.radii[0]} "
              f"| verified r={args.radii[1]} | PGD-robust r={args.radii[0]} | PGD-robust r={args.radii[1]} "
              f"| training time |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for name, clean, verified, robust, secs in rows:
        lines.append(f"| {name} | {clean:.3f} | {verified[0]:.2f} | {verified[1]:.2f} | {robust[0]:.2f} "
                     f"| {robust[1]:.2f} | {secs:.0f} s |")
    lines.append(f"| sandwich, Lipschitz margin (L={L:.4f}) | (same net) | {lip_rows[0]:.2f} | {lip_rows[1]:.2f} "
                 f"| | | |")
    table = "\n".join(lines)
    lip_note = (f"SandwichNet Lipschitz bound (l2): {L_construct:g} by construction, {L_checked:.6f} re-derived "
                f"in float64 from the plain weights, {L_sdp:.6f} from `lipschitz_of_network` ({sdp_method}) "
                f"on the plain weights; the margin certificate uses {L:.6f}.")
    print("\n" + table + "\n\n" + lip_note)
    write_doc(args, ROOT / "docs" if args.doc else out, table, lip_note, curve_radii, curves)
    return 0


def write_doc(args: argparse.Namespace, docs: Path, table: str, lip_note: str, radii: list[float],
              curves: dict[str, list[float]]) -> None:
    """certified_training.md (and .png when matplotlib is installed) in `docs`."""
    docs.mkdir(parents=True, exist_ok=True)
    how = "`nncert verify` (the CLI, one process per spec)" if args.cli else \
        "`verifier.verify` in-process, the function `nncert verify` runs, with the same default config"
    curve_lines = ["| model | " + " | ".join(f"{r:.2f}" for r in radii) + " |",
                   "|---|" + "---|" * len(radii)]
    for name, values in curves.items():
        curve_lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    try:
        import matplotlib  # lazy: matplotlib is optional (the demo extra); without it no plot is drawn
    except ImportError:
        matplotlib = None
        print("matplotlib is not installed: no plot drawn (pip install matplotlib for one)")
        plot_line = "\n(matplotlib was not installed, so no plot was drawn.)\n"
    if matplotlib is not None:
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # lazy: optional, as above; after use("Agg")

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, values in curves.items():
            ax.plot(radii, values, marker="o", label=name)
        ax.set_xlabel("l-inf radius")
        ax.set_ylabel(f"verified accuracy ({args.count} test images)")
        ax.set_title("digits: verified accuracy vs radius (CROWN bounds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(docs / "certified_training.png", dpi=120)
        plt.close(fig)
        plot_line = "\n![verified accuracy vs radius](certified_training.png)\n"
    cmd = "python examples/certified_training.py" + (" --cli" if args.cli else "") + (" --doc" if args.doc else "")
    text = f"""# Certified training on digits

Made by `{cmd}` (seed {args.seed}, {args.epochs} epochs, train eps {args.train_eps},
{args.count} test images, timeout {args.timeout:g} s per spec, CPU, one thread).

Six 64-128-128-10 classifiers: normal training, IBP, CROWN-IBP, SABR and MTL-IBP through
`verifier.certified_loss` (the bounds of `relaxations/`, the code that verifies them
afterwards), and a 1-Lipschitz SandwichNet trained with a Lipschitz margin. Each is
exported to ONNX and every l-inf robustness spec (`vnnlib.robustness_spec`, clipped
to [0, 1]) is decided by {how}. "verified" is the fraction of the {args.count} images
whose verdict is `unsat` (robust). The last row certifies the SandwichNet from its
Lipschitz bound alone: margin > sqrt(2) * L * sqrt(64) * r.

{table}

{lip_note}

Verified accuracy against the radius, from CROWN bounds on the exported models (what
`nncert verify` tries first; it can only prove more) and from the Lipschitz margin:

{chr(10).join(curve_lines)}
{plot_line}"""
    (docs / "certified_training.md").write_text(text)
    print(f"wrote {docs / 'certified_training.md'}")


if __name__ == "__main__":
    sys.exit(main())
