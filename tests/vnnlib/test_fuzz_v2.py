"""Fuzzing VNN-LIB 2.0: any text after `(vnnlib-version <2.0>)` either lowers to a Query
(and its Spec, or a clean UnsupportedQuery) or raises VnnlibError; never another
exception, from the standard's parser or from our lowering."""
from __future__ import annotations

import random
import re

import pytest

import vnnlib
from vnnlib import VnnlibError
from vnnlib.query import parse_query
from vnnlib.standard import vendor_dir

pytestmark = pytest.mark.skipif(not (vendor_dir() / "vnnlib" / "__init__.py").is_file(),
                                reason="the standard's VNN-LIB parser is not installed beside the venv "
                                       "(`make` installs it into .venv/nncert-vendor)")

SEEDS = [
    "(vnnlib-version <2.0>)\n(declare-network N (declare-input X float32 [1,2]) (declare-output Y float32 [2]))\n"
    "(assert (>= X[0,0] 0.0)) (assert (<= X[0,0] 1.0)) (assert (>= X[0,1] -1.0)) (assert (<= X[0,1] 1.0))\n"
    "(assert (or (> Y[0] Y[1]) (and (<= (+ (* 2.0 Y[0]) (- Y[1] 0.5)) 3.0) (!= Y[1] 0.25))))\n",
    "(vnnlib-version <2.0>)\n(declare-network f (declare-input X real [2]) (declare-hidden H real [3] \"h\") "
    "(declare-output Y real [1]))\n(declare-network g (equal-to f) (declare-input X2 real [2]) "
    "(declare-output Y2 real [1]))\n(assert (and (>= X[0] 0.0) (<= X[0] 1.0) (>= X[1] 0.0) (<= X[1] 1.0)))\n"
    "(assert (== X[1] X2[1])) (assert (>= X2[0] -1.0)) (assert (<= X2[0] X[0]))\n"
    "(assert (< (* Y[0] (- Y2[0] H[2])) (+ X[0] 0.5)))\n",
]
TOKENS = ["(", ")", "assert", "and", "or", "<=", ">=", "<", ">", "==", "!=", "+", "-", "*", "X[0]", "X[1]",
          "X[0,0]", "Y[0]", "Y[1]", "Y2[0]", "H[2]", "0.0", "1.5", "-2.0", "3", "1e-3", "real", "float32",
          "declare-input", "declare-output", "declare-hidden", "declare-network", "equal-to", "[2]", "[]",
          "\"h\"", ";c\n", "\n", "X", "Z[0]",
          # what the standard's parser (1.0.2) once let escape: a number out of a double's or
          # int64's range (IndexError "stod"/"stoll"), a non-ASCII character (its message
          # not UTF-8)
          "1" + "0" * 400 + ".0", "0." + "0" * 320 + "1", "9" * 30, "é", "X∂"]


def _join(tokens: list[str]) -> str:
    out = ""
    for tok in tokens:
        out += tok if (out.endswith("(") or tok == ")" or not out) else " " + tok
    return out


def _mutate(text: str, rng: random.Random) -> str:
    """Delete, insert or replace a few tokens after the version form."""
    tokens = re.findall(r"\(|\)|[^\s()]+", text)
    head, body = tokens[:4], tokens[4:]
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        k = rng.randrange(len(body) + 1)
        if op < 0.4 and body:
            del body[min(k, len(body) - 1)]
        elif op < 0.8:
            body.insert(k, rng.choice(TOKENS))
        elif body:
            body[min(k, len(body) - 1)] = rng.choice(TOKENS)
    return _join(head) + "\n" + _join(body)


def test_mutated_queries_lower_or_fail_cleanly():
    rng = random.Random(0)
    outcomes = {"query": 0, "error": 0}
    for i in range(10_000):
        text = _mutate(SEEDS[i % len(SEEDS)], rng)
        try:
            vnnlib.parse_text(text, "fuzz.vnnlib")   # the one-pass box reading, where it applies
        except VnnlibError as exc:
            assert str(exc).startswith("fuzz.vnnlib"), str(exc)
        try:
            query = parse_query(text, "fuzz.vnnlib")
        except VnnlibError as exc:
            assert str(exc).startswith("fuzz.vnnlib"), str(exc)
            outcomes["error"] += 1
            continue
        outcomes["query"] += 1
        try:
            query.to_spec(stand_ins=True)
        except VnnlibError:
            pass
    assert outcomes["query"] > 100 and outcomes["error"] > 5000, outcomes   # both paths were exercised
