"""What each config key accepts: the checks a key declares (`verifier.config.key`), the
error they raise, and the device check's resolution at run time; and the same checks for
the settings objects outside the config tree (`LocalSearch`, `SdpOptions`,
`Perturbation`: `setting`, `check_settings`), with the one check of an argument that
takes such an object (`instance_of`, `options_or_default`).

Torch-free, as `verifier.config` is (the CLI builds its parser from them on every call);
`Device` imports torch only for a name other than auto or cpu.
"""
from __future__ import annotations

import math
import numbers
import re
import reprlib
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional, TypeVar, Union

__all__ = ["ConfigError", "Check", "Int", "Real", "Share", "Bool", "Choice", "Device", "RayAddress", "resolve_device",
           "checked", "setting", "check_settings", "instance_of", "options_or_default"]

O = TypeVar("O")


class ConfigError(ValueError):
    """A config file, override or argument that does not fit the config tree, or a field
    of a settings object (`check_settings`) that its check refuses.

    A ValueError, so Python callers may catch it as one; the CLI maps it to exit 2.
    """


class _Rejected(Exception):
    """Raised by a check with the phrase that completes "expected ..."."""


# --------------------------------------------------------------------------- checks


class Check:
    """What one key accepts: its Python type, a phrase for messages and `describe()`,
    a parser for text (`--set`, quoted YAML) and the test itself."""

    type: type = object

    def expected(self) -> str:
        """The allowed values, in words ("an integer >= 0")."""
        raise NotImplementedError

    def parse(self, text: str) -> Any:
        """Text from `--set` or YAML, read as this key's type; unreadable text is
        returned unchanged so that `__call__` rejects it with the usual message."""
        return text

    def __call__(self, value: Any) -> Any:
        """The value, normalised to `type`, or `_Rejected(expected)`."""
        raise NotImplementedError


def _int_of(value: Any) -> Optional[int]:
    """An int for int-like values (3, 3.0, numpy ints); None for 1.5, nan, bools and text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


@dataclass(frozen=True)
class Int(Check):
    """An integer in [lo, hi]; `hi` may be a function, for limits of this machine."""

    lo: int
    hi: Union[int, Callable[[], int], None] = None
    note: str = ""

    type = int

    def _hi(self) -> Optional[int]:
        return self.hi() if callable(self.hi) else self.hi

    def expected(self, hi: Any = None) -> str:
        """`hi` stands in for the upper limit: docs/config.md writes "N" for this
        machine's CPU count so that it reads the same on every machine."""
        hi = self._hi() if hi is None else hi
        text = f"an integer >= {self.lo}" if hi is None else f"an integer from {self.lo} to {hi}"
        return f"{text} ({self.note.format(hi=hi)})" if self.note else text

    def parse(self, text: str) -> Any:
        try:
            return int(text)
        except ValueError:
            pass
        try:  # "1e3" is a whole number; "1.5" is read so that it is refused as a number
            v = float(text)
        except ValueError:
            return text
        return int(v) if v.is_integer() else v

    def __call__(self, value: Any) -> int:
        v = _int_of(value)
        hi = self._hi()
        if v is None or v < self.lo or (hi is not None and v > hi):
            raise _Rejected(self.expected())
        return v


@dataclass(frozen=True)
class Real(Check):
    """A number > lo (or >= lo; lo None: no lower limit); finite unless `inf` says what
    +inf means."""

    lo: Optional[float]
    strict: bool = False
    inf: str = ""          # what +inf means, when it is allowed ("no limit")
    unit: str = ""

    type = float

    def expected(self) -> str:
        what = ("a number" if self.inf else "a finite number") + (f" of {self.unit}" if self.unit else "")
        text = what if self.lo is None else f"{what} {'>' if self.strict else '>='} {self.lo:g}"
        return f"{text}, or inf ({self.inf})" if self.inf else text

    def parse(self, text: str) -> Any:
        try:
            return float(text)
        except ValueError:
            return text

    def __call__(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _Rejected(self.expected())
        v = float(value)
        ok = not math.isnan(v) and (math.isfinite(v) or (v > 0 and bool(self.inf)))
        if not ok or (self.lo is not None and (v < self.lo or (self.strict and v == self.lo))):
            raise _Rejected(self.expected())
        return v


@dataclass(frozen=True)
class Share(Real):
    """A share of something (of the time left, say): a number in [0, 1]."""

    def expected(self) -> str:
        return "a number between 0 and 1"

    def __call__(self, value: Any) -> float:
        v = super().__call__(value)
        if v > 1:
            raise _Rejected(self.expected())
        return v


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class Bool(Check):
    """true or false; text accepts yes/no, on/off and 1/0 as YAML does, and a numpy bool
    (a flag read from an array) is taken as its Python bool."""

    type = bool

    def expected(self) -> str:
        return "true or false"

    def parse(self, text: str) -> Any:
        low = text.strip().lower()
        return True if low in _TRUE else False if low in _FALSE else text

    def __call__(self, value: Any) -> bool:
        np = sys.modules.get("numpy")   # a numpy bool exists only once numpy is loaded: no import here
        if np is not None and isinstance(value, np.bool_):
            return bool(value)
        if not isinstance(value, bool):
            raise _Rejected(self.expected())
        return value


@dataclass(frozen=True)
class Choice(Check):
    """One of a fixed set of names."""

    values: tuple[str, ...]

    type = str

    def expected(self) -> str:
        return "one of " + ", ".join(self.values)

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.values:
            raise _Rejected(self.expected())
        return value


_RAY_ADDRESS = re.compile(r"(?:ray://)?[A-Za-z0-9._-]*:\d{1,5}")


@dataclass(frozen=True)
class RayAddress(Check):
    """Where a Ray cluster is: empty (none named: a local one is started), `auto` (the one
    this machine runs), HOST:PORT or ray://HOST:PORT. Only the form is checked here;
    whether anything answers there is checked when the run connects."""

    type = str

    def expected(self) -> str:
        return "empty (start a local cluster), auto, HOST:PORT or ray://HOST:PORT"

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or not (value in ("", "auto") or _RAY_ADDRESS.fullmatch(value)):
            raise _Rejected(self.expected())
        return value


_CUDA = re.compile(r"cuda(?::(\d+))?")


@dataclass(frozen=True)
class Device(Check):
    """A torch device that this torch can use: a CUDA name on a CPU-only torch would
    otherwise fail deep inside the first tensor op, as an internal error. `auto` (the
    default) is always accepted: `resolve_device` turns it into cuda or cpu at run time."""

    type = str

    def expected(self) -> str:
        return "auto (cuda when torch sees a CUDA device, else cpu); cpu; cuda or cuda:N where torch has CUDA; " \
               "mps where available"

    def __call__(self, value: Any) -> str:
        if value in ("auto", "cpu"):  # no torch import, so the config module loads and checks fast
            return value
        import torch  # lazy: torch (about 2 s) only for a device other than auto or cpu

        n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        mps = getattr(torch.backends, "mps", None)
        has_mps = bool(mps is not None and mps.is_available())
        offers = ["auto", "cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(n_cuda)] if n_cuda else []) \
            + (["mps"] if has_mps else [])
        choices = ", ".join(offers)
        match = _CUDA.fullmatch(value) if isinstance(value, str) else None
        if match and not n_cuda:
            raise _Rejected(f"one of {choices} (torch here has no CUDA)")
        if match and match.group(1) is not None and int(match.group(1)) >= n_cuda:
            raise _Rejected(f"one of {choices} (this machine has {n_cuda} CUDA device(s))")
        if not match and value not in offers:
            raise _Rejected(f"one of {choices} (what this torch offers)")
        return value


def resolve_device(name: str) -> str:
    """The concrete torch device for a config value: `auto` is "cuda" when torch sees a
    CUDA device and "cpu" otherwise; every other name is returned unchanged (it has
    passed the `Device` check already). Call it where a device is used, not where the
    config is built, so a config file written on one machine means the same on another."""
    if name != "auto":
        return name
    import torch  # lazy: torch (about 2 s) only for `auto`; this module is on the CLI's start-up path

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------- settings objects


def checked(name: str, value: Any, check: Check) -> Any:
    """`value` as `check` normalises it (60 -> 60.0), or a ConfigError
    "NAME: expected <what check accepts>, got VALUE": the words of every config key's
    message, for a config key and a settings object's field alike."""
    try:
        return check(value)
    except _Rejected as exc:
        raise ConfigError(f"{name}: expected {exc}, got {value!r}") from None


def setting(default: Any, check: Check) -> Any:
    """A field of a settings object outside the config tree (`LocalSearch`, `SdpOptions`,
    `Perturbation`) with the check it meets, declared on the field as a config key's is;
    `check_settings` runs it."""
    return field(default=default, metadata={"check": check})


def check_settings(obj: Any) -> None:
    """Runs the check of every `setting` field of the frozen dataclass `obj` (call it from
    `__post_init__`) and keeps each normalised value; a refused one is a ConfigError
    naming the field as `Class.field`. Such objects meet the checks of the config's keys,
    so a timeout or a step count follows one rule and says so in one way wherever it is
    set."""
    for f in fields(obj):
        if "check" in f.metadata:
            value = getattr(obj, f.name)
            normal = checked(f"{type(obj).__name__}.{f.name}", value, f.metadata["check"])
            if normal is not value:
                object.__setattr__(obj, f.name, normal)   # frozen: set once, here


def instance_of(name: str, value: object, cls: type[O], hint: str = "") -> O:
    """`value` if it is a `cls`, else a TypeError that says what to pass.

    For the arguments that take a settings object (a `BoundsConfig`, `SdpOptions`,
    `LocalSearch`, `Perturbation`, ...): a dict in its place, or a call written against
    an older signature with a number where the object now stands, would otherwise fail
    far from the call on a missing attribute, or run with the value in the wrong place.
    `hint` (an example, or what the object holds) follows the class name in parentheses.
    """
    if isinstance(value, cls):
        return value
    what = f"{cls.__name__} ({hint})" if hint else cls.__name__
    raise TypeError(f"{name} must be a {what}, got {type(value).__name__} {reprlib.repr(value)}")


def options_or_default(name: str, value: object, cls: type[O], hint: str = "") -> O:
    """`cls()` for None (the argument left out: the class's defaults), else `instance_of`'s
    answer: for the arguments whose default is None."""
    return cls() if value is None else instance_of(name, value, cls, hint)
