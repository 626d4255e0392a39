"""One typed config tree; YAML files and `--set key=value` overrides are read from it.

Nothing here is global or mutable: a run receives a frozen `Config`, and
`with_overrides` returns a new one. Unknown keys and badly typed values are errors
that name the key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = ["Config", "BoundsConfig", "AttackConfig", "BabConfig", "ConfigError", "load_config",
           "with_overrides", "config_to_dict", "describe"]


class ConfigError(ValueError):
    """A config file or override that does not fit the config tree."""


@dataclass(frozen=True)
class BoundsConfig:
    """Bound propagation. `method` is the strongest method the verifier escalates to."""

    method: str = "alpha-crown"
    intermediate: str = "crown"
    alpha_iterations: int = 20
    alpha_lr: float = 0.25
    dtype: str = "float32"
    max_elements: int = 40_000_000


@dataclass(frozen=True)
class AttackConfig:
    """Projected gradient descent on the spec's margin, inside each input region."""

    enabled: bool = True
    restarts: int = 8
    steps: int = 50
    step_size: float = 0.25      # as a fraction of each input's half-width
    samples: int = 64            # random points and corners tried before PGD


@dataclass(frozen=True)
class BabConfig:
    """Branch and bound (when available); `mode` auto picks input or activation split."""

    enabled: bool = True
    mode: str = "auto"
    batch_size: int = 256
    max_domains: int = 2_000_000
    input_split_max_dims: int = 16
    clip: bool = True            # Clip-and-Verify domain clipping in input split (off when recording proofs)
    # Input split: children keep the spec-row constraints of this many generations of
    # ancestors; they clip each half before it is bounded (0: only a domain's own).
    clip_generations: int = 1
    # Input split: inherited constraints also tighten the intermediate bounds (most of
    # the gain: ACAS Xu 4_2 prop_2 24,319 domains without, 17,075 with).
    clip_intermediate: bool = True
    # Input split: use all of a domain's constraints jointly (coordinate ascent on the
    # K-multiplier dual) for its box and rows, not one at a time. Off: no domain saved
    # on ACAS Xu (BENCHMARKS.md §3), at some cost.
    clip_joint: bool = False
    # Bounding in input split: alpha-CROWN with a few steps per domain proves ACAS Xu
    # prop_1 domains that CROWN keeps splitting (2_2: 455 domains against >37,000).
    # Certificates use CROWN until input-split leaves record their alphas.
    input_split_method: str = "alpha-crown"
    input_split_alpha_iterations: int = 3
    # Which ReLU activation split splits: "babsr" (a score from the backward
    # coefficients) or "fsb" (filtered smart branching: estimate both children's bounds
    # for the top `fsb_candidates` BaBSR candidates, plus half as many by intercept score).
    branching: str = "fsb"         # fsb: fewer domains and half the time on mnist_fc (BENCHMARKS.md §3)
    fsb_candidates: int = 4
    # Relaxed clipping in activation split: split decisions with the split neurons'
    # linear bounds constrain each domain's inputs; bounds are concretised under them.
    relaxed_clip: bool = False


@dataclass(frozen=True)
class Config:
    device: str = "cpu"
    threads: int = 1            # torch CPU threads; 0 keeps torch's default (all cores)
    proof: bool = False         # record what proved each leaf (set by --certificate)
    timeout: float = 300.0
    seed: int = 0
    bounds: BoundsConfig = field(default_factory=BoundsConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    bab: BabConfig = field(default_factory=BabConfig)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if typ in (int, float):
        try:
            if typ is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return typ(value) if typ is float else int(float(value)) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}': expected {typ.__name__}, got {value!r}") from None
    if typ is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"config key '{key}': unsupported type {typ}")


def _merge(obj: Any, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{full}' is a section; expected a mapping")
            changes[key] = _merge(current, value, full + ".")
        else:
            changes[key] = _coerce(value, hints[key], full)
    return dataclasses.replace(obj, **changes)


# Values each key may take: (test, what was expected). Checked after every merge, so a
# YAML file, --set and the CLI flags all get the same clear error.
_RANGES = {
    "timeout": (lambda v: v >= 0, "a number of seconds >= 0"),
    "threads": (lambda v: v >= 0, "an integer >= 0 (0: torch's default)"),
    "bounds.method": (lambda v: v in ("ibp", "crown", "alpha-crown", "sdp", "sdp-lowrank"),
                      "one of ibp, crown, alpha-crown, sdp, sdp-lowrank"),
    "bounds.intermediate": (lambda v: v in ("crown", "ibp", "forward"), "crown, ibp or forward"),
    "bounds.dtype": (lambda v: v in ("float32", "float64"), "float32 or float64"),
    "bounds.alpha_iterations": (lambda v: v >= 0, "an integer >= 0"),
    "bounds.max_elements": (lambda v: v >= 1, "an integer >= 1"),
    "attack.restarts": (lambda v: v >= 0, "an integer >= 0"),
    "attack.steps": (lambda v: v >= 0, "an integer >= 0"),
    "attack.samples": (lambda v: v >= 0, "an integer >= 0"),
    "bab.mode": (lambda v: v in ("auto", "input", "activation", "none"), "auto, input, activation or none"),
    "bab.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "bab.input_split_method": (lambda v: v in ("ibp", "crown", "alpha-crown"), "ibp, crown or alpha-crown"),
    "bab.input_split_alpha_iterations": (lambda v: v >= 1, "an integer >= 1"),
    "bab.max_domains": (lambda v: v >= 1, "an integer >= 1"),
    "bab.branching": (lambda v: v in ("babsr", "fsb"), "babsr or fsb"),
    "bab.fsb_candidates": (lambda v: 1 <= v <= 64, "an integer from 1 to 64"),
    "bab.relaxed_clip": (lambda v: isinstance(v, bool), "true or false"),
    "bab.clip_generations": (lambda v: 0 <= v <= 8, "an integer from 0 to 8"),
}


def _check_ranges(config: Config) -> Config:
    for key, (ok, expected) in _RANGES.items():
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        if not ok(value):
            raise ConfigError(f"config key '{key}': expected {expected}, got {value!r}")
    return config


def with_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply `key.sub=value` strings, as given to `--set`."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        nested: dict[str, Any] = {}
        cursor = nested
        parts = key.strip().split(".")
        for p in parts[:-1]:
            cursor = cursor.setdefault(p, {})
        cursor[parts[-1]] = value.strip()
        config = _merge(config, nested)
    return _check_ranges(config)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then the overrides."""
    config = Config()
    if path is not None:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: the top level must be a mapping")
        try:
            config = _merge(config, data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return _check_ranges(with_overrides(config, overrides or []))


def config_to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def describe(config: Any = None, prefix: str = "") -> list[str]:
    """Every key with its type and default, for `nncert config` and the README."""
    config = Config() if config is None else config
    hints = typing.get_type_hints(type(config))
    lines = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            lines += describe(value, f"{prefix}{f.name}.")
        else:
            lines.append(f"{prefix}{f.name}: {hints[f.name].__name__} = {value!r}")
    return lines
