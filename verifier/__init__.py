"""nncert's public face: load models, compute bounds, verify specs.

    >>> import numpy as np, verifier, vnnlib
    >>> model = verifier.load_model("model.onnx")
    >>> x = np.zeros(model.input_shape, dtype=np.float32)
    >>> lower, upper = verifier.bounds(model, x - 0.01, x + 0.01, method="crown")
    >>> lower, upper = verifier.bounds(torch_net, xs - 0.01, xs + 0.01)   # a torch module, a batch xs [B, ...]
    >>> spec = vnnlib.load("prop.vnnlib", model.n_inputs, model.n_outputs)
    >>> result = verifier.verify(model, spec, verifier.Config(timeout=30))
    >>> results = verifier.verify_module(torch_net, x, y, eps=0.05)   # no files (l-inf or l2)
    >>> l2 = verifier.Perturbation(norm="2", lower=0.0, upper=1.0)     # the ball's norm, the valid range
    >>> results = verifier.verify_module(torch_net, x, y, eps=0.5, perturbation=l2)
    >>> verifier.lipschitz(model, norm="2", method="sdp-layer").value   # certified
    >>> verifier.local_lipschitz(model, x, 0.01, norm="inf").value      # on the l-inf box around x
    >>> verifier.certify_sdp(model, lower, upper, C)                    # SDP bounds of C f(x)
    >>> verifier.check("cert.json", "model.onnx", "prop.vnnlib").accepted

Names are imported on first use (PEP 562): `nncert check` and the independent checker
live under this package and must not pay for importing torch at start-up.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_HOME = {
    "bounds": "verifier.api", "ShapeError": "verifier.api",
    "Config": "verifier.config", "ConfigError": "verifier.config", "load_config": "verifier.config",
    "Model": "verifier.model", "load_model": "verifier.model",
    "Result": "verifier.result",
    "SpecMismatch": "verifier.verify", "verify": "verifier.verify",
    "certified_loss": "verifier.pytorch.training", "EpsilonSchedule": "verifier.pytorch.training",
    "CertifiedOptions": "verifier.pytorch.training", "Perturbation": "verifier.pytorch.perturbation",
    "verify_module": "verifier.pytorch.verify_module", "module_model": "verifier.pytorch.verify_module",
    "lipschitz": "verifier.lipschitz", "local_lipschitz": "verifier.lipschitz_local",
    "certify_sdp": "verifier.sdp", "check": "verifier.checker.dispatch",
}

__all__ = ["__version__", "bounds", "ShapeError", "Config", "ConfigError", "load_config", "Model", "load_model",
           "Result", "SpecMismatch", "verify", "certified_loss", "CertifiedOptions", "EpsilonSchedule", "Perturbation",
           "verify_module", "module_model", "lipschitz", "local_lipschitz", "certify_sdp", "check"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'verifier' has no attribute '{name}'")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Importing the submodule `verifier.verify` would bind the package's `verify` to that
    module (the import system sets a package attribute per submodule), and a later
    `from verifier import verify` would get a module instead of the function, depending
    on which test or caller imported first. The function keeps the name; the module is
    `sys.modules["verifier.verify"]` (importlib.import_module). The same holds for
    `verifier.lipschitz`."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _HOME.get(name) == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
