"""`nncert verify`'s config flags, generated from the keys that declare one.

A key's flag, help, choices and check live on its declaration in `verifier.config`;
this module only turns them into argparse arguments and back into `--set` overrides,
so a flag cannot drift from the key it sets (its help, its default, what it accepts).
"""
from __future__ import annotations

import argparse
from typing import Any

from verifier.config import Choice, KeyInfo, check_value, keys, shown

__all__ = ["add_config_flags", "flag_overrides"]

_DEST = "config_flag:"   # argparse dest prefix: cannot collide with an ordinary option


def _flagged() -> list[KeyInfo]:
    return [k for k in keys() if k.flag]


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One option per flagged key; each defaults to None ("not given"), so the YAML file
    and `--set` still decide unless the flag is on the command line."""
    for k in _flagged():
        choices = k.check.values if isinstance(k.check, Choice) else None
        parser.add_argument(k.flag, dest=_DEST + k.name, default=None, choices=choices,
                            metavar=None if choices else k.flag.lstrip("-").upper().replace("-", "_"),
                            help=f"{_escaped(k.help)} (config key {k.name}; default {shown(k.default)}"
                                 + ("" if choices else f"; accepts {_escaped(k.check.expected())}") + ")")


def _escaped(text: str) -> str:
    """argparse %-formats help strings."""
    return text.replace("%", "%%")


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The given flags as `KEY=VALUE` overrides, each checked here so that a bad value is
    refused with the flag's name (`--timeout: expected ...`); a ConfigError otherwise."""
    out = []
    for k in _flagged():
        text: Any = getattr(args, _DEST + k.name, None)
        if text is not None:
            check_value(k, text)
            out.append(f"{k.name}={text}")
    return out
