"""Writing verdict certificates (JSON) from a `Result`, for `nncert check` to verify.

The format is documented in docs/certificates.md; the checker is
`verifier.checker.verdict`. The writer may use anything in nncert, but it records only
what the checker re-derives or compares, never something the checker must believe.

Claims are re-computed here in float64 by the engine. The search may run in float32,
and CROWN is not monotone in its intermediate bounds (the default lower slope of an
unstable ReLU flips between 0 and 1 when u is near -l), so a float32 leaf bound can
be tighter than the float64 one the checker derives. Re-bounding in float64 makes the
claims what the checker should find (up to rounding margins), and a leaf that float64
does not prove is bisected further until it is (a few rounds at most): the tiling stays
exact and the certificate is checkable whenever the float64 bound can prove it.
"""
from __future__ import annotations

import hashlib
import json
import time
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

import vnnlib
from models import GraphEvaluator
from relaxations import BallBox, BoundOptions, Given, IntervalBounds, compute_bounds
from relaxations.bounds import rows_proved
from verifier.api import outward_box
from verifier.checker.onnx_net import Unsupported, read_network
from verifier.checker.product import product_network
from verifier.checker.verdict import (FORMAT, LEAF_CHUNK, VERSION, boxes_missing_ball, encode_array, model_bytes,
                                      spec_rows)
from verifier.model import Model
from verifier.report import write_text
from verifier.result import Result
from vnnlib import Spec

__all__ = ["SideBySide", "build_certificate", "write_certificate", "REFINE_ROUNDS", "CertificateTimeout", "check_time"]

REFINE_ROUNDS = 8
_CHUNK = LEAF_CHUNK  # the checker's chunks (see `_evaluate`)

# The time by which the certificate being built must be done (time.monotonic()). Scoped
# to one `write_certificate` call (a context variable, reset on return) so that the
# chunk loops deep in the re-derivation can stop without a deadline in every signature.
_DEADLINE: ContextVar[float] = ContextVar("certificate_deadline", default=float("inf"))


class CertificateTimeout(Exception):
    """The run's budget ended while the certificate was being re-derived."""


def check_time() -> None:
    """Raise CertificateTimeout once the current certificate's deadline has passed."""
    if time.monotonic() > _DEADLINE.get():
        raise CertificateTimeout


def _rows_proved(gap: np.ndarray, strict: np.ndarray, owner: np.ndarray, K: int) -> np.ndarray:
    """[L] bool: every conjunction has a row whose gap (lower bound of C y - d) proves it
    (the engine's rule, `relaxations.bounds.rows_proved`; the checker keeps its own)."""
    ok = rows_proved(gap, strict)
    return np.all([ok[:, owner == k].any(1) for k in range(K)], axis=0) if K else np.ones(len(gap), bool)


def _float64_claims(model: Model, lo: np.ndarray, hi: np.ndarray, C: np.ndarray, d: np.ndarray,
                    alphas: Optional[dict] = None, ball: Optional[tuple] = None,
                    rows: Optional[tuple] = None) -> np.ndarray:
    """Lower bounds [L, S] of C y - d on each box (cut by the l2 ball (centre, radius) when
    given, and by the region's rows (A, b) when given; no SDP-CROWN bias, which the
    checker does not re-derive), by the engine in float64 (CROWN, or with alphas)."""
    # lazy: import cycle (verifier.certificates.activation imports this module)
    from verifier.certificates.activation import under_rows

    graph = model.graph
    ev = GraphEvaluator(graph, dtype=torch.float64)
    Ct = torch.tensor(C, dtype=torch.float64)
    out = []
    for s in range(0, len(lo), _CHUNK):
        check_time()
        n = len(lo[s:s + _CHUNK])
        box = IntervalBounds(torch.tensor(lo[s:s + _CHUNK]).reshape(n, *graph.input_shape),
                             torch.tensor(hi[s:s + _CHUNK]).reshape(n, *graph.input_shape))
        if ball is not None:
            centre = torch.tensor(np.asarray(ball[0], np.float64)).reshape(1, *graph.input_shape)
            box = BallBox(box.lower, box.upper, centre.expand(n, *graph.input_shape),
                          torch.full((n,), float(ball[1]), dtype=torch.float64))
        given = None
        if alphas is not None:  # the search's slopes per row, for every leaf (projected into range)
            shapes = {nd.name: tuple(graph.shapes[nd.inputs[0]]) for nd in graph.nodes}
            given = {k: torch.tensor(v).reshape(1, C.shape[0], *shapes[k]).expand(n, C.shape[0], *shapes[k])
                     for k, v in alphas.items()}
        res = compute_bounds(graph, box, Ct, BoundOptions(method="crown", sdp_crown=False), want_upper=False, ev=ev,
                             given=Given(alphas=given))
        lb = res.lower.numpy() - d
        if rows is not None and res.linear is not None:
            lb = np.maximum(lb, under_rows(res.linear, box, rows, d))
        out.append(lb)
    return np.concatenate(out) if out else np.zeros((0, C.shape[0]))


def _rows(disjunct) -> Optional[tuple]:
    """The disjunct region's rows (A, b) besides its box, or None: an input-split leaf's
    claims are bounds over its box cut by them, as the checker derives them."""
    region = disjunct.region
    return None if region.A is None or not len(region.b) else (region.A, region.b)


def _refine(model: Model, lo: np.ndarray, hi: np.ndarray, disjunct, ball: Optional[tuple] = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 claims for the leaves (over each leaf cut by `ball` when given); leaves they
    do not prove are bisected (widest side) and retried. A leaf the ball misses needs no
    bound (the checker decides that exactly): its claims are 0 and it is never bisected.

    As in `_refine_alpha`, a bisected leaf's left half takes its place and its right half
    goes to the end, and each of the checker's chunks is bounded once for its boxes: a
    round re-bounds only the chunks a bisection changed."""
    C, d, strict, owner = spec_rows(disjunct)
    K = len(disjunct.outputs)
    cache: dict = {}

    def claims_of(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for s in range(0, len(lo), _CHUNK):
            key = _chunk_key(lo[s:s + _CHUNK], hi[s:s + _CHUNK])
            if key not in cache:
                cache[key] = _float64_claims(model, lo[s:s + _CHUNK], hi[s:s + _CHUNK], C, d, ball=ball,
                                             rows=_rows(disjunct))
            parts.append(cache[key])
        claims = np.concatenate(parts) if parts else np.zeros((0, C.shape[0]))
        if ball is None:
            return claims, np.zeros(len(lo), bool)
        missed = boxes_missing_ball(lo, hi, ball)
        claims[missed] = 0.0
        return claims, missed

    claims, missed = claims_of(lo, hi)
    for _ in range(REFINE_ROUNDS):
        bad = ~_rows_proved(claims, strict, owner, K) & ~missed
        if not bad.any():
            break
        new_lo, new_hi = _bisect_widest(lo[bad], hi[bad])   # left halves, then right halves
        k = int(bad.sum())
        lo, hi = lo.copy(), hi.copy()
        lo[bad], hi[bad] = new_lo[:k], new_hi[:k]
        lo, hi = np.concatenate([lo, new_lo[k:]]), np.concatenate([hi, new_hi[k:]])
        claims, missed = claims_of(lo, hi)
    return lo, hi, claims


def _bisect_widest(blo: np.ndarray, bhi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Halve each box along its widest side: left halves first, then right halves."""
    dim = np.argmax(bhi - blo, axis=1)
    rows = np.arange(len(blo))
    mid = (blo[rows, dim] + bhi[rows, dim]) / 2
    left_hi, right_lo = bhi.copy(), blo.copy()
    left_hi[rows, dim] = mid
    right_lo[rows, dim] = mid
    return np.concatenate([blo, right_lo]), np.concatenate([left_hi, bhi])


def _proved_leaves(lb: np.ndarray, disjunct) -> np.ndarray:
    C, d, strict, owner = spec_rows(disjunct)
    return _rows_proved(lb, strict, owner, len(disjunct.outputs))


def _evaluate(model: Model, lo: np.ndarray, hi: np.ndarray, disjunct, sparse: Optional[dict],
              ball: Optional[tuple] = None, cache: Optional[dict] = None) -> tuple[np.ndarray, dict]:
    """float64 bounds [L, S] with per-leaf alphas (sparse: relu -> (leaf, index, values); NaN
    elsewhere: CROWN's default), or alpha-CROWN optimised from scratch (sparse None), and
    the alphas used at the neurons unstable on each leaf.

    Leaves are bounded in the checker's chunks (`LEAF_CHUNK` consecutive leaves): CROWN
    tightens an intermediate neuron when it is unstable in some leaf of the batch, so a
    leaf's bound depends on its batch, and the claims must come from the batches the
    checker will use.

    `cache` (with given alphas only) keeps each chunk's result under its exact inputs
    (boxes and dense alphas), and under the same boxes with the alphas it used: a later
    round that gives a chunk exactly those (the refinement passes each round's used
    alphas on) reuses it, where the bounds would come out the same (the used alphas are
    the given ones projected into range, CROWN's default where none was given). A test
    checks that the claims equal a fresh evaluation's.
    """
    # lazy: import cycle (verifier.certificates.activation imports this module)
    from verifier.certificates.activation import LeafParameters, LeafRegion, dense_alphas, float64_leaf_bounds

    C, d = spec_rows(disjunct)[:2]
    S = C.shape[0]
    tensors = {nd.name: nd.inputs[0] for nd in model.graph.nodes if nd.op == "Relu"}
    shapes = {z: tuple(model.graph.shapes[z]) for z in tensors.values()}
    lbs, out = [], {}
    for s in range(0, len(lo), LEAF_CHUNK):
        check_time()
        rows = np.arange(s, min(s + LEAF_CHUNK, len(lo)))
        given = None if sparse is None else dense_alphas(sparse, rows, len(lo), tensors, shapes, S)
        key = None if cache is None or given is None else _chunk_key(lo[rows], hi[rows], given)
        hit = None if key is None else cache.get(key)
        if hit is None:
            lb, used, _, unstable = float64_leaf_bounds(model, len(rows), LeafRegion(lo[rows], hi[rows], ball,
                                                                                     _rows(disjunct)), C, d,
                                                        LeafParameters({}, {}, given or {}), optimise=sparse is None)
            local = {}
            for name, a in used.items():
                leaf, idx = torch.nonzero(unstable[tensors[name]], as_tuple=True)
                local[name] = (leaf.numpy(), idx.numpy(), a[leaf, :, idx].numpy())
            hit = (lb, local)
            if key is not None:
                cache[key] = hit
                n = len(rows)
                cache[_chunk_key(lo[rows], hi[rows], dense_alphas(local, np.arange(n), n, tensors, shapes, S))] = hit
        lbs.append(hit[0])
        for name, (leaf, idx, values) in hit[1].items():
            out.setdefault(name, []).append((leaf + s, idx, values))
    return (np.concatenate(lbs) if lbs else np.zeros((0, S)),
            {k: tuple(np.concatenate([p[i] for p in v]) for i in range(3)) for k, v in out.items()})


def _chunk_key(lo: np.ndarray, hi: np.ndarray, given: Optional[dict] = None) -> bytes:
    """What a chunk's float64 bounds are a function of, its boxes and its dense alphas, as a
    digest: the alphas of a chunk of a wide net run to megabytes, which the cache would
    otherwise keep as keys for every chunk of every round."""
    h = hashlib.sha256(lo.tobytes())
    h.update(hi.tobytes())
    for k in sorted(given or {}):
        h.update(k.encode())
        h.update(given[k].numpy().tobytes())
    return h.digest()


def _moved(sparse: dict, where: np.ndarray) -> dict:
    """The sparse alphas with leaf i renumbered where[i], and dropped where that is -1."""
    out = {}
    for k, (leaf, index, values) in sparse.items():
        keep = where[leaf] >= 0
        out[k] = (where[leaf[keep]], index[keep], values[keep])
    return out


def _merge(parts: list) -> dict:
    names = {k for p in parts for k in p}
    return {k: tuple(np.concatenate([p[k][i] for p in parts if k in p]) for i in range(3)) for k in names}


def _refine_alpha(model: Model, lo: np.ndarray, hi: np.ndarray, sparse: dict, disjunct,
                  ball: Optional[tuple] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """As `_refine`, with the search's per-leaf alphas: (lo, hi, claims, relu -> (leaf, index, values)).

    Each round bounds every leaf with its alphas in float64. Leaves not proved get, in the
    first round, alphas optimised in float64 (kept when they prove the leaf); otherwise
    they are bisected (widest side), the halves with optimised alphas. The last round's
    bounds, with exactly the written alphas, are the claims. Over a `ball`, a leaf it
    misses needs no bound (claims 0, never bisected: the checker decides that exactly).

    Leaves keep their places from round to round (a re-optimised leaf stays where it was,
    a bisected one's left half takes its place and its right half goes to the end), so
    the checker's chunks that no change touched are the same chunks again, and their
    bounds are reused (`_evaluate`'s cache): ACAS Xu 1_1 prop_3's 2,891 leaves were
    re-bounded in full four times (BENCHMARKS.md, session 38).
    """
    relus = {nd.name for nd in model.graph.nodes if nd.op == "Relu"}
    sparse = {k: v for k, v in sparse.items() if k in relus}
    cache: dict = {}
    for r in range(REFINE_ROUNDS + 1):
        claims, sparse = _evaluate(model, lo, hi, disjunct, sparse, ball, cache)
        missed = boxes_missing_ball(lo, hi, ball) if ball is not None else np.zeros(len(lo), bool)
        claims[missed] = 0.0
        bad = ~_proved_leaves(claims, disjunct) & ~missed
        if not bad.any() or r == REFINE_ROUNDS:
            break
        b = np.nonzero(bad)[0]
        fixed = np.zeros(len(b), bool)
        opt: dict = {}
        if r == 0:
            lb2, opt = _evaluate(model, lo[b], hi[b], disjunct, None, ball)
            fixed = _proved_leaves(lb2, disjunct)
        halved = b[~fixed]
        clo, chi = _bisect_widest(lo[halved], hi[halved])   # left halves, then right halves
        child = _evaluate(model, clo, chi, disjunct, None, ball)[1]
        n, h = len(lo), len(halved)
        keep = np.arange(n)
        keep[b] = -1                                  # their alphas come from opt or child
        at_fixed = np.full(len(b), -1)
        at_fixed[fixed] = b[fixed]
        at_child = np.concatenate([halved, n + np.arange(h)])
        sparse = _merge([_moved(sparse, keep), _moved(opt, at_fixed), _moved(child, at_child)])
        lo, hi = lo.copy(), hi.copy()
        lo[halved], hi[halved] = clo[:h], chi[:h]
        lo, hi = np.concatenate([lo, clo[h:]]), np.concatenate([hi, chi[h:]])
    return lo, hi, claims, sparse

def _snap_to_root(leaves: np.ndarray, root: np.ndarray) -> np.ndarray:
    """Leaf faces that lie on the root's face as the verifier's dtype rounded it, moved onto it.

    The search bisects a float32 copy of the root box rounded outward (see
    `verifier.api.outward_box`), so its outer faces lie up to one ulp outside the exact
    root. The leaves must tile the exact root, so the outer faces are put back on it;
    a leaf shrunk to the root is proved whenever the larger one was, and the checker
    re-derives every bound itself, so this never makes a certificate unsound.
    """
    out = np.array(leaves, dtype=np.float64, copy=True)
    lo32, hi32 = outward_box(root, root, torch.float32)
    for rounded in (lo32.double().numpy(), hi32.double().numpy(), root.astype(np.float32).astype(np.float64), root):
        hit = out == rounded[None, :]
        out = np.where(hit, root[None, :], out)
    return out


def _root(disjunct) -> dict:
    return {"lower": [float(v) for v in disjunct.region.lower], "upper": [float(v) for v in disjunct.region.upper]}


def _disjunct_entry(model: Model, entry: dict, disjunct, ball: Optional[tuple] = None) -> dict:
    """One proof entry of `Result.proof` as JSON data, with float64 claims (over the box
    cut by `ball` when given)."""
    C, d = spec_rows(disjunct)[:2]
    S = C.shape[0]
    root_lo, root_hi = np.asarray(disjunct.region.lower), np.asarray(disjunct.region.upper)
    if entry["kind"] == "bounds":
        alphas = None
        if entry.get("method") == "alpha-crown" and entry.get("alphas"):
            # ReLU slopes only: the checker takes no other (a product's planes are its 1/2
            # combination there, so the claims are re-derived with that too).
            relus = {nd.name for nd in model.graph.nodes if nd.op == "Relu"}
            alphas = {k: np.asarray(v, dtype=np.float64) for k, v in entry["alphas"].items() if k in relus} or None
        claims = _float64_claims(model, root_lo[None], root_hi[None], C, d, alphas, ball, _rows(disjunct))[0]
        out = {"root": _root(disjunct), "kind": "bounds", "method": entry["method"],
               "claims": encode_array(claims), "alphas": None}
        if alphas is not None:
            out["alphas"] = {name: encode_array(a.reshape(S, -1)) for name, a in alphas.items()}
        return out
    if entry["kind"] == "input-split":
        lo, hi = _snap_to_root(entry["lower"], root_lo), _snap_to_root(entry["upper"], root_hi)
        if entry.get("method") == "alpha-crown":
            lo, hi, claims, alphas = _refine_alpha(model, lo, hi, entry.get("alphas") or {}, disjunct, ball)
        else:
            (lo, hi, claims), alphas = _refine(model, lo, hi, disjunct, ball), None
        leaves = {"lower": encode_array(lo), "upper": encode_array(hi), "claims": encode_array(claims)}
        if alphas is not None:
            leaves["alphas"] = {k: {"leaf": encode_array(l), "index": encode_array(i),
                                    "values": encode_array(v.reshape(-1, S))} for k, (l, i, v) in alphas.items()}
        return {"root": _root(disjunct), "kind": "input-split",
                "method": "alpha-crown" if alphas is not None else "crown", "leaves": leaves}
    if entry["kind"] == "activation-split":
        # lazy: import cycle (verifier.certificates.activation imports this module)
        from verifier.certificates.activation import activation_split_entry

        return activation_split_entry(model, entry, disjunct, ball)
    if entry["kind"] == "conjunctions":  # each part proves its conjunctions, as a disjunct of its own
        parts = []
        for part in entry["parts"]:
            ks = [int(k) for k in part["conjunctions"]]
            sub = vnnlib.Disjunct(disjunct.region, tuple(disjunct.outputs[k] for k in ks))
            parts.append({"conjunctions": ks, **_disjunct_entry(model, part, sub, ball)})
        return {"root": _root(disjunct), "kind": "conjunctions", "parts": parts}
    raise ValueError(f"unknown proof kind {entry['kind']!r}")


@dataclass(frozen=True)
class SideBySide:
    """A VNN-LIB 2.0 query whose networks the engine bounds side by side (`models.product`),
    and the file of each network that needs one: its certificate names each file by hash,
    and the checker builds its own side-by-side network from them (`checker.product`)."""

    query: Any                      # vnnlib.query.Query
    files: Mapping[str, str]


def _checkable(model: Model, side: Optional[SideBySide]) -> None:
    """Raise `Unsupported` (naming what) when the checker cannot read the model's network."""
    if side is None:
        read_network(model.onnx_bytes)
        return
    product_network(side.query, {name: read_network(model_bytes(Path(path).read_bytes(), path), several=True)
                                 for name, path in side.files.items()})


def build_certificate(model: Model, spec_path: str | Path, spec: Spec, result: Result,
                      ball: Optional[tuple] = None, side: Optional[SideBySide] = None) -> Optional[dict]:
    """The certificate as JSON data, or None for a verdict that has none (unknown, timeout, error).
    `ball` (centre, radius): the claim is over the spec's region cut by that l2 ball, and the
    certificate names it (`verify_module` over l2 balls). `side`: the query's networks are
    bounded side by side; the certificate names each network's file instead of one model."""
    cert: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    if side is None:
        # the file as the user gave it (an .onnx.gz is hashed compressed, as `nncert check` reads it)
        cert["model_sha256"] = hashlib.sha256(Path(model.path).read_bytes() if Path(model.path).is_file()
                                              else model.onnx_bytes).hexdigest()
    else:
        cert["networks"] = {name: hashlib.sha256(Path(path).read_bytes()).hexdigest()
                            for name, path in side.files.items()}
    cert["spec_sha256"] = hashlib.sha256(Path(spec_path).read_bytes()).hexdigest()
    cert["verdict"] = result.verdict
    if ball is not None:
        cert["l2_ball"] = {"centre": encode_array(np.asarray(ball[0], np.float64).reshape(-1)),
                           "radius": float(ball[1])}
    if result.verdict == "sat":
        x = np.asarray(result.x, dtype=np.float32).reshape(-1)
        cert["counterexample"] = {"x": [float(v) for v in x],
                                  "y": [float(v) for v in np.asarray(result.y, dtype=np.float64).reshape(-1)]}
        return cert
    if result.verdict != "unsat":
        return None
    try:
        _checkable(model, side)
    except Unsupported as exc:
        cert["certificate"] = str(exc)
        return cert
    proof = result.proof or {}
    entries = proof.get("disjuncts")
    if entries is None or len(entries) != len(spec.disjuncts):
        cert["certificate"] = "unavailable (the run recorded no proof for every disjunct)"
        return cert
    for e in entries:
        if isinstance(e.get("certificate"), str):
            cert["certificate"] = e["certificate"]
            return cert
        if e.get("kind") not in ("bounds", "input-split", "activation-split", "conjunctions"):
            cert["certificate"] = f"unsupported (proof kind {e.get('kind')})"
            return cert
    # lazy: import cycle (verifier.certificates.activation imports this module)
    from verifier.certificates.activation import ActivationRederivationFailed

    try:
        cert["disjuncts"] = [_disjunct_entry(model, e, d, ball) for e, d in zip(entries, spec.disjuncts)]
    except ActivationRederivationFailed as exc:
        cert["certificate"] = f"unavailable ({exc})"
    return cert


def write_certificate(path: str | Path, model: Model, spec_path: str | Path, spec: Spec, result: Result,
                      deadline: Optional[float] = None, ball: Optional[tuple] = None,
                      side: Optional[SideBySide] = None) -> str:
    """Write the certificate by `deadline` (time.monotonic()); returns what happened, for the report.

    'written', 'unsupported (<op>)' (the file then says so instead of a proof), 'none for
    verdict <v>' (nothing is written), or 'not written: ...' when the budget ran out
    while re-deriving the proof (nothing is written; the verdict stands without one).
    The file is replaced atomically, so a run killed mid-write leaves no half certificate.
    """
    token = _DEADLINE.set(float("inf") if deadline is None else deadline)
    try:
        cert = build_certificate(model, spec_path, spec, result, ball, side)
    except CertificateTimeout:
        return "not written: the time limit was reached while re-deriving the proof"
    finally:
        _DEADLINE.reset(token)
    if cert is None:
        return f"none for verdict {result.verdict}"
    write_text(path, json.dumps(cert, allow_nan=False) + "\n")
    return cert.get("certificate", "written")
