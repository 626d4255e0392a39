"""Independent checker of verdict certificates (`nncert check`).

It trusts: numpy, the `onnx` package's protobuf reading, onnxruntime (to replay a
counterexample), our VNN-LIB parser (`vnnlib`, which has no torch), and the few
hundred lines in this folder. It does not import `relaxations`, `bab`, `models` or
torch, and it never takes a number from the certificate on trust: bounds are
re-derived in float64 with outward rounding, the leaves' tiling of each root region is
checked exactly, and claimed bounds are only compared (a claim above what can be
re-derived is a rejection: a producer that overstates its bounds is broken).

The file bytes are hashed and parsed from the same read, so the certificate is checked
against exactly the files whose hashes it names. See docs/certificates.md.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import math
import sys
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

import vnnlib
from verifier.checker.bounds64 import interval_table, row_lower_bounds
from verifier.checker.onnx_net import Network, Unsupported, read_network
from verifier.checker.splits import dense_alphas, leaf_bounds, read_alphas, read_leaves, tree_error
from verifier.checker.tiling import tiling_error
from vnnlib.query import parse_query
from vnnlib.standard import text_version

__all__ = ["FORMAT", "VERSION", "LEAF_CHUNK", "CLAIM_TOLERANCE", "CheckResult", "CheckInputError", "check_certificate",
           "check_files", "check_verdict", "decode_array", "encode_array", "io_sizes", "load_certificate", "model_bytes",
           "read_file", "run_onnx", "spec_rows", "spec_text"]

FORMAT = "nncert-certificate"
VERSION = 1
# A claimed row bound may exceed the re-derived one by this much (relative to 1 + |bound|):
# the producer computes in float32 with other rounding; a larger excess means a false claim.
CLAIM_TOLERANCE = 1e-4
# Leaves bounded at once (memory: chunk x rows x widest layer). CROWN tightens an
# intermediate neuron when it is unstable in some leaf of the chunk, so writers compute
# their claims in the same chunks.
LEAF_CHUNK = _CHUNK = 256
_SPLIT_ELEMENTS = 20_000_000  # activation-split chunks: leaves x rows x widest layer at most this


class CheckInputError(ValueError):
    """A file cannot be read or parsed (not a rejection: the command's input is bad)."""


@dataclass(frozen=True)
class CheckResult:
    """accepted, and the first reason for a rejection; `info` has figures for a report."""

    accepted: bool
    reason: str = ""
    info: Optional[dict] = None

    def line(self) -> str:
        if not self.accepted:
            return f"rejected: {self.reason}"
        ball = (self.info or {}).get("l2_ball")
        return "accepted" if ball is None else \
            f"accepted (over the spec's region cut by the l2 ball of radius {ball['radius']!r} the certificate names)"


class _Reject(Exception):
    pass


def encode_array(a: np.ndarray, inline_max: int = 256) -> Any:
    """Nested lists for small arrays; {"dtype", "shape", "base64"} of float64 LE bytes for big ones."""
    a = np.asarray(a, dtype=np.float64)
    if a.size <= inline_max and np.isfinite(a).all():
        return a.tolist()
    return {"dtype": "float64", "shape": list(a.shape),
            "base64": base64.b64encode(a.astype("<f8").tobytes()).decode("ascii")}


def decode_array(v: Any, what: str) -> np.ndarray:
    """The float64 array stored by `encode_array` (a rejection if malformed)."""
    try:
        if isinstance(v, dict):
            if v.get("dtype") != "float64":
                raise ValueError("dtype must be float64")
            shape = tuple(int(s) for s in v["shape"])
            a = np.frombuffer(base64.b64decode(v["base64"], validate=True), dtype="<f8")
            return a.reshape(shape).astype(np.float64)
        a = np.array(v, dtype=np.float64)
        if a.dtype != np.float64:
            raise ValueError("not numbers")
        return a
    except (ValueError, TypeError, KeyError, OverflowError) as exc:  # OverflowError: a JSON int past float64
        raise _Reject(f"{what} is not a valid array ({exc})") from None


def io_sizes(data: bytes) -> tuple[tuple[int, ...], int, int, int]:
    """(input shape, number of inputs, number of outputs, input element type) of an ONNX model."""
    import onnx  # lazy: onnx (about 1 s) only where a model is read, not when the checker is imported

    try:
        g = onnx.load_from_string(data).graph
    except Exception as exc:  # the protobuf parser raises several types
        raise CheckInputError(f"not a valid ONNX model ({type(exc).__name__})") from None
    init = {t.name for t in g.initializer}
    ins = [i for i in g.input if i.name not in init]
    if len(ins) != 1 or len(g.output) != 1:
        raise CheckInputError("the model must have exactly one input and one output")

    def dims(v) -> tuple[int, ...]:
        return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                     for d in v.type.tensor_type.shape.dim)

    shape = dims(ins[0])
    return shape, int(np.prod(shape)), int(np.prod(dims(g.output[0]))), ins[0].type.tensor_type.elem_type


def spec_rows(disjunct) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """C [S, n_out], d [S], strict [S] and the conjunction of each row, rows in spec order."""
    outs = disjunct.outputs
    if not outs:
        return np.zeros((0, 0)), np.zeros(0), np.zeros(0, bool), np.zeros(0, int)
    return (np.concatenate([c.C for c in outs]), np.concatenate([c.d for c in outs]),
            np.concatenate([c.strict for c in outs]),
            np.concatenate([np.full(c.C.shape[0], k) for k, c in enumerate(outs)]))


def read_file(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CheckInputError(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from None


def _exact_le(row: np.ndarray, v: np.ndarray, bound: float, strict: bool) -> bool:
    """row . v <= bound (or <) in exact rational arithmetic: zero tolerance, no rounding."""
    lhs = sum((Fraction(float(a)) * Fraction(float(b)) for a, b in zip(row, v) if a != 0), Fraction(0))
    return lhs < Fraction(float(bound)) if strict else lhs <= Fraction(float(bound))


def _in_region(x: np.ndarray, region) -> bool:
    """x (float32 values) lies in the region; an input the region fixes to a value that
    no float32 equals counts as that value when x holds its nearest float32 (the model
    can only be run there: such a region contains no float32 point at all)."""
    lo, hi = np.asarray(region.lower, dtype=np.float64), np.asarray(region.upper, dtype=np.float64)
    fixed = (lo == hi) & (x == lo.astype(np.float32).astype(np.float64))
    real = np.where(fixed, lo, x)
    return bool(np.all(lo <= real) and np.all(real <= hi)) and (
        region.A is None or all(_exact_le(a, real, b, False) for a, b in zip(region.A, region.b)))


def run_onnx(data: bytes, feeds: list[np.ndarray], extra_outputs: tuple[str, ...] = ()) -> list[np.ndarray]:
    """onnxruntime's values of every graph output, then of `extra_outputs` (tensors inside
    the graph, made outputs of a copy), with `feeds` (float32 values, flat) as the graph's
    inputs in order, each reshaped to its declared shape (a symbolic dimension is 1, as
    everywhere in nncert) and cast to its type; each flat float64."""
    import onnxruntime  # lazy: onnxruntime only to replay a counterexample, not when the checker is imported

    if extra_outputs:
        import onnx  # lazy: onnx (about 1 s) only where a model is read, not when the checker is imported

        proto = onnx.load_from_string(data)
        proto.graph.output.extend([onnx.ValueInfoProto(name=t) for t in extra_outputs])
        data = proto.SerializeToString()
    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = onnxruntime.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        args = {}
        for info, v in zip(sess.get_inputs(), feeds):
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in info.shape]
            args[info.name] = v.astype(np.float64 if info.type == "tensor(double)" else np.float32).reshape(shape)
        outs = sess.run(None, args)
    except Exception as exc:  # onnxruntime raises its own types; a model it cannot run is bad input
        raise CheckInputError(f"onnxruntime cannot run the model to replay the counterexample "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return [np.asarray(v, dtype=np.float64).reshape(-1) for v in outs]


def _check_sat(cert: dict, spec, n_in: int, replay: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
               query=None) -> dict:
    """A counterexample in some disjunct's region whose onnxruntime outputs meet one of its
    conjunctions; for a VNN-LIB 2.0 `query` also the query as written (its strict input
    bounds, which the Spec's box closes, and its constants before rounding). `replay`
    maps the float32 input to the spec's output vector and the query's assignment."""
    cex = cert.get("counterexample")
    if not isinstance(cex, dict) or "x" not in cex:
        raise _Reject("a sat certificate needs counterexample.x")
    x = decode_array(cex["x"], "counterexample.x").reshape(-1)
    if x.size != n_in or not np.isfinite(x).all():
        raise _Reject(f"counterexample.x must be {n_in} finite numbers")
    x32 = x.astype(np.float32)
    if not np.array_equal(x32.astype(np.float64), x):
        raise _Reject("counterexample.x holds values that are not float32")
    hits = [d for d in spec.disjuncts if _in_region(x, d.region)]
    if not hits:
        raise _Reject("the counterexample is outside every input region of the spec")
    y, z = replay(x32)
    if not np.isfinite(y).all():
        raise _Reject("onnxruntime gives a non-finite output at the counterexample")
    held = any(all(_exact_le(r, y, b, s) for r, b, s in zip(conj.C, conj.d, conj.strict))
               for d in hits for conj in d.outputs)
    if not held:
        raise _Reject("the spec's output constraints do not hold on onnxruntime's outputs at the counterexample")
    if query is not None and not query.satisfied_by(z):
        raise _Reject("the counterexample does not satisfy the VNN-LIB 2.0 query as written (a strict bound or a "
                      "constant that the spec's rows round)")
    claimed = cex.get("y")
    same = claimed is not None and np.array_equal(decode_array(claimed, "counterexample.y").reshape(-1), y)
    return {"outputs_match_claim": bool(same)}


def _alphas(entry: dict, net: Network, S: int) -> Optional[dict[str, np.ndarray]]:
    raw = entry.get("alphas")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _Reject("alphas must map ReLU node names to arrays")
    relus = {l.name: net.sizes[l.out] for l in net.layers if l.kind == "relu"}
    out = {}
    for name, v in raw.items():
        if name not in relus:
            raise _Reject(f"alphas name '{name}', which is not a ReLU node of the model")
        a = decode_array(v, f"alphas['{name}']")
        if a.size != S * relus[name] or (a.ndim and a.shape[0] != S):
            raise _Reject(f"alphas['{name}'] has shape {a.shape}; expected [{S}, {relus[name]}]")
        if not np.isfinite(a).all():
            raise _Reject(f"alphas['{name}'] holds a non-finite value")
        out[name] = a.reshape(S, relus[name])
    return out


def _leaf_bounds(net: Network, lo: np.ndarray, hi: np.ndarray, spec_rows: tuple[np.ndarray, np.ndarray],
                 alphas: Optional[dict], sparse: Optional[dict] = None, ball: Optional[tuple] = None,
                 region: Optional[tuple] = None) -> np.ndarray:
    """Bounds of the spec rows `spec_rows` = (C, d) per leaf box (cut by `ball` when given,
    and by the spec region's rows `region` = (A, b)), with `alphas` for all leaves or
    `sparse` per-leaf alphas (read_alphas)."""
    C, d = spec_rows
    rows = []
    for s in range(0, lo.shape[0], _CHUNK):
        table = interval_table(net, lo[s:s + _CHUNK], hi[s:s + _CHUNK], ball)
        if sparse is not None:
            idx = np.arange(s, min(s + _CHUNK, lo.shape[0]))
            alphas = dense_alphas(net, sparse, idx, lo.shape[0], C.shape[0]) or None
        rows.append(row_lower_bounds(net, table, C, d, alphas, region=region))
    return np.concatenate(rows)


def _check_conjunctions(i: int, entry: dict, disjunct, net: Network, ball: Optional[tuple] = None) -> dict:
    """A disjunct proved conjunction by conjunction.

    The disjunct has a counterexample exactly when one of its conjunctions holds at some
    point of its region. Each part names conjunctions and proves, as a disjunct of its
    own over the same region, that none of them holds anywhere (any proof kind but this
    one); when the parts name every conjunction, no point satisfies any of them.
    """
    parts = entry.get("parts")
    K = len(disjunct.outputs)
    if not isinstance(parts, list) or not parts:
        raise _Reject(f"disjunct {i}: parts must be a non-empty list")
    covered: set[int] = set()
    info = []
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("kind") == "conjunctions":
            raise _Reject(f"disjunct {i}: part {j} must be a proof object of another kind")
        ks = part.get("conjunctions")
        if (not isinstance(ks, list) or not ks or not all(type(k) is int and 0 <= k < K for k in ks)
                or len(set(ks)) != len(ks)):
            raise _Reject(f"disjunct {i}: part {j} must name distinct conjunctions in 0..{K - 1}")
        covered.update(ks)
        sub = vnnlib.Disjunct(disjunct.region, tuple(disjunct.outputs[k] for k in ks))
        info.append({"conjunctions": ks, **_check_disjunct(i, part, sub, net, ball)})
    missing = sorted(set(range(K)) - covered)
    if missing:
        raise _Reject(f"disjunct {i}: no part proves conjunction {missing[0]}")
    return {"parts": info, "leaves": sum(p.get("leaves", 0) for p in info)}


def _read_ball(cert: dict, n_in: int) -> Optional[tuple[np.ndarray, float]]:
    """The l2 ball a certificate restricts the spec's region to ({"centre": [n_in numbers],
    "radius": r}), or None. With a ball, what is checked is the weaker claim: no
    counterexample in the region cut by the ball (torch modules verified over l2 balls,
    which VNN-LIB cannot write); the acceptance line says so."""
    ball = cert.get("l2_ball")
    if ball is None:
        return None
    if not isinstance(ball, dict):
        raise _Reject("l2_ball must be an object with centre and radius")
    centre = decode_array(ball.get("centre"), "l2_ball.centre").reshape(-1)
    radius = ball.get("radius")
    if centre.size != n_in or not np.isfinite(centre).all():
        raise _Reject(f"l2_ball.centre must hold {n_in} finite numbers")
    if type(radius) is int and abs(radius) <= sys.float_info.max:  # a larger JSON int has no float64
        radius = float(radius)
    if not isinstance(radius, float) or not (math.isfinite(radius) and radius >= 0):
        raise _Reject("l2_ball.radius must be a finite number >= 0")
    return centre, float(radius)


def _in_ball(x: np.ndarray, ball: tuple[np.ndarray, float]) -> bool:
    """||x - centre||_2 <= radius, decided exactly (rationals)."""
    centre, radius = ball
    total = sum((Fraction(float(a)) - Fraction(float(c))) ** 2 for a, c in zip(x.reshape(-1), centre))
    return total <= Fraction(radius) ** 2


def boxes_missing_ball(lo: np.ndarray, hi: np.ndarray, ball: tuple[np.ndarray, float]) -> np.ndarray:
    """[L] bool: the box's nearest point to the centre is farther than the radius, decided
    exactly: such a box holds no point of the region cut by the ball.

    The squared distance in float64 (a sum of n non-negative rounded squares of rounded
    differences) is within (2n + 8) ulps of the exact one, and so is the squared radius
    within 2; only boxes inside that band are decided again in rationals. That bound is
    relative, and holds only while no square underflows or overflows: a box with a
    difference or a radius under 2^-480 (whose square nears the subnormal range), or a
    non-finite square sum, is decided in rationals too."""
    centre, radius = ball
    near = np.clip(centre[None, :], lo, hi)
    diff = np.abs(near - centre[None, :])
    d2 = np.sum(diff ** 2, axis=1)
    r2 = radius * radius
    slack = (2 * lo.shape[1] + 10) * np.finfo(np.float64).eps
    out = d2 * (1 - slack) > r2 * (1 + slack)
    tiny = 2.0 ** -480
    outside_range = (((diff > 0) & (diff < tiny)).any(axis=1) | (0 < radius < tiny) | ~np.isfinite(d2)
                     | (not np.isfinite(r2)))
    unsure = np.nonzero((~out & (d2 * (1 + slack) >= r2 * (1 - slack))) | outside_range)[0]
    exact_r2 = Fraction(radius) ** 2
    for k in unsure:
        gap = np.nonzero(near[k] != centre)[0]
        out[k] = sum((Fraction(float(near[k, j])) - Fraction(float(centre[j]))) ** 2 for j in gap) > exact_r2
    return out


def _check_disjunct(i: int, entry: Any, disjunct, net: Network, ball: Optional[tuple] = None) -> dict:
    if not isinstance(entry, dict):
        raise _Reject(f"disjunct {i}: not an object")
    region = disjunct.region
    root = entry.get("root")
    if not isinstance(root, dict):
        raise _Reject(f"disjunct {i}: root must be an object with lower and upper")
    root_lo = decode_array(root.get("lower"), f"disjunct {i} root.lower").reshape(-1)
    root_hi = decode_array(root.get("upper"), f"disjunct {i} root.upper").reshape(-1)
    if not (np.array_equal(root_lo, region.lower) and np.array_equal(root_hi, region.upper)):
        raise _Reject(f"disjunct {i}: the root region differs from the spec's input box")
    if entry.get("kind") == "conjunctions":  # each part's root is checked again, as its own disjunct's
        return _check_conjunctions(i, entry, disjunct, net, ball)
    C, d, strict, owner = spec_rows(disjunct)
    S, K = C.shape[0], len(disjunct.outputs)
    if K == 0:
        return {"leaves": 0}
    kind, method = entry.get("kind"), entry.get("method")
    sparse = None
    if kind == "bounds":
        if method not in ("crown", "alpha-crown"):
            raise _Reject(f"disjunct {i}: unknown method '{method}' for bounds")
        lo, hi = root_lo[None], root_hi[None]
        alphas = _alphas(entry, net, S) if method == "alpha-crown" else None
        claims = decode_array(entry.get("claims"), f"disjunct {i} claims").reshape(1, -1)
    elif kind == "input-split":
        if method not in ("crown", "alpha-crown"):
            raise _Reject(f"disjunct {i}: unknown method '{method}' for input-split leaves")
        leaves = entry.get("leaves")
        if not isinstance(leaves, dict):
            raise _Reject(f"disjunct {i}: leaves must be an object with lower, upper and claims")
        lo = decode_array(leaves.get("lower"), f"disjunct {i} leaves.lower")
        hi = decode_array(leaves.get("upper"), f"disjunct {i} leaves.upper")
        why = tiling_error(root_lo, root_hi, lo, hi)
        if why:
            raise _Reject(f"disjunct {i}: {why}")
        alphas = None
        if method == "alpha-crown":  # per-leaf slopes, as for activation split (clipped into [0, 1])
            sparse = read_alphas(leaves.get("alphas"), net, S, lo.shape[0], decode_array,
                                 lambda m: _Reject(f"disjunct {i}: {m}"))
        claims = decode_array(leaves.get("claims"), f"disjunct {i} leaves.claims")
    elif kind == "activation-split":
        if method != "beta-crown":
            raise _Reject(f"disjunct {i}: activation-split leaves must use method beta-crown, not '{method}'")
        return _check_activation_split(i, entry, net, (root_lo, root_hi), _SpecRows(C, d, strict, owner, K), ball)
    else:
        raise _Reject(f"disjunct {i}: unsupported proof kind '{kind}'")
    if claims.shape != (lo.shape[0], S):
        raise _Reject(f"disjunct {i}: claims have shape {claims.shape}; expected ({lo.shape[0]}, {S})")
    rows_of = None if region.A is None else (np.asarray(region.A, np.float64), np.asarray(region.b, np.float64))
    lb = _leaf_bounds(net, lo, hi, (C, d), alphas, sparse, ball, rows_of)
    if ball is not None:   # a leaf the ball misses holds no point of the region: nothing to prove there
        lb[boxes_missing_ball(lo, hi, ball)] = np.inf
    with np.errstate(invalid="ignore"):
        _compare(i, lb, claims, strict, owner, K)
    return {"leaves": int(lo.shape[0]), "min_margin": float(lb.max(1).min()) if S else 0.0}


@dataclass(frozen=True)
class _SpecRows:
    """A disjunct's rows as a leaf check compares them (`spec_rows`): C [S, n_out], d [S],
    strict [S], each row's conjunction, and K, the number of conjunctions."""

    C: np.ndarray
    d: np.ndarray
    strict: np.ndarray
    owner: np.ndarray
    K: int


def _check_activation_split(i: int, entry: dict, net: Network, root: tuple[np.ndarray, np.ndarray],
                            rows: _SpecRows, ball: Optional[tuple] = None) -> dict:
    """Split tree complete, then every leaf bounded with its splits, alphas and betas (over
    the root box (lower, upper) cut by `ball` when given)."""
    root_lo, root_hi = root
    C, d, strict, owner, K = rows.C, rows.d, rows.strict, rows.owner, rows.K
    S = C.shape[0]
    leaves = read_leaves(entry.get("leaves"), net, S, decode_array, lambda m: _Reject(f"disjunct {i}: {m}"))
    why = tree_error(leaves.decisions)
    if why:
        raise _Reject(f"disjunct {i}: {why}")
    claims = decode_array((entry.get("leaves") or {}).get("claims"), f"disjunct {i} leaves.claims")
    if claims.shape != (len(leaves), S):
        raise _Reject(f"disjunct {i}: claims have shape {claims.shape}; expected ({len(leaves)}, {S})")
    widest = max(net.sizes.values())
    chunk = max(1, min(_CHUNK, _SPLIT_ELEMENTS // max(1, S * widest)))
    parts = [leaf_bounds(net, leaves, np.arange(s, min(s + chunk, len(leaves))), root_lo, root_hi, C, d, ball)
             for s in range(0, len(leaves), chunk)]
    lb, empty = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    with np.errstate(invalid="ignore"):  # empty leaves: lb = +inf, any claim (even +inf) is below it
        _compare(i, lb, claims, strict, owner, K)
    live = lb[~empty]
    return {"leaves": len(leaves), "empty_leaves": int(empty.sum()),
            "min_margin": float(live.max(1).min()) if live.size else float("inf")}


def _compare(i: int, lb: np.ndarray, claims: np.ndarray, strict: np.ndarray, owner: np.ndarray, K: int) -> None:
    """Every conjunction proved on every leaf by the re-derived bounds; no claim above them."""
    gap_ok = np.where(strict, lb >= 0, lb > 0)                      # [L, S]
    for k in range(K):
        proved = gap_ok[:, owner == k].any(1)
        if not proved.all():
            leaf = int(np.nonzero(~proved)[0][0])
            raise _Reject(f"disjunct {i}: conjunction {k} is not proved on leaf {leaf} "
                          f"(re-derived row bounds {np.array2string(lb[leaf][owner == k], precision=6)})")
    excess = claims - lb - CLAIM_TOLERANCE * (1.0 + np.abs(lb))
    if np.isnan(claims).any() or (excess > 0).any():
        leaf, row = np.argwhere(np.isnan(claims) | (excess > 0))[0]
        raise _Reject(f"disjunct {i}: claimed bound {float(claims[leaf, row])!r} of row {row} on leaf {leaf} "
                      f"exceeds the re-derived {float(lb[leaf, row])!r}")


def _written_query(spec_text: str, spec_path: str):
    """The VNN-LIB 2.0 query as written (None for a 1.0 file): a plain query, one network
    with one input and one output, whose assignment is the input then the output."""
    return parse_query(spec_text, spec_path) if text_version(spec_text) is not None else None


def check_certificate(cert: Any, model_data: bytes, spec_text: str, spec_path: str = "<spec>") -> CheckResult:
    """Accept or reject `cert` (the parsed JSON) against the model bytes and spec text.

    Hashes are the caller's business (see `check_files`); a spec that cannot be parsed
    raises `CheckInputError`.
    """
    shape, n_in, n_out, _ = io_sizes(model_data)
    try:
        spec = vnnlib.parse_text(spec_text, spec_path, n_in, n_out)
    except vnnlib.VnnlibError as exc:
        raise CheckInputError(str(exc)) from None

    def replay(x32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = run_onnx(model_data, [x32])[0]
        return y, np.concatenate([x32.astype(np.float64), y])

    return check_verdict(cert, spec, n_in, lambda: read_network(model_data), replay,
                         _written_query(spec_text, spec_path))


def check_verdict(cert: Any, spec, n_in: int, network: Callable[[], Network],
                  replay: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], query=None) -> CheckResult:
    """Accept or reject `cert` for `spec` over an input of `n_in` elements: an unsat's
    proofs against `network()` (read only then; `Unsupported` is a rejection), a sat's
    counterexample by `replay` (float32 input -> the spec's outputs and the query's
    assignment) and, for a VNN-LIB 2.0 `query`, the query as written."""
    try:
        if not isinstance(cert, dict) or cert.get("format") != FORMAT:
            raise _Reject(f"not an {FORMAT} file")
        if cert.get("version") != VERSION:
            raise _Reject(f"version {cert.get('version')!r} is not supported (this checker reads {VERSION})")
        if isinstance(cert.get("certificate"), str):
            raise _Reject(cert["certificate"])
        verdict = cert.get("verdict")
        ball = _read_ball(cert, n_in)
        extra = {} if ball is None else {"l2_ball": {"radius": ball[1]}}
        if verdict == "sat":
            info = _check_sat(cert, spec, n_in, replay, query)
            x32 = decode_array(cert["counterexample"]["x"], "counterexample.x").astype(np.float32)
            if ball is not None and not _in_ball(x32.astype(np.float64), ball):
                raise _Reject("the counterexample lies outside the l2 ball")
            return CheckResult(True, info={**info, **extra})
        if verdict != "unsat":
            raise _Reject(f"no certificate can support the verdict {verdict!r}")
        try:
            net = network()
        except Unsupported as exc:
            raise _Reject(str(exc)) from None
        entries = cert.get("disjuncts")
        if not isinstance(entries, list) or len(entries) != len(spec.disjuncts):
            raise _Reject(f"the spec has {len(spec.disjuncts)} disjuncts; the certificate proves "
                          f"{len(entries) if isinstance(entries, list) else 'none'}")
        info = [_check_disjunct(i, e, dj, net, ball) for i, (e, dj) in enumerate(zip(entries, spec.disjuncts))]
        return CheckResult(True, info={"disjuncts": info, **extra})
    except _Reject as exc:
        return CheckResult(False, str(exc))


def load_certificate(path: str | Path) -> Any:
    """The certificate's JSON (a `CheckInputError` when it cannot be read or parsed)."""
    raw = read_file(path, "certificate")
    try:
        return json.loads(raw.decode("utf-8"))
    # ValueError: JSONDecodeError, or an int of more digits than Python converts; RecursionError: nested too deep
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckInputError(f"{path}: not a JSON file ({exc})") from None


def check_files(cert_path: str | Path, model_path: str | Path, spec_path: str | Path, cert: Any = None
                ) -> CheckResult:
    """Read the three files (the certificate only when `cert`, its JSON, is not given
    already), compare the hashes, then `check_certificate`."""
    if cert is None:
        cert = load_certificate(cert_path)
    model_data = read_file(model_path, "model")
    spec_data = read_file(spec_path, "spec")
    if isinstance(cert, dict):
        if cert.get("model_sha256") != hashlib.sha256(model_data).hexdigest():
            return CheckResult(False, "the model file's sha256 differs from the certificate's")
        if cert.get("spec_sha256") != hashlib.sha256(spec_data).hexdigest():
            return CheckResult(False, "the spec file's sha256 differs from the certificate's")
    return check_certificate(cert, model_bytes(model_data, model_path), spec_text(spec_data, spec_path),
                             str(spec_path))


def spec_text(spec_data: bytes, spec_path: str | Path) -> str:
    """The spec file's text (an .vnnlib.gz decompressed), as the vnnlib loader reads files."""
    try:
        return (gzip.decompress(spec_data) if spec_data[:2] == b"\x1f\x8b" else spec_data).decode(
            "utf-8", errors="replace")
    except (OSError, EOFError, zlib.error) as exc:
        raise CheckInputError(f"{spec_path}: cannot read the spec ({exc})") from None


def model_bytes(model_data: bytes, model_path: str | Path) -> bytes:
    """The ONNX bytes of a model file (an .onnx.gz is hashed as given, checked decompressed)."""
    if model_data[:2] != b"\x1f\x8b":
        return model_data
    try:
        return gzip.decompress(model_data)
    except (OSError, EOFError, zlib.error) as exc:
        raise CheckInputError(f"{model_path}: cannot read the model ({exc})") from None
