"""Which checker a certificate needs, and the one call that runs it: `check`.

A certificate says what it is: verdict certificates carry ``"format":
"nncert-certificate"`` (from ``nncert verify --certificate``) and are checked against
the model and the VNN-LIB property by `verdict.check_files` (a VNN-LIB 2.0 query over
several networks: against each network's file, `product.check_product_files`); Lipschitz certificates
carry a ``"kind"`` (``lipschitz-sdp``, ``lipschitz-naive``, ``lipschitz-local``) and
are checked against the model's weights alone, which this package's own ONNX reader
lowers to a ReLU MLP. Anything else (``lipschitz-naive-graph`` included: no independent
checker exists for the naive graph walk yet) is bad input, not a rejection.

`nncert check` and `verifier.check` both come here, so the two cannot disagree. Like
the rest of the checker, this imports numpy and the checker's modules only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Union

from verifier.checker.lipschitz import check_lipschitz_certificate
from verifier.checker.lipschitz_local import check_local_lipschitz_certificate, mlp_from_onnx
from verifier.checker.onnx_net import Unsupported
from verifier.checker.product import check_product_files
from verifier.checker.verdict import (CheckInputError, CheckResult, check_files, io_sizes, load_certificate,
                                      read_file)

__all__ = ["LIPSCHITZ_KINDS", "Models", "check", "check_loaded", "kind_of", "load_certificate"]

# One model file, or the files of a VNN-LIB 2.0 query's networks by name (`--network NAME=PATH`).
Models = Union[str, Path, Mapping[str, Union[str, Path]]]

LIPSCHITZ_KINDS = ("lipschitz-sdp", "lipschitz-naive", "lipschitz-local")


def kind_of(cert: Any, path: str | Path) -> str:
    """'verdict' or the Lipschitz kind; a `CheckInputError` naming what it is otherwise."""
    if not isinstance(cert, dict):
        raise CheckInputError(f"{path}: not a certificate (a JSON object with 'format' or 'kind' expected)")
    if cert.get("format") == "nncert-certificate":
        return "verdict"
    kind = cert.get("kind")
    if kind in LIPSCHITZ_KINDS:
        return str(kind)
    if kind == "lipschitz-naive-graph":
        raise CheckInputError(f"{path}: certificate kind 'lipschitz-naive-graph' has no independent checker yet "
                              "(only ReLU-MLP Lipschitz certificates and verdict certificates can be checked)")
    if kind is None and "format" in cert:
        raise CheckInputError(f"{path}: unknown certificate format {cert.get('format')!r}")
    raise CheckInputError(f"{path}: unknown certificate kind {kind!r} (expected a verdict certificate or one of "
                          f"{', '.join(LIPSCHITZ_KINDS)})")


def _check_lipschitz(cert: dict, kind: str, model_path: str | Path) -> CheckResult:
    """Accept or reject a Lipschitz certificate against the model's weights."""
    data = read_file(model_path, "model")
    try:
        io_sizes(data)  # an unreadable model is bad input, as for verdict certificates
    except CheckInputError as exc:
        raise CheckInputError(f"{model_path}: {exc}") from None
    try:
        ws, bs = mlp_from_onnx(data)
    except Unsupported as exc:
        return CheckResult(False, f"the model is not a ReLU MLP that the checker can read ({exc}); "
                                  f"a {kind} certificate is about one")
    if kind == "lipschitz-local":
        ok, why = check_local_lipschitz_certificate(cert, ws, bs)
    else:
        ok, why = check_lipschitz_certificate(cert, ws, "relu")
    norm = {"2": "l2", "inf": "l-inf"}.get(str(cert.get("norm")), str(cert.get("norm")))
    out = "l-inf" if kind == "lipschitz-local" else norm
    info = {"kind": kind, "L": cert.get("L"), "input_norm": norm, "output_norm": out, "checker": why}
    return CheckResult(ok, "" if ok else why, info)


def check(certificate: str | Path, model: Models, spec: Optional[str | Path] = None) -> CheckResult:
    """Check a certificate file against the ONNX model (and, for a verdict certificate, the
    VNN-LIB property it is about): `CheckResult.accepted`, the first reason for a
    rejection, and figures in `info` (for a Lipschitz certificate: kind, L, norms).
    `model` may be a mapping from network name to file, for a VNN-LIB 2.0 query over
    several networks. Files that cannot be read, a missing spec or an unknown kind raise
    `CheckInputError`.

        >>> import verifier
        >>> verifier.check("out/cert.json", "model.onnx", "prop.vnnlib").accepted
        >>> verifier.check("out/cert.json", {"f": "f.onnx", "g": "g.onnx"}, "query.vnnlib").accepted
    """
    cert = load_certificate(certificate)
    return check_loaded(cert, kind_of(cert, certificate), certificate, model, spec)


def check_loaded(cert: Any, kind: str, certificate: str | Path, model: Models,
                 spec: Optional[str | Path] = None) -> CheckResult:
    """`check` for a certificate already loaded and classified (`load_certificate`, `kind_of`).

    A certificate that names its networks (``"networks"``) is checked against the files
    by name; one that names one model file takes the only file of a one-entry mapping."""
    if isinstance(model, Mapping):
        if kind == "verdict" and isinstance(cert, dict) and "networks" in cert:
            if spec is None:
                raise CheckInputError(f"{certificate}: a verdict certificate is checked against its VNN-LIB "
                                      "property: give the spec")
            return check_product_files(certificate, model, spec, cert)
        if len(model) != 1:
            raise CheckInputError(f"{certificate}: the certificate is about one model file, not the "
                                  f"{len(model)} networks given")
        model = next(iter(model.values()))
    elif kind == "verdict" and isinstance(cert, dict) and "networks" in cert:
        named = cert["networks"]
        listed = f" ({', '.join(map(str, named))})" if isinstance(named, dict) else ""
        raise CheckInputError(f"{certificate}: the certificate is about a VNN-LIB 2.0 query's networks{listed}: "
                              "give each as --network NAME=PATH")
    if kind == "verdict":
        if spec is None:
            raise CheckInputError(f"{certificate}: a verdict certificate is checked against its VNN-LIB "
                                  "property: give the spec")
        return check_files(certificate, model, spec, cert)
    return _check_lipschitz(cert, kind, model)
