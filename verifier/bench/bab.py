"""Branch-and-bound throughput: domains bounded per second, one fresh process per measurement.

Old core against new, on CPU (the default 3 + 3 instances; a worktree of the old commit):

    git worktree add /tmp/nncert_old HEAD
    python -m verifier.bench.bab --source /tmp/nncert_old --repeat 3 --out old.csv
    python -m verifier.bench.bab --repeat 3 --out new.csv
    python -m verifier.bench.bab --compare old.csv new.csv     # B / A per instance and in total: not lower?

The GPU against the CPU (the same instances; --warmup keeps CUDA's lazy start-up out):

    python -m verifier.bench.bab --device cpu --warmup 2 --out cpu.csv
    python -m verifier.bench.bab --device cuda --warmup 2 --out cuda.csv
    python -m verifier.bench.bab --compare cpu.csv cuda.csv

Other instances:

    python -m verifier.bench.bab ../shared/bench/2022_acasxu/instances.csv --pick 3
    python -m verifier.bench.bab ../shared/bench/2022_acasxu/instances.csv:91,136 --timeout 5
    python -m verifier.bench.bab --instance NET.onnx PROP.vnnlib --set bab.batch_size=1024

Without instances it runs the default set below (from ../shared/bench beside the
checkout), a minute or two in all: three mnist_fc instances that need activation split and
three ACAS Xu instances that need input split (their domains and times:
BENCHMARKS.md, "One branch-and-bound core"):

    2022_mnist_fc  256x2 prop_10_0.05, 256x4 prop_3_0.05,
                   256x4 prop_6_0.03 (a timeout: a fixed-time count)
    2022_acasxu    1_1 prop_3, 1_1 prop_4, 4_7 prop_1

The mnist_fc instances solved within the budget need few domains, hence the
fixed-budget 256x4 one.

Each measurement is a new interpreter (this one) started in the code folder (`--source
DIR`, default this checkout) with PYTHONPATH=DIR, so the code under test is imported
from DIR whatever is installed; the worker states the files it imported and a run whose
code came from elsewhere is refused. Old and new code are thus measured the same way:
compare two invocations (`--source` on a git worktree of the old commit, then without).
The worker loads the model and the spec, touches the device, then times the
`verify(model, spec, config)` call alone (no process start, imports or loading):

    domains    result.stats["domains"]: domains bounded by branch and bound (0 if absent)
    verify s   wall time of the verify() call; domains/s = domains / verify s
    search s   result.timings["bab"], the time inside the searches; search dom/s = domains / search s

The table shows, per instance, the run with the median domains/s (the lower of two);
totals are sum(domains) / sum(time) over every run, per family and overall. A timeout is still a
measurement (the domains bounded within the budget), but its verdict says so.
Instance CSV picks: `--pick N` takes the first N rows whose answer in the reference
(../shared/reference/expected.csv, `--expected`) is unsat; `CSV:ROWS` or `--rows`
takes those rows (1-based line numbers of the instances.csv, as `cat -n` numbers them).
Time with one thread (`--threads 1`, the default) on an otherwise idle core: on a
shared machine two runs of one instance differ widely, hence --repeat.
"""
from __future__ import annotations

# Only the standard library at module level: the worker part of this file runs against
# other checkouts' code (--source), which must not be imported before sys.path is set.
import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

__all__ = ["main", "worker", "measure", "DEFAULT_INSTANCES", "SCHEMA"]

SCHEMA = "nncert-bench-bab/1"
_HERE = Path(__file__).resolve()
_CODE = _HERE.parents[2]                  # this checkout: the default --source
_SHARED = _CODE.parent / "shared"         # ../shared beside the checkout, as tests/conftest.py finds it
_PACKAGES = ("verifier", "vnnlib", "models", "relaxations", "bab")

# (family folder under ../shared/bench, onnx, vnnlib), as in that family's instances.csv.
DEFAULT_INSTANCES = (
    ("2022_mnist_fc", "onnx/mnist-net_256x2.onnx", "vnnlib/prop_10_0.05.vnnlib"),
    ("2022_mnist_fc", "onnx/mnist-net_256x4.onnx", "vnnlib/prop_3_0.05.vnnlib"),
    ("2022_mnist_fc", "onnx/mnist-net_256x4.onnx", "vnnlib/prop_6_0.03.vnnlib"),
    ("2022_acasxu", "onnx/ACASXU_run2a_1_1_batch_2000.onnx", "vnnlib/prop_3.vnnlib"),
    ("2022_acasxu", "onnx/ACASXU_run2a_1_1_batch_2000.onnx", "vnnlib/prop_4.vnnlib"),
    ("2022_acasxu", "onnx/ACASXU_run2a_4_7_batch_2000.onnx", "vnnlib/prop_1.vnnlib"),
)

# The worker is this file run by path (runpy) in a fresh interpreter whose cwd and
# PYTHONPATH are the code folder; `python -c` puts only the cwd ('') on sys.path.
_BOOT = ("import runpy, sys; "
         "sys.exit(runpy.run_path(sys.argv[1], run_name='nncert_bench_bab_worker')['worker'](sys.argv[2:]))")


# ------------------------------------------------------------------------ the worker


def _worker_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m verifier.bench.bab --worker",
                                 description="One measurement; prints one JSON line (schema " + SCHEMA + ").")
    ap.add_argument("onnx")
    ap.add_argument("vnnlib")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda when torch has it)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--warmup", type=float, default=0.0,
                    help="first an untimed verify() of at most this many seconds on the same instance")
    return ap


def _config(overrides: list[str]):
    """A Config from `key=value` overrides, with whichever API the code under test has."""
    from verifier import config as cfg  # lazy: the code under test, once --source has set sys.path (see above)

    if hasattr(cfg, "load_config"):
        return cfg.load_config(None, overrides)
    return cfg.with_overrides(cfg.Config(), overrides)


def worker(argv: Optional[list[str]] = None) -> int:
    """Load, warm the device, time one verify(); print one JSON line. Uses only APIs that
    older checkouts have: verifier.model.load_model, vnnlib.load, verifier.verify.verify
    and verifier.config (load_config or Config + with_overrides)."""
    args = _worker_parser().parse_args(argv)
    t = time.perf_counter()
    # lazy: torch and the code under test, once --source has set sys.path (see above), timed as import_s
    import torch

    import vnnlib  # noqa: F401  (imported here so that import_s counts it)
    from verifier.model import load_model  # noqa: F401
    from verifier.verify import verify  # noqa: F401
    imports = time.perf_counter() - t

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)  # for loading and warming up; verify() sets its own
    try:
        record = _measure_here(args, device, imports)
    finally:
        torch.set_num_threads(threads)
    print(json.dumps(record), flush=True)
    return 0


def _measure_here(args: argparse.Namespace, device: str, imports: float) -> dict[str, Any]:
    # lazy: torch and the code under test, once --source has set sys.path (see above); worker() imported them
    import torch

    import vnnlib
    from verifier.model import load_model
    from verifier.verify import verify

    config = _config([f"timeout={args.timeout}", f"device={device}", f"threads={args.threads}", *args.set])
    t = time.perf_counter()
    model = load_model(args.onnx)
    spec = vnnlib.load(args.vnnlib, model.n_inputs, model.n_outputs)
    load = time.perf_counter() - t

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    # Touch the device (CUDA context, cuBLAS handle) so that start-up is not timed.
    a = torch.ones(64, 64, device=device)
    float((a @ a).sum())
    sync()
    if args.warmup > 0:
        verify(model, spec, _config([f"timeout={args.warmup}", f"device={device}", f"threads={args.threads}",
                                     *args.set]))
        sync()
    t = time.perf_counter()
    result = verify(model, spec, config)
    sync()
    elapsed = time.perf_counter() - t

    domains = int(result.stats.get("domains", 0) or 0)
    search = result.timings.get("bab")
    mods = {name: sys.modules[name].__file__ for name in _PACKAGES if name in sys.modules}
    return {
        "schema": SCHEMA,
        "onnx": str(args.onnx), "vnnlib": str(args.vnnlib),
        "verdict": result.verdict, "reason": result.reason, "method": result.method,
        "domains": domains,
        "verify_s": elapsed,
        "domains_per_s": domains / elapsed if elapsed > 0 else 0.0,
        "search_s": search,
        "search_domains_per_s": domains / search if search else None,
        "timings": dict(result.timings),
        "bab_stop": result.stats.get("bab_stop"), "fallback": result.stats.get("fallback"),
        "timeout": args.timeout, "warmup": args.warmup, "device": device, "threads": args.threads,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else _cpu_name(),
        "torch": torch.__version__, "python": sys.version.split()[0],
        "import_s": imports, "load_s": load, "overrides": list(args.set), "modules": mods,
    }


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


# ------------------------------------------------------------------------ the parent


def measure(onnx: Path, spec: Path, *, source: Path = _CODE, timeout: float = 30.0, device: str = "cpu",
            threads: int = 1, overrides: tuple[str, ...] = (), warmup: float = 0.0) -> dict[str, Any]:
    """One measurement in a fresh interpreter running `source`'s code; the worker's record,
    or one with verdict 'error' and the cause when it failed."""
    source = Path(source).resolve()
    cmd = [sys.executable, "-c", _BOOT, str(_HERE), str(Path(onnx).resolve()), str(Path(spec).resolve()),
           "--timeout", str(timeout), "--device", device, "--threads", str(threads), "--warmup", str(warmup)]
    for o in overrides:
        cmd += ["--set", o]
    env = dict(os.environ, PYTHONPATH=str(source), PYTHONDONTWRITEBYTECODE="1")
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    t = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=source, env=env, capture_output=True, text=True,
                              timeout=3 * (timeout + warmup) + 120)
    except subprocess.TimeoutExpired:
        return {"schema": SCHEMA, "verdict": "error", "reason": "the worker did not finish", "domains": 0,
                "verify_s": 0.0, "domains_per_s": 0.0, "process_s": time.monotonic() - t}
    record = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("schema") == SCHEMA:
                record = data
                break
    if record is None:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"schema": SCHEMA, "verdict": "error", "reason": tail[0][-200:], "domains": 0, "verify_s": 0.0,
                "domains_per_s": 0.0, "process_s": time.monotonic() - t}
    record["process_s"] = time.monotonic() - t
    stray = {k: v for k, v in record.get("modules", {}).items()
             if not v or not Path(v).resolve().is_relative_to(source)}
    if stray:  # an installed copy shadowed the code under test: the numbers would be about other code
        record.update(verdict="error", reason=f"code not from {source}: {stray}")
    return record


def _git(source: Path) -> str:
    """The commit of the code folder, '-dirty' when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (head or "?") + ("-dirty" if dirty else "")


def _expected(path: Optional[Path]) -> dict[tuple[str, str, str], str]:
    if path is None or not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {(r["family"].strip(), r["onnx"].strip(), r["vnnlib"].strip()): r["expected"].strip()
                for r in csv.DictReader(f)}


def _rows_of(text: str) -> list[int]:
    try:
        rows = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"rows must be 1-based line numbers like 3,17,42, got '{text}'") from None
    if any(r < 1 for r in rows):
        raise SystemExit(f"rows are 1-based line numbers, got '{text}'")
    return rows


def _from_csv(arg: str, pick: int, rows: Optional[list[int]], expected_path: Optional[Path]
              ) -> list[tuple[str, Path, Path]]:
    head, _, tail = arg.rpartition(":")
    if head and tail.replace(",", "").isdigit():
        arg, rows = head, _rows_of(tail)
    path = Path(arg)
    if path.is_dir():
        path = path / "instances.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: no such instances CSV")
    family = path.parent.name
    with open(path, newline="") as f:
        lines = [(i, r) for i, r in enumerate(csv.reader(f), 1) if len(r) >= 2 and r[0].strip()]
    if rows:
        chosen = {i: r for i, r in lines}
        missing = [i for i in rows if i not in chosen]
        if missing:
            raise SystemExit(f"{path}: no instance on line(s) {missing}")
        picked = [chosen[i] for i in rows]
    else:
        ref = _expected(expected_path if expected_path is not None else path.parents[1].parent / "reference" /
                        "expected.csv")
        if ref:
            picked = [r for _, r in lines if ref.get((family, r[0].strip(), r[1].strip())) == "unsat"][:pick]
        else:
            print(f"(no reference answers for {path}: the first {pick} rows)", file=sys.stderr)
            picked = [r for _, r in lines][:pick]
    return [(family, path.parent / r[0].strip(), path.parent / r[1].strip()) for r in picked]


def _name(family: str, onnx: Path, spec: Path) -> str:
    def bare(p: Path) -> str:
        name = p.name
        for suffix in (".gz", ".onnx", ".vnnlib"):
            name = name.removesuffix(suffix)
        return name

    stem = bare(onnx).replace("ACASXU_run2a_", "").replace("_batch_2000", "").replace("mnist-net_", "")
    short = family.split("_", 1)[-1] if family else ""
    return f"{short + ' ' if short else ''}{stem} {bare(spec)}"


def _fmt(x: Optional[float], digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


_COLUMNS = ["instance", "family", "repeat", "verdict", "domains", "verify_s", "domains_per_s", "search_s",
            "search_domains_per_s", "method", "reason", "device", "device_name", "threads", "timeout", "code",
            "source", "overrides", "onnx", "vnnlib", "load_s", "process_s", "torch"]


def _summary(rows: list[dict]) -> list[str]:
    """Per instance (median over repeats by domains/s), then totals per family and overall."""
    lines = ["| instance | verdict | domains | verify (s) | domains/s | search (s) | search domains/s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    by_inst: dict[str, list[dict]] = {}
    for r in rows:
        by_inst.setdefault(r["instance"], []).append(r)
    for name, runs in by_inst.items():
        runs = sorted(runs, key=lambda r: r["domains_per_s"])
        r = runs[(len(runs) - 1) // 2]
        verdict = r["verdict"] if len(runs) == 1 else "/".join(sorted({x["verdict"] for x in runs}))
        lines.append(f"| {name} | {verdict} | {r['domains']:,} | {r['verify_s']:.2f} | {_fmt(r['domains_per_s'])} | "
                     f"{_fmt(r.get('search_s'), 2)} | {_fmt(r.get('search_domains_per_s'))} |")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r.get("family") or "-", []).append(r)
    if len(groups) > 1:
        groups["**all**"] = rows
    for fam, runs in groups.items():
        lines.append(_total_line(f"**total** {fam}" if fam != "**all**" else "**total, all**", runs))
    return lines


def _total_line(label: str, runs: list[dict]) -> str:
    ok = [r for r in runs if r["verdict"] != "error"]
    dom = sum(r["domains"] for r in ok)
    sec = sum(r["verify_s"] for r in ok)
    searched = [r for r in ok if r.get("search_s")]
    sdom, ssec = sum(r["domains"] for r in searched), sum(r["search_s"] for r in searched)
    verdicts = ", ".join(f"{sum(r['verdict'] == v for r in runs)} {v}" for v in
                         sorted({r["verdict"] for r in runs}))
    return (f"| {label} | {verdicts} | {dom:,} | {sec:.2f} | {_fmt(dom / sec if sec else None)} | "
            f"{_fmt(ssec if searched else None, 2)} | {_fmt(sdom / ssec if ssec else None)} |")


def _read_csv(path: Path) -> list[dict]:
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for k in ("domains",):
                r[k] = int(r[k] or 0)
            for k in ("verify_s", "domains_per_s", "search_s", "search_domains_per_s"):
                r[k] = float(r[k]) if r.get(k) not in (None, "", "None") else None
            out.append(r)
    return out


def compare(a_path: Path, b_path: Path) -> list[str]:
    """Per instance domains/s of two result CSVs (median over repeats), B / A, and the totals."""
    a_rows, b_rows = _read_csv(a_path), _read_csv(b_path)

    def med(rows: list[dict]) -> dict[str, dict]:
        out: dict[str, list[dict]] = {}
        for r in rows:  # an instance is its two files, whatever folder they were read from
            if r["verdict"] != "error":
                key = f"{Path(r['onnx']).name} {Path(r['vnnlib']).name}" if r.get("onnx") else r["instance"]
                out.setdefault(key, []).append(r)
        return {k: sorted(v, key=lambda r: r["domains_per_s"])[(len(v) - 1) // 2] for k, v in out.items()}

    a, b = med(a_rows), med(b_rows)
    la = f"{a_path.stem} ({a_rows[0].get('code', '?')}, {a_rows[0].get('device', '?')})" if a_rows else a_path.stem
    lb = f"{b_path.stem} ({b_rows[0].get('code', '?')}, {b_rows[0].get('device', '?')})" if b_rows else b_path.stem
    lines = [f"A = {la}, B = {lb}", "",
             "| instance | A verdict | A domains | A domains/s | B verdict | B domains | B domains/s | B / A "
             "| B / A, search domains/s |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|"]

    def ratio(y: Optional[float], x: Optional[float]) -> Optional[float]:
        return y / x if x and y is not None else None

    both = [k for k in a if k in b]
    for k in both:
        x, y = a[k], b[k]
        lines.append(f"| {y['instance']} | {x['verdict']} | {x['domains']:,} | {_fmt(x['domains_per_s'])} | "
                     f"{y['verdict']} | {y['domains']:,} | {_fmt(y['domains_per_s'])} | "
                     f"{_fmt(ratio(y['domains_per_s'], x['domains_per_s']), 2)} | "
                     f"{_fmt(ratio(y['search_domains_per_s'], x['search_domains_per_s']), 2)} |")
    families = sorted({a[k].get("family", "") for k in both})
    for fam in families + ["**all**"]:
        keys = [k for k in both if fam == "**all**" or a[k].get("family", "") == fam]
        if not keys or (fam == "**all**" and len(families) < 2):
            continue
        da, ta = sum(a[k]["domains"] for k in keys), sum(a[k]["verify_s"] for k in keys)
        db, tb = sum(b[k]["domains"] for k in keys), sum(b[k]["verify_s"] for k in keys)
        ra, rb = (da / ta if ta else None), (db / tb if tb else None)
        searched = [k for k in keys if a[k]["search_s"] and b[k]["search_s"]]
        sa = sum(a[k]["domains"] for k in searched) / (sum(a[k]["search_s"] for k in searched) or 1)
        sb = sum(b[k]["domains"] for k in searched) / (sum(b[k]["search_s"] for k in searched) or 1)
        label = "**total, all**" if fam == "**all**" else f"**total** {fam}"
        lines.append(f"| {label} | | {da:,} | {_fmt(ra)} | | {db:,} | {_fmt(rb)} | {_fmt(ratio(rb, ra), 2)} | "
                     f"{_fmt(ratio(sb, sa) if searched else None, 2)} |")
    only = sorted((a.get(k) or b[k])["instance"] for k in set(a) ^ set(b))
    if only:
        lines.append(f"\n(in one file only: {', '.join(only)})")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return worker(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m verifier.bench.bab", description=__doc__.split("\n\n")[0],
                                 epilog="The method and the default instances: the module's docstring "
                                        "(python -c 'import verifier.bench.bab as b; print(b.__doc__)').")
    ap.add_argument("csv", nargs="*", help="a family's instances.csv (or its folder), optionally CSV:ROWS "
                                           "(1-based line numbers); none: the default 3 + 3 instances")
    ap.add_argument("--instance", nargs=2, action="append", default=[], metavar=("ONNX", "VNNLIB"),
                    help="an explicit instance (repeatable)")
    ap.add_argument("--pick", type=int, default=3, help="per CSV: the first N rows whose reference answer is unsat")
    ap.add_argument("--rows", default=None, help="per CSV: these 1-based line numbers instead of --pick")
    ap.add_argument("--expected", type=Path, default=None,
                    help="reference answers (default: ../../reference/expected.csv from each CSV)")
    ap.add_argument("--bench-root", type=Path, default=_SHARED / "bench",
                    help="where the default instances' families are (default: ../shared/bench)")
    ap.add_argument("--timeout", type=float, default=30.0, help="verify() budget per instance (default 30 s)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--repeat", type=int, default=1, help="measurements per instance, each a fresh process")
    ap.add_argument("--warmup", type=float, default=0.0,
                    help="an untimed verify() of at most this many seconds first, in the same process (for cuda)")
    ap.add_argument("--source", type=Path, default=_CODE,
                    help="measure the nncert code in this folder (e.g. a git worktree of an old commit)")
    ap.add_argument("--out", type=Path, default=None, help="CSV of every measurement")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A.csv", "B.csv"),
                    help="no run: print domains/s of two earlier --out files side by side (B / A)")
    args = ap.parse_args(argv)
    if args.compare:
        print("\n".join(compare(*args.compare)))
        return 0
    source = args.source.resolve()
    if not (source / "verifier" / "verify.py").is_file():
        ap.error(f"--source {source}: no verifier/verify.py there")
    rows = _rows_of(args.rows) if args.rows else None
    instances: list[tuple[str, Path, Path]] = []
    for arg in args.csv:
        instances += _from_csv(arg, args.pick, rows, args.expected)
    for onnx, spec in args.instance:  # family: the folder above onnx/, as in the VNN-COMP layout
        onnx, spec = Path(onnx), Path(spec)
        up = onnx.resolve().parent
        instances.append((up.parent.name if up.name == "onnx" else "", onnx, spec))
    if not args.csv and not args.instance:
        instances = [(fam, args.bench_root / fam / o, args.bench_root / fam / v) for fam, o, v in DEFAULT_INSTANCES]
    for _, onnx, spec in instances:
        for p in (onnx, spec):
            if not p.is_file():
                ap.error(f"{p}: no such file")
    code = _git(source)
    print(f"code {source} ({code}); device {args.device}, {args.threads} thread(s), timeout {args.timeout:g} s"
          + (f", --set {' '.join(args.set)}" if args.set else "") + f"; {len(instances)} instance(s) "
          f"x {args.repeat}", flush=True)
    results: list[dict] = []
    for family, onnx, spec in instances:
        name = _name(family, onnx, spec)
        for rep in range(args.repeat):
            r = measure(onnx, spec, source=source, timeout=args.timeout, device=args.device, threads=args.threads,
                        overrides=tuple(args.set), warmup=args.warmup)
            r.update(instance=name, family=family, repeat=rep, code=code, source=str(source),
                     overrides=" ".join(args.set), onnx=str(onnx), vnnlib=str(spec))
            results.append(r)
            print(f"  {name}: {r['verdict']}, {r['domains']:,} domains in {r['verify_s']:.2f} s = "
                  f"{_fmt(r['domains_per_s'])} domains/s" + (f" ({r['reason']})" if r["verdict"] == "error" else ""),
                  flush=True)
    device_names = sorted({r["device_name"] for r in results if r.get("device_name")})
    print(f"\n{'; '.join(device_names) or 'no measurement'}\n")
    print("\n".join(_summary(results)))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=_COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in results:
                w.writerow({k: r.get(k) for k in _COLUMNS})
        print(f"\nwrote {args.out}")
    return 1 if any(r["verdict"] == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
