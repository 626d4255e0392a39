"""Fraction of digits test points certified by IBP, box (fold=False) vs folded, same weights.

    .venv/bin/python docs/ibp_fold_check.py 20      # epochs of training (BENCHMARKS.md §7)
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import torch  # noqa: E402
from certified_training import load_data, train_normal, train_certified
from relaxations import BoundOptions, IntervalBounds, compute_bounds
from verifier.pytorch.training import margin_matrix, module_graph

torch.manual_seed(0)
torch.set_num_threads(2)
xtr, ytr, xte, yte = load_data(0)
epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
t0 = time.time()
nets = {"normal": train_normal(xtr, ytr, epochs, 0),
        "ibp": train_certified(xtr, ytr, "ibp", 0.1, epochs, 0, log=False)}
print(f"trained in {time.time() - t0:.0f} s ({epochs} epochs), test set {len(xte)}")
for name, net in nets.items():
    for p in net.parameters():
        p.requires_grad_(False)
    graph = module_graph(net, (1, 64))
    clean = (net(xte).argmax(1) == yte).float().mean().item()
    C = margin_matrix(yte, 10)
    for eps in (0.005, 0.01, 0.02, 0.05, 0.1):
        box = IntervalBounds((xte - eps).clamp(0, 1).unsqueeze(1), (xte + eps).clamp(0, 1).unsqueeze(1))
        row = []
        for label, opts in (("box", BoundOptions(method="ibp", fold=False)), ("folded", BoundOptions(method="ibp")),
                            ("crown", BoundOptions(method="crown"))):
            lb = compute_bounds(graph, box, C, opts, want_upper=False).lower
            row.append(f"{label} {(lb > 0).all(1).float().mean().item():.3f}")
        print(f"{name:6s} clean {clean:.3f} eps {eps:<5}: " + ", ".join(row))
