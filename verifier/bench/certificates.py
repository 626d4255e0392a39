"""Certificates over a suite: verify with a proof, write the certificate, check it.

    python -m verifier.bench.certificates ../shared/bench/2022_acasxu/instances.csv \
        --expected ../shared/reference/expected.csv --only unsat --out /tmp/certs.csv

One process, one instance after another (like `nncert bench --isolate worker`), so the
times are verification, writing and checking, without interpreter start-up. Each row:
verdict, verify / write / check seconds, certificate size and the checker's answer.
"""
from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import torch

from verifier import Config, load_model, verify
from verifier.certificates.writer import write_certificate
from verifier.checker.verdict import check_files
from verifier.config import with_overrides
from vnnlib import load

__all__ = ["main"]


def _expected(path: str | None) -> dict[tuple[str, str, str], str]:
    if not path:
        return {}
    with open(path) as f:
        return {(r["family"], r["onnx"], r["vnnlib"]): r["expected"] for r in csv.DictReader(f)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("instances")
    ap.add_argument("--expected", default=None)
    ap.add_argument("--only", default=None, help="only instances with this expected verdict")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per verification (default: CSV's)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default="certificates.csv")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    root = Path(args.instances).parent
    expected = _expected(args.expected)
    family = root.name
    rows = []
    with open(args.instances) as f:
        todo = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    for onnx_rel, spec_rel, timeout in todo:
        if args.only and expected.get((family, onnx_rel, spec_rel)) != args.only:
            continue
        if args.limit is not None and len(rows) >= args.limit:
            break
        model_path, spec_path = root / onnx_rel, root / spec_rel
        cfg = with_overrides(Config(timeout=args.timeout or float(timeout)), ["proof=true"])
        model = load_model(model_path)
        spec = load(spec_path, model.n_inputs, model.n_outputs)
        t0 = time.monotonic()
        result = verify(model, spec, cfg)
        t1 = time.monotonic()
        row = {"onnx": onnx_rel, "vnnlib": spec_rel, "verdict": result.verdict,
               "verify_s": round(t1 - t0, 3), "write_s": "", "check_s": "", "size_kb": "", "check": ""}
        if result.verdict in ("sat", "unsat"):
            with tempfile.TemporaryDirectory() as tmp:
                cert = os.path.join(tmp, "cert.json")
                status = write_certificate(cert, model, spec_path, spec, result)
                t2 = time.monotonic()
                row["write_s"] = round(t2 - t1, 3)
                if os.path.exists(cert):
                    row["size_kb"] = round(os.path.getsize(cert) / 1024, 1)
                    checked = check_files(cert, str(model_path), str(spec_path))
                    row["check_s"] = round(time.monotonic() - t2, 3)
                    row["check"] = checked.line()
                else:
                    row["check"] = f"not written: {status}"
        rows.append(row)
        print(",".join(str(v) for v in row.values()), flush=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["onnx"])
        w.writeheader()
        w.writerows(rows)
    accepted = sum(r["check"] == "accepted" for r in rows)
    print(f"{accepted} of {len(rows)} accepted; verify {sum(r['verify_s'] for r in rows):.1f} s, "
          f"write {sum(float(r['write_s'] or 0) for r in rows):.1f} s, "
          f"check {sum(float(r['check_s'] or 0) for r in rows):.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
