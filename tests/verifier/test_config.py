"""The config tree keeps its word: every key is declared once with its type, its allowed
values and its help text, and the same check runs whichever way a value comes in (YAML,
`--set`, a CLI flag, Python). A bad value is a ConfigError naming the key and what was
expected (exit 2 from the CLI), never an internal error and never silently accepted."""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml
from onnx import helper

import vnnlib
from tests.op_cases import make_model
from verifier.config import (AttackConfig, BabConfig, BoundsConfig, Choice, Config, ConfigError, config_to_dict,
                             describe, load_config, resolve_device, with_overrides)

ROOT = Path(__file__).resolve().parents[2]


def _set(*items: str) -> Config:
    return with_overrides(Config(), list(items))


def _leaves(cls: type = Config, prefix: str = "") -> list[tuple[str, type, dataclasses.Field]]:
    """(dotted key, owning class, field) for every key of the tree, found by walking it."""
    out = []
    for f in dataclasses.fields(cls):
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            out += _leaves(sub, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", cls, f))
    return out


# ----------------------------------------------------------- one test per defect


def test_nan_alpha_lr_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"bounds\.alpha_lr.*finite.*nan"):
        _set("bounds.alpha_lr=nan")


def test_negative_alpha_lr_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"bounds\.alpha_lr.*> 0"):
        _set("bounds.alpha_lr=-1")


def test_infinite_step_size_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"attack\.step_size.*finite"):
        _set("attack.step_size=inf")


def test_negative_input_split_max_dims_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"bab\.input_split_max_dims.*>= 0"):
        _set("bab.input_split_max_dims=-1")


def test_threads_beyond_the_cpu_count_are_refused_and_the_count_is_named() -> None:
    with pytest.raises(ConfigError, match="threads") as info:
        _set("threads=1000")
    assert str(os.cpu_count()) in str(info.value)
    assert _set("threads=0").threads == 0  # torch's default


def test_huge_batch_size_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"bab\.batch_size.*1048576"):
        _set("bab.batch_size=1e12")
    assert _set("bab.batch_size=1e3").bab.batch_size == 1000


def test_python_constructors_check_like_yaml_and_set() -> None:
    with pytest.raises(ConfigError, match=r"'timeout'.*>= 0.*-1"):
        Config(timeout=-1)
    with pytest.raises(ConfigError, match=r"'timeout'.*'abc'"):
        Config(timeout="abc")
    with pytest.raises(ConfigError, match=r"bounds\.alpha_lr.*nan"):
        BoundsConfig(alpha_lr=float("nan"))
    with pytest.raises(ConfigError, match=r"bab\.batch_size"):
        BabConfig(batch_size=0)
    with pytest.raises(ConfigError, match=r"bab\.max_domains"):
        dataclasses.replace(Config().bab, max_domains=10 ** 10)
    with pytest.raises(ConfigError, match="bounds"):
        Config(bounds={"method": "crown"})  # type: ignore[arg-type]


def test_integer_keys_refuse_fractions_and_words() -> None:
    with pytest.raises(ConfigError, match=r"bab\.batch_size.*1\.5"):
        _set("bab.batch_size=1.5")  # was read as 1
    with pytest.raises(ConfigError, match=r"attack\.steps"):
        _set("attack.steps=many")
    with pytest.raises(ConfigError, match=r"attack\.restarts"):
        AttackConfig(restarts=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="seed"):
        Config(seed=True)


def test_timeout_accepts_inf_as_no_limit_but_not_nan() -> None:
    assert math.isinf(_set("timeout=inf").timeout)
    assert Config(timeout=60).timeout == 60.0 and isinstance(Config(timeout=60).timeout, float)
    with pytest.raises(ConfigError, match="timeout"):
        _set("timeout=nan")


def test_devices_torch_does_not_offer_are_config_errors() -> None:
    import torch

    with pytest.raises(ConfigError, match=r"'device'.*cpu.*'tpu'"):
        _set("device=tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            _set("device=cuda")
        with pytest.raises(ConfigError, match="no CUDA"):
            Config(device="cuda:0")
    else:
        with pytest.raises(ConfigError, match="CUDA device"):
            _set(f"device=cuda:{torch.cuda.device_count()}")
    assert Config(device="cpu").device == "cpu"


def test_device_auto_is_the_default_and_resolves_to_what_torch_has() -> None:
    import torch

    assert Config().device == "auto" and _set("device=auto").device == "auto"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"  # other names unchanged
    if not torch.cuda.is_available():
        assert resolve_device(Config().device) == "cpu"
        with pytest.raises(ConfigError, match=r"'device'.*auto, cpu.*no CUDA.*'cuda'"):
            Config(device="cuda")  # auto never falls back silently when a user names cuda


def test_cli_bounds_on_the_default_device_prints_from_the_host(tmp_path) -> None:
    """bounds(device="auto") answers on cuda where there is one; the CLI moves it to the host.
    (`--device cuda` without CUDA exiting 2: test_cli_unknown_device_exits_two_with_one_line.)"""
    onnx_path, spec_path = _tiny(tmp_path)
    proc = _cli("bounds", str(onnx_path), str(spec_path))
    assert proc.returncode == 0 and "y[0] in [" in proc.stdout, proc.stderr


def test_yaml_syntax_error_is_one_line_with_its_location(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("bounds:\n  method: crown\n attack: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"{bad}:3:") and ": invalid YAML: " in message, message


def _tiny(tmp_path: Path) -> tuple[Path, Path]:
    W = np.array([[1.0, -1.0], [0.5, 2.0]], np.float32)
    model = make_model([helper.make_node("Gemm", ["X", "W", "b"], ["h"]), helper.make_node("Relu", ["h"], ["Y"])],
                       {"W": W, "b": np.array([0.1, -0.2], np.float32)}, (1, 2), (1, 2))
    onnx_path, spec_path = tmp_path / "tiny.onnx", tmp_path / "tiny.vnnlib"
    onnx_path.write_bytes(model.SerializeToString())
    vnnlib.write_vnnlib(spec_path, vnnlib.robustness_spec(np.zeros(2), 0.1, 0, 2))
    return onnx_path, spec_path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "verifier.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_cli_unknown_device_exits_two_with_one_line(tmp_path) -> None:
    import torch

    onnx_path, spec_path = _tiny(tmp_path)
    runs = [(_cli("verify", str(onnx_path), str(spec_path), "--set", "device=tpu"), "tpu")]
    if not torch.cuda.is_available():
        runs.append((_cli("verify", str(onnx_path), str(spec_path), "--device", "cuda"), "no CUDA"))
    for proc, needle in runs:
        err = proc.stderr.strip()
        assert proc.returncode == 2, (proc.returncode, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err and needle in err and "device" in err, err


# ------------------------------------------------------- the tree as a whole


def test_every_key_declares_help_a_check_and_a_matching_type() -> None:
    leaves = _leaves()
    assert len(leaves) >= 30 and {"timeout", "bounds.alpha_lr", "bab.clip_joint"} <= {k for k, _, _ in leaves}
    for name, cls, f in leaves:
        assert f.metadata.get("help", "").strip(), f"{name} has no help text"
        check = f.metadata.get("check")
        assert callable(check) and check.expected(), f"{name} has no check"
        assert typing.get_type_hints(cls)[f.name] is check.type, f"{name}: annotation and check disagree"
        assert check(getattr(cls(), f.name)) == getattr(cls(), f.name), f"{name}: its default fails its check"


def test_defaults_keep_their_values() -> None:
    c = Config()
    assert (c.device, c.threads, c.proof, c.timeout, c.seed) == ("auto", 1, False, 300.0, 0)
    assert (c.bounds.method, c.bounds.alpha_lr, c.attack.step_size, c.bab.batch_size, c.bab.max_domains,
            c.bab.input_split_max_dims, c.bab.branching) == ("alpha-crown", 0.25, 0.25, 256, 2_000_000, 16, "fsb")


def test_defaults_round_trip_through_yaml_and_set(tmp_path) -> None:
    path = tmp_path / "defaults.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(Config())))
    assert load_config(path) == Config()
    as_text = [f"{name}={functools.reduce(getattr, name.split('.'), Config())}" for name, _, _ in _leaves()]
    assert with_overrides(Config(), as_text) == Config()


def test_describe_shows_help_and_allowed_values_next_to_each_key() -> None:
    text = "\n".join(describe())
    assert "bounds.method: str = 'alpha-crown'" in text
    for name, _, f in _leaves():
        line_at = text.index(f"{name}: ")
        block = text[line_at:line_at + 400]
        assert f.metadata["check"].expected() in block and f.metadata["help"] in block, name


def test_yaml_values_are_checked_and_named_with_the_file(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("bab:\n  max_domains: 0\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: config key 'bab\.max_domains'"):
        load_config(path)
    path.write_text("timeout: .inf\nbab:\n  clip_joint: yes\n")
    cfg = load_config(path)
    assert math.isinf(cfg.timeout) and cfg.bab.clip_joint is True


def test_method_names_are_declared_once() -> None:
    """verifier.config names the methods; the bounding API's list (relaxations may not
    import the verifier) is the same, and the CLI, the config checks and the SDP front end
    take theirs from config."""
    import relaxations
    from verifier import sdp
    from verifier.cli import build_parser
    from verifier.config import PROPAGATION_METHODS, SDP_METHODS, VERIFY_METHODS

    assert tuple(relaxations.METHODS) == PROPAGATION_METHODS and sdp.METHODS == SDP_METHODS
    assert BoundsConfig.__dataclass_fields__["method"].metadata["check"].expected() == \
        Choice(VERIFY_METHODS).expected()
    verify = next(a for a in build_parser()._subparsers._group_actions[0].choices["verify"]._actions
                  if "--method" in a.option_strings)
    assert tuple(verify.choices) == VERIFY_METHODS
