"""nncert's public face: load models, compute bounds, verify specs.

    >>> import verifier
    >>> model = verifier.load_model("model.onnx")
    >>> lower, upper = verifier.bounds(model, x - eps, x + eps, method="crown")
    >>> result = verifier.verify(model, vnnlib.load("prop.vnnlib"))
"""
from __future__ import annotations

__version__ = "0.1.0"

from verifier.api import bounds
from verifier.config import Config, ConfigError, load_config
from verifier.model import Model, load_model
from verifier.result import Result
from verifier.training import EpsilonSchedule, certified_loss
from verifier.verify import SpecMismatch, verify

__all__ = ["__version__", "bounds", "Config", "ConfigError", "load_config", "Model", "load_model",
           "Result", "SpecMismatch", "verify"]
__all__ += ["certified_loss", "EpsilonSchedule"]
