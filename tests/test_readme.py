"""The README's Python example runs as written, so that it cannot rot.

Every ```python block of README.md is run as a script of its own, in a fresh
interpreter whose working directory is an empty temporary folder (the example writes
its `model.onnx` there). A block that needs a name it never defined fails here.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a Markdown text, in order."""
    return [m.group(1) for m in _BLOCK.finditer(text)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_a_python_example() -> None:
    assert BLOCKS, "README.md has no ```python block"


def test_block_extraction() -> None:
    text = "x\n```python\na = 1\n```\n```sh\nls\n```\n```python\nb = 2\nprint(b)\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = 2\nprint(b)\n"]


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: f"block{i}")
def test_readme_python_block_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"readme_block{index}.py"
    script.write_text(BLOCKS[index], encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "2")
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"README python block {index} failed:\n{run.stderr[-3000:]}"
    if "verifier.verify(" in BLOCKS[index]:
        first = run.stdout.split()[0] if run.stdout.split() else ""
        assert first in ("sat", "unsat", "unknown", "timeout"), run.stdout
