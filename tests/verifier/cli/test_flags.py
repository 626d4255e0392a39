"""`nncert verify`'s config flags and the config docs, all generated from the key
declarations in `verifier.config`: what they say and accept is what the key says and
accepts, and the committed docs are the generated text."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from verifier.cli import build_parser
from verifier.cli.flags import flag_overrides
from verifier.config import (Config, ConfigError, config_to_dict, describe_markdown, flags_markdown, key, keys,
                             load_config)

ROOT = Path(__file__).resolve().parents[3]
FLAGGED = {k.flag: k for k in keys() if k.flag}


def _verify_args(*flags: str):
    return build_parser().parse_args(["verify", "m.onnx", "p.vnnlib", *flags])


def test_the_flagged_keys_are_the_ones_a_user_sets_on_most_runs():
    assert {f: k.name for f, k in FLAGGED.items()} == {
        "--device": "device", "--threads": "threads", "--timeout": "timeout", "--seed": "seed",
        "--method": "bounds.method", "--workers": "bab.workers", "--backend": "bab.backend", "--address": "bab.address"}


def test_each_flag_sets_its_key_through_the_same_check():
    args = _verify_args("--timeout", "12.5", "--method", "crown", "--seed", "7", "--threads", "1",
                        "--device", "cpu")
    config = load_config(None, flag_overrides(args))
    assert (config.timeout, config.bounds.method, config.seed, config.threads, config.device) == \
        (12.5, "crown", 7, 1, "cpu")
    assert load_config(None, flag_overrides(_verify_args("--timeout", "inf"))).timeout == float("inf")
    # Flags not given leave the YAML / --set value alone; a given flag comes after --set and wins.
    assert flag_overrides(_verify_args()) == []
    assert load_config(None, ["timeout=3"] + flag_overrides(_verify_args("--timeout", "4"))).timeout == 4.0


@pytest.mark.parametrize("flag, value, words", [
    ("--timeout", "-3", ">= 0"), ("--timeout", "abc", "number of seconds"), ("--threads", "1.5", "integer"),
    ("--seed", "-1", "integer"), ("--address", "head-node", "HOST:PORT")])
def test_a_bad_value_is_refused_with_the_flag_and_what_it_accepts(flag, value, words):
    with pytest.raises(ConfigError) as err:
        flag_overrides(_verify_args(flag, value))
    assert str(err.value).startswith(f"{flag}: expected") and words in str(err.value) and repr(value) in str(err.value)


def test_choices_and_help_come_from_the_key():
    parser = build_parser()
    verify = next(a for a in parser._subparsers._group_actions[0].choices["verify"]._actions  # noqa: SLF001
                  if "--method" in a.option_strings)
    assert tuple(verify.choices) == FLAGGED["--method"].check.values
    assert FLAGGED["--method"].help in verify.help and "bounds.method" in verify.help
    with pytest.raises(SystemExit):
        _verify_args("--method", "beta-crown")


def test_a_flag_must_be_written_as_a_long_option():
    with pytest.raises(ValueError, match="lower-case"):
        key(1, help="x", check=FLAGGED["--seed"].check, flag="-s")


def test_docs_config_md_is_the_generated_table():
    text = (ROOT / "docs" / "config.md").read_text()
    assert text == describe_markdown(), "regenerate: nncert config --markdown > docs/config.md"
    assert text.count("\n| `") == len(keys()) == sum(1 for _ in _leaves(Config()))


def test_readme_flag_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- config-flags")
    block = readme[readme.index("\n", start) + 1:readme.index("<!-- /config-flags -->")]
    assert block == flags_markdown(), "regenerate from verifier.config.flags_markdown()"


def test_config_yaml_is_the_defaults_and_reads_back(tmp_path, capsys):
    from verifier.cli import main

    assert main(["config", "--yaml"]) == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text) == config_to_dict(Config())
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert load_config(path) == Config()


def _leaves(obj):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value)
        else:
            yield f.name
