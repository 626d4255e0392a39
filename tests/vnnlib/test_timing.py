"""A large spec parses in seconds: real benchmarks ship files of tens of megabytes."""

from __future__ import annotations

import time

import numpy as np

import vnnlib


def _large_spec_text(n_inputs: int, n_outputs: int = 10) -> str:
    rng = np.random.default_rng(0)
    centre = rng.random(n_inputs)
    parts = ["; generated l-inf robustness property\n"]
    parts += [f"(declare-const X_{i} Real)\n" for i in range(n_inputs)]
    parts += [f"(declare-const Y_{j} Real)\n" for j in range(n_outputs)]
    for i, c in enumerate(centre.tolist()):
        if i % 1000 == 0:
            parts.append(f"; inputs from {i}\n")
        parts.append(f"(assert (<= X_{i} {c + 0.01!r}))\n(assert (>= X_{i} {c - 0.01!r}))\n")
    parts.append("(assert (or\n")
    parts += [f"    (and (>= Y_{j} Y_0))\n" for j in range(1, n_outputs)]
    parts.append("))\n")
    return "".join(parts)


def test_twenty_megabyte_spec_parses_quickly() -> None:
    text = _large_spec_text(175_000)
    assert len(text) > 19_000_000
    start, cpu = time.perf_counter(), time.process_time()
    spec = vnnlib.parse_text(text, "generated.vnnlib")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"\nparsed {len(text) / 1e6:.1f} MB in {elapsed:.2f} s wall, {cpu:.2f} s CPU")
    assert elapsed < 60.0  # a hang guard, not a benchmark: the machine may be shared
    (disjunct,) = spec.disjuncts
    assert spec.n_inputs == 175_000 and len(disjunct.outputs) == 9
    assert np.all(disjunct.region.upper - disjunct.region.lower > 0.0199)
