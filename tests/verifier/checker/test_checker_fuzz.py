"""Fuzz of the independent certificate checker: malformed content is rejected, never a crash.

`nncert check` turns any exception other than `CheckInputError` into an internal error
(exit 1), so the checker must answer every certificate, however malformed, with a
rejection and its reason (or `CheckInputError` for bad input). Real certificates of
one small ReLU MLP (verdicts: bounds, input split, activation split, conjunctions, sat;
Lipschitz: naive, LipSDP in l2 and l-inf, local; an SDP verification certificate) are
accepted as written, then mutated at a random node of their JSON, many times with a
seeded generator; each mutant must be rejected or refused as bad input. Mutants of the
numeric proof content must be rejected in a clear majority: the fuzz reaches the maths,
not only the parsing. Crashes it found are kept below as plain regression cases.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import pytest

import vnnlib
import verifier
from tests.builders import normalised_mlp_onnx, random_mlp_weights
from verifier import Config, load_model, verify
from verifier.certificates.writer import build_certificate
from verifier.checker.dispatch import check as check_path, check_loaded, kind_of
from verifier.checker.lipschitz import check_lipschitz_certificate
from verifier.checker.lipschitz_local import check_local_lipschitz_certificate
from verifier.checker.sdp import check_sdp_certificates
from verifier.checker.verdict import CheckInputError
from verifier.config import BabConfig
from verifier.lipschitz_local import LocalSearch
from verifier.sdp import certify_sdp, graph_from_weights

Key = Union[str, int]
Check = Callable[[Any], tuple[bool, str]]  # (accepted, reason); CheckInputError allowed
MUTANTS = 150   # per kind, seeded: 1,650 in all (300 a kind found the crashes kept below as cases)
# Keys under which every number is proof content (claims, bounds, multipliers, leaves); not
# alphas, where any slope in [0, 1] gives a sound bound, so most changes to one are harmless.
NUMERIC = {"disjuncts", "counterexample", "L", "rho", "multipliers", "per_output", "block_scales", "layer_norms",
           "per_row", "radius", "center", "rows", "leaves", "bound", "pre_lower", "pre_upper"}
ODD: list[Any] = [None, True, False, "", "x", 0, -1, 1, 2 ** 64, 10 ** 400, -1e308, 1e308, 5e-324, math.nan,
                  math.inf, -math.inf, [], {}, [[]], [None], {"": None}, [1.0, 2.0], [[0.5]], "AAAA"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Check]]:
    """kind -> (a real certificate, the checker's verdict on a certificate of that kind)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    onnx_path = normalised_mlp_onnx(tmp / "net.onnx", [3, 16, 16, 3], 3)
    model = load_model(onnx_path)
    x0 = np.random.default_rng(3).uniform(0.2, 0.8, 3)
    label = int(np.argmax(model.run_onnxruntime(x0.astype(np.float32))))
    out: dict[str, tuple[Any, Check]] = {}

    def via_dispatch(spec: Path) -> Check:
        def run(cert: Any) -> tuple[bool, str]:
            res = check_loaded(cert, kind_of(cert, "fuzz.json"), "fuzz.json", onnx_path, spec)
            return res.accepted, res.reason
        return run

    runs = {"bounds": (0.12, BabConfig(enabled=False)), "input-split": (0.15, BabConfig(mode="input")),
            "activation-split": (0.15, BabConfig(mode="activation", per_conjunction="off")),
            "conjunctions": (0.15, BabConfig(mode="activation", per_conjunction="proof")), "sat": (0.3, BabConfig())}
    for name, (eps, bab) in runs.items():
        spec_path = tmp / f"{name}.vnnlib"
        vnnlib.write_vnnlib(spec_path, vnnlib.robustness_spec(x0, eps, label, 3))
        spec = vnnlib.load(spec_path, 3, 3)
        result = verify(model, spec, Config(timeout=30, proof=True, bab=bab))
        cert = build_certificate(model, spec_path, spec, result)
        assert result.verdict == "sat" if name == "sat" else cert["disjuncts"][0]["kind"] == name, (name, result)
        if name in ("bounds", "sat"):  # the l2 ball cutting the region: a weaker claim, still accepted
            cert["l2_ball"] = {"centre": x0.tolist(), "radius": 1.0}
        out[name] = cert, via_dispatch(spec_path)
    assert out["bounds"][0]["disjuncts"][0]["method"] == "alpha-crown"
    lip = via_dispatch(tmp / "unused.vnnlib")
    for norm, naive, sdp in (("2", "naive", "sdp-layer"), ("inf", "naive", "sdp-layerwise")):
        for method in (naive, sdp):
            out[f"lipschitz-{method}-{norm}"] = verifier.lipschitz(model, norm=norm, method=method).certificate, lip
    local = verifier.local_lipschitz(model, x0, 0.2, "inf", search=LocalSearch(max_domains=6))
    out["lipschitz-local"] = local.certificate, lip
    ws, bs = random_mlp_weights(3, (3, 8, 8, 2))
    lo, hi, C = -np.ones(3), np.ones(3), np.array([[1.0, -1.0], [0.0, 1.0]])
    sdp = certify_sdp(graph_from_weights(ws, bs), lo, hi, C, method="sdp").certificate
    out["sdp"] = sdp, lambda c: check_sdp_certificates(c, ws, bs, lo, hi, C)
    return out


def _nodes(tree: Any, path: tuple[Key, ...] = ()) -> list[tuple[tuple[Key, ...], Any]]:
    """Every node of the JSON tree with its path, the root first."""
    out = [(path, tree)]
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        out += _nodes(v, path + (k,))
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _proof_number(path: tuple[Key, ...], v: Any) -> bool:
    return _is_number(v) and bool(set(path) & NUMERIC) and "alphas" not in path


def _new_value(rng: np.random.Generator, v: Any, nodes: list) -> tuple[str, Any]:
    """(what was done, the replacement) for the node value v."""
    pick = rng.integers(4)
    if pick == 0:
        return "odd", copy.deepcopy(ODD[rng.integers(len(ODD))])
    if pick == 1:
        return "copy of another node", copy.deepcopy(nodes[rng.integers(len(nodes))][1])
    if _is_number(v):
        f = float(v) if abs(v) < 1e300 else 1.0
        options = [-f, f * rng.uniform(0.5, 1.5), f + rng.choice([-1, 1]) * 10.0 ** rng.integers(-12, 1),
                   f * 1e300, int(f), str(v), [v], float(np.nextafter(f, rng.choice([-np.inf, np.inf])))]
        k = rng.integers(len(options))
        return f"number op {k}", options[k]
    if isinstance(v, list) and v:
        i = int(rng.integers(len(v)))
        options = [[], v[:i], v + v[-1:] * int(rng.integers(1, 4)), v[:i] + v[i + 1:], v[::-1], [v], v + [ODD[i % 5]]]
        k = rng.integers(len(options))
        return f"list op {k}", copy.deepcopy(options[k])
    if isinstance(v, str) and v:
        options = ["", v[:-1], v + "x", v.upper(), v[: len(v) // 2]]
        k = rng.integers(len(options))
        return f"string op {k}", options[k]
    return "wrapped", [v] if rng.random() < 0.5 else {"v": v}


def _opened(cert: Any, path: tuple[Key, ...]) -> tuple[list, Any, Key]:
    """([copy of cert], the copied parent of the node at path, its key in the parent): the
    containers on the way to the node are copied, nothing else (the root's parent is the list)."""
    holder: list = [cert]
    parent: Any = holder
    full = (0,) + path
    for k in full[:-1]:
        parent[k] = dict(parent[k]) if isinstance(parent[k], dict) else list(parent[k])
        parent = parent[k]
    return holder, parent, full[-1]


def mutate(cert: Any, rng: np.random.Generator) -> tuple[Any, str, bool]:
    """(mutant, what was done where, whether a number of the proof content changed).

    The node is drawn from all nodes, from the containers and strings, or from the
    numbers of the proof content, a third of the time each; only the containers on the
    way to it are copied."""
    nodes = _nodes(cert)
    pools = [nodes, [n for n in nodes if not _is_number(n[1])], [n for n in nodes if _proof_number(*n)]]
    pool = pools[rng.integers(3)] or nodes
    path, v = pool[rng.integers(len(pool))]
    holder, parent, key = _opened(cert, path)
    if isinstance(parent, dict) and rng.random() < 0.25:
        if rng.random() < 0.5:
            del parent[key]
            return holder[0], f"deleted key {path!r}", False
        parent[f"{key}_"] = parent.pop(key)
        return holder[0], f"renamed key {path!r}", False
    what, new = _new_value(rng, v, nodes)
    parent[key] = new
    numeric = _proof_number(path, v) and not (
        _is_number(new) and (new == v or (math.isnan(v) and math.isnan(new))))
    return holder[0], f"{what} at {path!r}: {v!r:.80} -> {new!r:.200}", numeric


def test_real_certificates_are_accepted(certs: dict[str, tuple[Any, Check]]) -> None:
    for name, (cert, check) in certs.items():
        assert check(cert)[0], name


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow and 0/0 on mutated numbers: rejected all the same
@pytest.mark.parametrize("name", ["bounds", "input-split", "activation-split", "conjunctions", "sat",
                                  "lipschitz-naive-2", "lipschitz-sdp-layer-2", "lipschitz-naive-inf",
                                  "lipschitz-sdp-layerwise-inf", "lipschitz-local", "sdp"])
def test_mutants_are_rejected_never_a_crash(certs: dict[str, tuple[Any, Check]], name: str) -> None:
    cert, check = certs[name]
    before = copy.deepcopy(cert)
    rng = np.random.default_rng(sum(map(ord, name)))
    numeric = rejected_numeric = rejected = 0
    crashes: list[str] = []
    for i in range(MUTANTS):
        mutant, what, is_numeric = mutate(cert, rng)
        try:
            ok = check(mutant)[0]
        except CheckInputError:
            ok = False
        except Exception as exc:  # noqa: BLE001  (any other exception is the bug this test looks for)
            crashes.append(f"{name} mutant {i}: {what}: {type(exc).__name__}: {exc!s:.200}")
            continue
        rejected += not ok
        numeric += is_numeric
        rejected_numeric += is_numeric and not ok
    assert not crashes, f"{len(crashes)} crashes:\n" + "\n".join(crashes[:8])
    assert cert == before, f"{name}: the checker changed the certificate it was given"
    assert check(cert)[0], name
    print(f"{name}: {rejected}/{MUTANTS} rejected; numeric {rejected_numeric}/{numeric}")
    assert numeric >= 20 and rejected_numeric >= 0.5 * numeric, (name, rejected_numeric, numeric)


def _set(cert: Any, path: tuple[Key, ...], value: Any) -> Any:
    """A copy of cert with the node at path replaced."""
    holder, parent, key = _opened(cert, path)
    parent[key] = value
    return holder[0]


# Crashes the fuzz found (now rejections): (kind, path, value, a word of the reason).
CATERPILLAR = [[[0, 0, 1]] * j + [[0, 0, -1]] for j in range(1050)]  # deeper than Python's recursion limit
FOUND = [("bounds", ("disjuncts", 0, "root"), [{}], "root must be an object"),                  # AttributeError
         ("input-split", ("disjuncts", 0, "leaves"), [1.0, 1.0], "leaves must be an object"),  # AttributeError
         ("bounds", ("disjuncts", 0, "claims", 0), 10 ** 400, "not a valid array"),            # OverflowError
         ("bounds", ("l2_ball", "radius"), 10 ** 400, "l2_ball.radius"),                       # OverflowError
         ("lipschitz-naive-2", ("layer_norms", 0), 10 ** 400, "malformed"),                    # OverflowError
         ("lipschitz-sdp-layerwise-inf", ("per_output", 1, "row"), -math.inf, "malformed"),    # OverflowError
         ("lipschitz-local", ("leaves", 0, 0, 0), math.inf, "malformed"),                      # OverflowError
         ("lipschitz-local", ("radius",), 10 ** 400, "malformed"),                             # OverflowError
         ("lipschitz-local", ("leaves",), CATERPILLAR, "lacks its +1 side"),                   # RecursionError
         ("sdp", ("rows", 0), 0.0, "not a certificate"),                                       # AttributeError
         ("sdp", ("rows",), 1.5, "rows must be a list"),                                       # TypeError
         ("sdp", ("rows", 0, "multipliers", "mu", 0), 10 ** 400, "malformed")]                 # OverflowError


@pytest.mark.parametrize("name, path, value, reason", FOUND,
                         ids=[f"{f[0]}-{'.'.join(map(str, f[1]))}" for f in FOUND])
def test_found_crashes_are_rejections(certs: dict[str, tuple[Any, Check]], name: str, path: tuple[Key, ...],
                                      value: Any, reason: str) -> None:
    cert, check = certs[name]
    ok, why = check(_set(cert, path, value))
    assert not ok and reason in why, why


def test_kind_functions_reject_a_certificate_that_is_no_object() -> None:
    ws, bs = random_mlp_weights(0, (2, 4, 2))   # AttributeError on cert.get before
    for cert in ([], None, "x", 1.0):
        assert not check_lipschitz_certificate(cert, ws)[0]
        assert not check_local_lipschitz_certificate(cert, ws, bs)[0]
        assert not check_sdp_certificates(cert, ws, bs, -np.ones(2), np.ones(2), np.eye(2))[0]


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000,
                                  '{"kind": "lipschitz-naive", "L": ' + "1" * 5000 + "}"], ids=["deep", "long-int"])
def test_unparsable_json_is_bad_input(tmp_path: Path, text: str) -> None:
    """json.loads raised RecursionError (nested too deep) and ValueError (an int of more
    digits than Python converts), which `nncert check` reported as internal errors."""
    path = tmp_path / "cert.json"
    path.write_text(text)
    with pytest.raises(CheckInputError, match="not a JSON file"):
        check_path(path, tmp_path / "model.onnx")
