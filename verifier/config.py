"""One typed config tree; YAML files and `--set key=value` overrides are read from it.

Nothing here is global or mutable: a run receives a frozen `Config`, and
`with_overrides` returns a new one. Unknown keys and badly typed values are errors
that name the key, so a typo never silently falls back to a default.

Every key is declared once, on its dataclass field (`key(default, help=..., check=...)`):
its type, what it accepts and what it means. Each dataclass validates its fields in
`__post_init__`, so a YAML file, `--set`, a CLI flag and a Python caller
(`Config(timeout=-1)`) all meet the same check and the same message; there is no
second table of ranges that a new key can be missing from. The checks themselves
(`Int`, `Real`, `Choice`, `Device`, ...) live in `verifier.config_checks`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from verifier.config_checks import (Bool, Check, Choice, ConfigError, Device, Int, RayAddress, Real, Share,
                                    _Rejected, checked, resolve_device)

__all__ = ["Config", "BoundsConfig", "AttackConfig", "BabConfig", "LpConfig", "Share", "ConfigError", "load_config",
           "with_overrides", "config_to_dict", "describe", "describe_markdown", "flags_markdown", "shown", "keys",
           "KeyInfo", "check_value", "key", "Check", "Int", "Real", "Bool", "Choice", "Device", "resolve_device"]


def _cpu_count() -> int:
    return os.cpu_count() or 1


def key(default: Any, help: str, check: Check, flag: str = "") -> Any:
    """A config key: its default, what it means, what it accepts and, for the few a user
    sets on most runs, its `nncert verify` flag (`--timeout`), in one place; the CLI
    generates those flags from here (`verifier.cli.flags`), and every key is settable
    with `--set` whether or not it has one."""
    if flag and not re.fullmatch(r"--[a-z][a-z0-9-]*", flag):
        raise ValueError(f"a config flag is --lower-case-words, got {flag!r}")
    return field(default=default, metadata={"help": help, "check": check, "flag": flag})


def section(cls: type, help: str) -> Any:
    """A nested section of the tree (a dataclass of keys)."""
    return field(default_factory=cls, metadata={"help": help, "section": cls})


class _Validated:
    """Runs every field's check on construction, so `Config(timeout=-1)` and
    `replace(cfg, ...)` fail as early as `--set timeout=-1` does.

    `_prefix` is the section's place in the tree, so messages name the key as a user
    writes it (`bounds.alpha_lr`), whichever way the value came in.
    """

    _prefix = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            name, value = f"{self._prefix}{f.name}", getattr(self, f.name)
            if "section" in f.metadata:
                if not isinstance(value, f.metadata["section"]):
                    raise ConfigError(f"config key '{name}' is a section; expected a "
                                      f"{f.metadata['section'].__name__}, got {value!r}")
                continue
            normal = checked(f"config key '{name}'", value, f.metadata["check"])
            if normal is not value:
                object.__setattr__(self, f.name, normal)  # 60 -> 60.0: frozen, so set once here


# ---------------------------------------------------------------------- the tree


# The bounding methods, named once for the whole verifier (the CLI's choices, verify's
# dispatch, the SDP front end): bound propagation from weakest to strongest, then the SDP
# relaxations. `relaxations.METHODS` is the propagation list again, because relaxations
# may not import the verifier; a test checks that the two agree. Torch-free, as this
# module is (the CLI builds its parser from it on every call).
PROPAGATION_METHODS = ("ibp", "crown", "alpha-crown")
SDP_METHODS = ("sdp", "sdp-lowrank")
VERIFY_METHODS = PROPAGATION_METHODS + SDP_METHODS


@dataclass(frozen=True)
class BoundsConfig(_Validated):
    """Bound propagation. `method` is the strongest method the verifier escalates to."""

    _prefix = "bounds."

    method: str = key("alpha-crown", check=Choice(VERIFY_METHODS), flag="--method",
                      help="strongest bounding method the verifier escalates to, searches included "
                           "(sdp methods: ReLU MLPs, no BaB)")
    intermediate: str = key("crown", check=Choice(("crown", "ibp", "forward")),
                            help="how bounds of intermediate layers are computed")
    alpha_iterations: int = key(20, check=Int(0),
                                help="alpha-CROWN optimisation steps on the whole input region")
    alpha_lr: float = key(0.25, check=Real(0, strict=True), help="alpha-CROWN step size (Adam learning rate)")
    optimise_intermediate: bool = key(True, check=Bool(),
                                      help="alpha-CROWN on the whole input region (verify's root bound; "
                                           "verifier.bounds; nncert bounds, which takes the defaults) also "
                                           "optimises the intermediate "
                                           "bounds (off with --certificate); the searches start from the intervals "
                                           "it proves; figures: BENCHMARKS.md, \"Why each default\"")
    optimise_share: float = key(1.0, check=Share(0.0),
                                help="share of the time left that the optimisation of intermediate bounds may use "
                                     "(it stops with its best bounds so far)"
                                     "; figures: BENCHMARKS.md, \"Why each default\"")
    patches: bool = key(True, check=Bool(),
                        help="CROWN's intermediate bounds walk back through convolutions as per-neuron kernel "
                             "windows (patches) instead of whole feature maps: the same bounds to rounding, faster"
                             "; figures: BENCHMARKS.md, \"Why each default\"")
    sparse_alpha: bool = key(True, check=Bool(),
                             help="alpha-CROWN keeps a ReLU layer's slopes only at its unstable neurons when at "
                                  "most half are unstable: the same bounds, fewer and smaller steps on wide layers")
    sdp_crown: bool = key(True, check=Bool(),
                          help="over an l2 ball (verify_module with norm 2), each ReLU's bias is also "
                               "SDP-CROWN's where higher. On the digits nets (l2 radii 0.1-0.5, 100 points) "
                               "it proves 0-1 more: their layers' balls, from spectral norms, are wide")
    dtype: str = key("float32", check=Choice(("float32", "float64")),
                     help="floating-point type of all bounding; an unsat in float64 is about exact arithmetic, "
                          "float32's margin is far wider than float32 inference's rounding (README, Soundness)")
    max_elements: int = key(40_000_000, check=Int(1),
                            help="largest tensor (elements) a bounding step builds; larger work is chunked")


@dataclass(frozen=True)
class AttackConfig(_Validated):
    """Projected gradient descent on the spec's margin, inside each input region."""

    _prefix = "attack."

    enabled: bool = key(True, check=Bool(), help="search for a counterexample before and during bounding")
    restarts: int = key(8, check=Int(0), help="PGD starting points (half from the best samples, half random)")
    steps: int = key(50, check=Int(0), help="PGD steps from each starting point")
    step_size: float = key(0.25, check=Real(0, strict=True),
                           help="first PGD step, as a fraction of each input's half-width (decays geometrically)")
    samples: int = key(64, check=Int(0), help="random points and corners tried before PGD")
    stronger_share: float = key(0.05, check=Share(0.0),
                                help="share of the time left that a stronger attack (4x restarts, 2x steps) may "
                                     "use once the bounds have not decided, before branch and bound; 0: the first "
                                     "attack's strength; figures: BENCHMARKS.md, \"Why each default\"")


@dataclass(frozen=True)
class BabConfig(_Validated):
    """Branch and bound (when available); `mode` auto picks input or activation split."""

    _prefix = "bab."

    enabled: bool = key(True, check=Bool(), help="branch and bound when bounding alone does not decide")
    mode: str = key("auto", check=Choice(("auto", "input", "activation", "none")),
                    help="auto: input split for few free inputs (see input_split_max_dims), activation split "
                         "otherwise")
    batch_size: int = key(256, check=Int(1, 2 ** 20), help="domains bounded together in one batch")
    batch_growth: int = key(8, check=Int(1, 1024),
                            help="on CUDA the batch may grow to this multiple of batch_size while device memory "
                                 "allows (an out-of-memory error halves it); on CPU it stays at batch_size")
    max_domains: int = key(2_000_000, check=Int(1, 10 ** 9),
                           help="the search gives up (unknown) when this many domains are open")
    workers: int = key(0, check=Int(0, 256), flag="--workers",
                       help="worker processes that bound the search's batches of domains while this process keeps "
                            "the domain store (input and ReLU activation split, on the CPU); 0 or 1: the search "
                            "runs in this process")
    backend: str = key("local", check=Choice(("local", "ray")), flag="--backend",
                       help="where bab.workers run: local processes, or Ray actors (pip install 'nncert[ray]') on "
                            "the cluster at bab.address")
    address: str = key("", check=RayAddress(), flag="--address",
                       help="with bab.backend ray: a running cluster's address; empty: a local cluster on this "
                            "machine's CPUs, started by the first run of the process")
    input_split_max_dims: int = key(16, check=Int(0),
                                    help="mode auto: input split when a region has at most this many free inputs")
    clip: bool = key(True, check=Bool(),
                     help="input split: Clip-and-Verify domain clipping (off when recording proofs)")
    clip_generations: int = key(1, check=Int(0, 8),
                                help="input split: children keep the spec-row constraints of this many generations "
                                     "of ancestors and clip each half before it is bounded (0: only a domain's own)")
    clip_intermediate: bool = key(True, check=Bool(),
                                  help="input split: inherited constraints also tighten the intermediate bounds"
                                       "; figures: BENCHMARKS.md, \"Why each default\"")
    clip_joint: bool = key(False, check=Bool(),
                           help="input split: use a domain's constraints jointly (coordinate ascent on the "
                                "K-multiplier dual), not one at a time. Off: it saved no domain on ACAS Xu, at some "
                                "cost; figures: BENCHMARKS.md, \"Why each default\"")
    input_split_method: str = key("alpha-crown", check=Choice(PROPAGATION_METHODS),
                                  help="input split bounding; alpha-CROWN proves domains that CROWN keeps splitting"
                                       "; figures: BENCHMARKS.md, \"Why each default\"")
    input_split_alpha_iterations: int = key(3, check=Int(1), help="input split: alpha-CROWN steps per domain")
    branching: str = key("fsb", check=Choice(("babsr", "fsb")),
                         help="activation split heuristic: babsr (score from backward coefficients) or fsb "
                              "(estimate both children's bounds for the top candidates)"
                              "; figures: BENCHMARKS.md, \"Why each default\"")
    fsb_candidates: int = key(4, check=Int(1, 64),
                              help="fsb: BaBSR candidates whose children are estimated, plus half as many by "
                                   "intercept score")
    fsb_rows: int = key(2, check=Int(0, 4096),
                        help="fsb, where each conjunction is one row (robustness): estimate the children on each "
                             "domain's this many worst rows only (0: every open row). 2: mnist_fc and eran's ReLU "
                             "net solve the same with the same domains, 42 of their 44 timeouts reach 5-36% more; "
                             "figures: BENCHMARKS.md, \"Why each default\"")
    domain_intermediate: str = key("root", check=Choice(("crown", "root")),
                                    help="activation split: each domain's intermediate bounds by CROWN again (crown), "
                                         "or the root's intervals with the domain's splits carried by IBP (root, "
                                         "as alpha,beta-CROWN does; crown with --certificate)"
                                         "; figures: BENCHMARKS.md, \"Why each default\"")
    warm_start: bool = key(True, check=Bool(),
                           help="activation split: children start alpha/beta-CROWN from their parent's best alphas "
                                "and betas (kept in float16 at the root's unstable neurons) instead of from "
                                "CROWN's slopes")
    general_warm_start: bool = key(False, check=Bool(),
                                   help="general activation split (sigmoid, tanh, ...): children start from "
                                        "their parent's alphas and cut multipliers. Off: its float16 starts make "
                                        "the search erratic; figures: BENCHMARKS.md, \"Why each default\"")
    split_products: bool = key(True, check=Bool(),
                               help="general activation split: the factors of products of two variable tensors "
                                    "(attention's Q K^T and its weights times V, LayerNorm's normalisation) are "
                                    "split candidates too, scored by the McCormick planes' gap they carry")
    alpha_iterations: int = key(20, check=Int(1),
                                help="activation split: alpha/beta-CROWN steps per round of domains")
    open_rows: bool = key(True, check=Bool(),
                          help="activation split: each round bounds only the spec rows of conjunctions that some "
                               "domain of the batch leaves open (proved ones keep the parent's bound); all rows "
                               "with --certificate")
    multi_split: int = key(0, check=Int(0, 8),
                           help="activation split: while a round's children fit in its batch, split up to this "
                                "many further neurons (BaBSR's next choices) per domain at once, 2^k children. "
                                "Off: on CPU it costs more than the short first rounds it saves"
                                "; figures: BENCHMARKS.md, \"Why each default\"")
    tighten_input: bool = key(False, check=Bool(),
                              help="activation split: each domain's input box narrowed to what its decisions imply "
                                   "(propagation back through ReLUs and affine layers), bounds over it; not with "
                                   "--certificate. Off: it decides more needles but costs seconds per "
                                   "mnist_fc or oval21 instance; figures: BENCHMARKS.md, \"Why each default\"")
    narrowing_attack: bool = key(True, check=Bool(),
                                 help="activation split: the root's single split decisions that confine the input "
                                      "box (a neuron active only near one point) give counterexample candidates: "
                                      "the narrowed boxes' centres, PGD in the narrowest; in at most 3% of the time "
                                      "left; figures: BENCHMARKS.md, \"Why each default\"")
    learned_cuts: bool = key(False, check=Bool(),
                             help="activation split: the decisions of proved domains, strengthened (splits with "
                                  "zero beta dropped) and proved again, become nogoods that close other domains "
                                  "or imply their last free decision (BICCOS's cuts as split decisions); not with "
                                  "--certificate. Off: it saves few domains for much more time"
                                  "; figures: BENCHMARKS.md, \"Why each default\"")
    per_conjunction: str = key("off", check=Choice(("off", "proof", "always")),
                               help="activation split: one search per open conjunction (label by label) instead "
                                    "of one for all rows: always, or proof (with --certificate, a proof each). "
                                    "Off: one search with open_rows is faster"
                                    "; figures: BENCHMARKS.md, \"Why each default\"")
    leaf_lp: bool = key(True, check=Bool(),
                        help="activation split: a fully split domain its bound leaves open is decided by an LP "
                             "over its split constraints and the spec rows (HiGHS, emptiness checked from the "
                             "duals; a point of it is a counterexample candidate) instead of making the answer "
                             "unknown; not with --certificate")
    prune_proved: bool = key(True, check=Bool(),
                             help="activation and general split: alpha/beta-CROWN's later steps leave out the "
                                  "domains of a round it has proved (they keep the bound that proved them; the "
                                  "others' bounds are unchanged): smaller steps for the same search; figures: "
                                  "BENCHMARKS.md, \"Why each default\"")
    leaf_lp_unstable: int = key(8, check=Int(0, 4096),
                                help="activation split: domains with at most this many unstable ReLUs left go to "
                                     "that LP too (CROWN's lines at those; the split constraints get their best "
                                     "multipliers); 0: fully split domains only")
    relaxed_clip: bool = key(False, check=Bool(),
                             help="activation split: the split neurons' linear bounds constrain each domain's "
                                  "inputs, and bounds are concretised under them")


@dataclass(frozen=True)
class LpConfig(_Validated):
    """LP refinement and the exact MILP (HiGHS) for ReLU MLPs, before activation-split search."""

    _prefix = "lp."

    refine: bool = key(False, check=Bool(),
                       help="tighten unstable neurons' intervals by LPs, layer by layer, before the search "
                            "(skipped with --certificate). Off: fewer domains, more time"
                            "; figures: BENCHMARKS.md, \"Why each default\"")
    refine_share: float = key(0.25, check=Share(0.0), help="share of the time left that refinement may use")
    milp: str = key("parallel", check=Choice(("parallel", "before", "off")),
                    help="exact MILP on the spec when few neurons are unstable: parallel (a thread beside the "
                         "search, until either decides), before (ahead of the search, in milp_share of the time "
                         "left) or off; an unsat from it rests on HiGHS and its certificate says so")
    milp_refine: bool = key(True, check=Bool(),
                            help="milp parallel with refine off: the MILP's thread first tightens the intervals by "
                                 "LPs (in refine_share of the time left) and builds its big-M constants from them; "
                                 "the search does not wait; not where the MILP runs by the first-layer rule "
                                 "(milp_first_weight); figures: BENCHMARKS.md, \"Why each default\"")
    milp_max_unstable: int = key(400, check=Int(0), help="the MILP runs when at most this many neurons are unstable")
    milp_first_weight: float = key(0.02, check=Share(0.0),
                                   help="what an unstable neuron counts against milp_max_unstable when its ReLU is fed "
                                        "by the network's input through affine ops alone (exact intervals: a binary "
                                        "with a tight big-M); 0.02: one hidden layer of up to 20,000; figures: "
                                        "BENCHMARKS.md, \"Why each default\"")
    milp_max_deep: int = key(64, check=Int(0),
                             help="with milp_first_weight below 1, and on every graph with a convolution, the MILP "
                                  "also needs at most this many unstable neurons past the first layer (oval21's "
                                  "CNNs have 119 and more, and a MILP beside their search slows it); figures: "
                                  "BENCHMARKS.md, \"Why each default\"")
    milp_share: float = key(0.5, check=Share(0.0), help="milp before: share of the time left that the MILP may use")


@dataclass(frozen=True)
class Config(_Validated):
    """Everything a run may be told; the root of the tree."""

    device: str = key("auto", check=Device(), flag="--device",
                      help="torch device for bounding, attack and search; auto: cuda when torch sees a CUDA "
                           "device, else cpu")
    threads: int = key(1, check=Int(0, _cpu_count, note="0: torch's default; {hi}: this machine's CPU count"),
                       flag="--threads",
                       help="torch CPU threads during the run (restored afterwards)")
    proof: bool = key(False, check=Bool(), help="record what proved each leaf (set by --certificate)")
    timeout: float = key(300.0, check=Real(0, inf="no limit", unit="seconds"), flag="--timeout",
                         help="wall-clock limit of a run, certificate and report included; the verdict is "
                              "timeout when it passes")
    seed: int = key(0, check=Int(0, 2 ** 63 - 1), flag="--seed",
                    help="seed of the run's random draws (attack starting points)")
    bounds: BoundsConfig = section(BoundsConfig, "bound propagation")
    attack: AttackConfig = section(AttackConfig, "counterexample search")
    bab: BabConfig = section(BabConfig, "branch and bound")
    lp: LpConfig = section(LpConfig, "LP refinement and exact MILP (ReLU MLPs, HiGHS)")


# ------------------------------------------------------------ reading and writing


def _merge(obj: Any, data: Mapping[str, Any], prefix: str = "") -> Any:
    """`obj` with the values in `data` (nested mappings for sections); text values are
    read as each key's type, then the dataclass checks them all on construction."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    changes = {}
    for name, value in data.items():
        full = f"{prefix}{name}"
        f = fields.get(name) if isinstance(name, str) else None
        if f is None:
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(fields))})")
        if "section" in f.metadata:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{full}' is a section; expected a mapping")
            changes[name] = _merge(getattr(obj, name), value, full + ".")
        elif isinstance(value, Mapping):
            raise ConfigError(f"config key '{full}' is not a section; expected {f.metadata['check'].expected()}")
        else:
            changes[name] = f.metadata["check"].parse(value) if isinstance(value, str) else value
    return dataclasses.replace(obj, **changes)


def with_overrides(config: Config, overrides: Sequence[str]) -> Config:
    """Apply `key.sub=value` strings, as given to `--set`."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        name, value = item.split("=", 1)
        nested: dict[str, Any] = {}
        cursor = nested
        parts = name.strip().split(".")
        for p in parts[:-1]:
            cursor = cursor.setdefault(p, {})
        cursor[parts[-1]] = value.strip()
        config = _merge(config, nested)
    return config


def _yaml_error(path: Any, exc: Exception) -> ConfigError:
    """One line, `FILE:LINE:COL: invalid YAML: <problem>`, like every other bad-input message."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{problem} ({context})" if context else problem
    text = " ".join(str(text).split())
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else f"{path}"
    return ConfigError(f"{where}: invalid YAML: {text}")


def load_config(path: Union[str, Path, None] = None, overrides: Optional[Sequence[str]] = None) -> Config:
    """Defaults, then the YAML file (if any), then the overrides."""
    config = Config()
    if path is not None:
        import yaml  # lazy: only a --config file needs yaml; this module is on the CLI's start-up path

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a UTF-8 text file") from None
        except yaml.YAMLError as exc:
            raise _yaml_error(path, exc) from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: the top level must be a mapping")
        try:
            config = _merge(config, data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return with_overrides(config, overrides or [])


def config_to_dict(config: Any) -> dict:
    """The tree as plain nested dicts (for reports, and YAML that `load_config` reads back)."""
    return dataclasses.asdict(config)


@dataclass(frozen=True)
class KeyInfo:
    """One key of the tree as `nncert config`, the generated flags and docs/config.md see it."""

    name: str        # dotted, as `--set` and YAML write it (bounds.alpha_lr)
    default: Any
    check: Check
    help: str
    flag: str        # "" for keys set only by --set or YAML


def keys(config: Any = None, prefix: str = "") -> list[KeyInfo]:
    """Every key of the tree in declaration order, with its current value as `default`."""
    config = Config() if config is None else config
    out: list[KeyInfo] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if "section" in f.metadata:
            out += keys(value, f"{prefix}{f.name}.")
        else:
            out.append(KeyInfo(f"{prefix}{f.name}", value, f.metadata["check"], f.metadata["help"],
                               f.metadata.get("flag", "")))
    return out


def check_value(info: KeyInfo, text: str) -> Any:
    """`text` read and checked as `info`'s key, or a ConfigError that names its flag:
    how a generated flag meets the same check as `--set` and YAML."""
    try:
        return info.check(info.check.parse(text))
    except _Rejected as exc:
        raise ConfigError(f"{info.flag or info.name}: expected {exc}, got {text!r}") from None


def describe(config: Any = None) -> list[str]:
    """Every key with its type, default and allowed values, then what it means; for
    `nncert config` (so the help a user reads is the text the code checks against)."""
    lines = []
    for k in keys(config):
        flag = f"  (flag {k.flag})" if k.flag else ""
        lines.append(f"{k.name}: {k.check.type.__name__} = {k.default!r}    [{k.check.expected()}]{flag}")
        lines.append(f"    {k.help}")
    return lines


def shown(value: Any) -> str:
    """A default as a user writes it in YAML or on the command line (false, inf, auto)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if value == math.inf else f"{value:g}"
    if value == "":
        return '""'
    return str(value)


def flags_markdown() -> str:
    """The README's table of `nncert verify`'s config flags (between its `config-flags`
    markers; a test keeps the two equal)."""
    rows = ["| flag | config key | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{k.flag}` | `{k.name}` | `{shown(k.default)}` | {_cell(k.help)} |" for k in keys() if k.flag]
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def describe_markdown() -> str:
    """docs/config.md: one table of every key, generated (`nncert config --markdown`);
    a test keeps the committed file equal to this."""
    rows = ["# Config keys", "",
            "Generated by `nncert config --markdown` from `verifier/config.py`; do not edit by hand.",
            "Every key is set in a YAML file (`--config`, nested by section) or by `--set KEY=VALUE`;",
            "the keys with a flag also by that flag of `nncert verify`.", "",
            "| key | type | default | accepts | flag | meaning |", "|---|---|---|---|---|---|"]
    for k in keys():
        portable = isinstance(k.check, Int) and callable(k.check.hi)   # the CPU count, as "N"
        accepts = k.check.expected("N") if portable else k.check.expected()
        rows.append(f"| `{k.name}` | {k.check.type.__name__} | `{shown(k.default)}` | {_cell(accepts)} | "
                    f"{'`' + k.flag + '`' if k.flag else ''} | {_cell(k.help)} |")
    return "\n".join(rows) + "\n"
