"""The JSON report every computing command writes, and the checks on output paths.

One schema for `verify`, `bounds`, `lipschitz` and `check` (documented in
docs/report.md), so that a script reads any of them the same way:

    schema     "nncert-report/1"; the number changes when a field changes meaning
    command    "verify" | "bounds" | "lipschitz" | "check"
    verdict    verify: sat | unsat | unknown | timeout | error;
               lipschitz and bounds: "bound" | timeout | error; check: accepted | rejected | error
    reason     one line for a person
    method     one of METHODS (empty when nothing was computed)
    time       seconds: "startup" (interpreter start to command start, when known),
               "total" (command start to the report), and per phase
    progress   what the run had done when it ended (domains bounded, open, best bound...)
    versions   nncert, torch, onnxruntime, python

Command-specific fields sit beside these. Output paths are checked before a run
starts (`check_output_path`), so a typo in one never costs the run.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Optional

from verifier import __version__

__all__ = ["SCHEMA", "METHODS", "OutputPathError", "check_output_path", "write_text", "write_report",
           "versions", "startup_seconds"]

SCHEMA = "nncert-report/1"
# The fixed vocabulary of `method`: the strongest procedure that produced the answer.
METHODS = ("", "attack", "ibp", "crown", "alpha-crown", "milp", "bab-input", "bab-activation", "sdp", "sdp-lowrank",
           "naive", "sdp-neuron", "sdp-layer", "sdp-layerwise", "local", "checker")


class OutputPathError(ValueError):
    """An output file that cannot be written (missing folder, a directory, no permission)."""


def check_output_path(path: Optional[str | Path], what: str) -> None:
    """Raise OutputPathError unless `path` can be created or replaced as a regular file.

    Checked before any work, so a run never ends in a traceback over a typo. Nothing is
    created: the folder must exist already (a silently created folder hides typos).
    """
    if path is None or str(path) == "":
        return
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(f"{what} '{path}': is a directory; expected a file path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"{what} '{path}': folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise OutputPathError(f"{what} '{path}': not writable")


def write_text(path: str | Path, text: str) -> None:
    """Write atomically (temporary file, then rename), with the usual 0644-style mode.

    A reader never sees half a file, and a kill mid-write leaves the old one. mkstemp
    creates files 0600; the mode is reset from the umask so results files and reports
    get the same permissions as any file the user creates.
    """
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=str(p.parent) if str(p.parent) else ".", prefix=f".{p.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_VERSIONS: dict[str, str] = {}


def versions() -> dict[str, str]:
    """Versions of nncert and what it computes with (cached: the watchdog must not import)."""
    if not _VERSIONS:
        # lazy: torch (about 2 s) and onnxruntime; this module is on the CLI's start-up path
        import onnxruntime
        import torch

        _VERSIONS.update({"nncert": __version__, "torch": torch.__version__,
                          "onnxruntime": onnxruntime.__version__, "python": platform.python_version()})
    return dict(_VERSIONS)


def startup_seconds() -> Optional[float]:
    """Seconds from the interpreter's start to now, from the process's start time (Linux)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays become floats and lists; inf and nan stay
    readable as strings rather than invalid JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_report(path: Optional[str | Path], command: str, fields: dict[str, Any]) -> None:
    """Write the report of `command` with the common fields first; no-op without a path."""
    if not path:
        return
    data: dict[str, Any] = {"schema": SCHEMA, "command": command, "verdict": "", "reason": "", "method": "",
                            "time": {}, "progress": {}}
    data.update(fields)
    if data["method"] not in METHODS:
        raise ValueError(f"report method '{data['method']}' is not in the fixed vocabulary")
    data.setdefault("versions", versions())
    write_text(path, json.dumps(_jsonable(data), indent=2) + "\n")
