"""The one-pass reading of a plain 2.0 query's box (``vnnlib.plain_box``) against the
whole AST's lowering: the same Spec, or the same error, wherever it applies, and a
refusal (``None``) wherever it could read a query otherwise."""
from __future__ import annotations

import glob
import random

import numpy as np
import pytest

import vnnlib
from tests.conftest import BENCH, needs_shared
from vnnlib import VnnlibError
from vnnlib.loader import _whole_query_spec
from vnnlib.plain_box import plain_box_query, plain_box_spec
from vnnlib.query import parse_query
from vnnlib.standard import parse_standard, vendor_dir
from vnnlib.writer import format_vnnlib2

pytestmark = pytest.mark.skipif(not (vendor_dir() / "vnnlib" / "__init__.py").is_file(),
                                reason="the standard's VNN-LIB parser is not installed beside the venv "
                                       "(`make` installs it into .venv/nncert-vendor)")

HEAD = ("(vnnlib-version <2.0>)\n(declare-network N\n (declare-input X float32 [2,3])\n"
        " (declare-output Y float32 [4])\n)\n")
OUT = "(assert (or (>= Y[0] Y[1]) (and (<= Y[2] 0.5) (> Y[3] -1.25))))\n"


def box_lines(lows, highs, form="(assert ({op} X[{i},{j}] {v}))") -> str:
    lines = []
    for k, (lo, hi) in enumerate(zip(lows, highs)):
        i, j = divmod(k, 3)
        lines.append(form.format(op=">=", i=i, j=j, v=lo))
        lines.append(form.format(op="<=", i=i, j=j, v=hi))
    return "\n".join(lines) + "\n"


LOWS = ["-0.5", "0.0", "1.25", "-3.0", "0.1", "2.0"]
HIGHS = ["0.5", "0.75", "1.5", "3.0", "0.30000000000000004", "2.0"]


def whole(text: str):
    """The standard's parse and the whole AST's lowering of ``text``: its Spec, or its
    error's type and message."""
    try:
        return _whole_query_spec(text, "q.vnnlib", parse_standard(text, "q.vnnlib"))
    except VnnlibError as exc:
        return type(exc), str(exc)


def loaded(text: str):
    """What ``vnnlib.parse_text`` makes of ``text`` (the one-pass reading where it applies)."""
    try:
        return vnnlib.parse_text(text, "q.vnnlib")
    except VnnlibError as exc:
        return type(exc), str(exc)


def fast(text: str):
    try:
        return plain_box_spec(text, "q.vnnlib")
    except VnnlibError as exc:
        return type(exc), str(exc)


def test_a_box_and_an_output_disjunction_read_in_one_pass_equal_the_whole_lowering():
    text = HEAD + box_lines(LOWS, HIGHS) + OUT
    spec = fast(text)
    assert spec is not None and spec == whole(text)
    region = spec.disjuncts[0].region
    np.testing.assert_array_equal(region.lower, [float(v) for v in LOWS])
    np.testing.assert_array_equal(region.upper, [float(v) for v in HIGHS])
    assert [c.strict.tolist() for c in spec.disjuncts[0].outputs] == [[False], [False, True]]
    assert vnnlib.parse_text(text, "q.vnnlib") == spec


@pytest.mark.parametrize("text", [
    # an input inside the output assertion (a row over inputs and outputs)
    HEAD + box_lines(LOWS, HIGHS) + "(assert (<= Y[0] X[0,0]))\n",
    # a comment naming the input, or a bound commented out: counted as a use
    HEAD + box_lines(LOWS, HIGHS) + "; X is the image\n" + OUT,
    HEAD + box_lines(LOWS, HIGHS) + "; (assert (<= X[0,0] 0.0))\n" + OUT,
    # numbers first, an indented line, a tab, two on a line, one over two lines
    HEAD + box_lines(LOWS, HIGHS).replace("(assert (>= X[0,0] -0.5))", "(assert (<= -0.5 X[0,0]))") + OUT,
    HEAD + box_lines(LOWS, HIGHS).replace("(assert (>= X[0,0] -0.5))", "  (assert (>= X[0,0] -0.5))") + OUT,
    HEAD + box_lines(LOWS, HIGHS).replace("(assert (>= X[0,0] -0.5))", "(assert (>=\tX[0,0] -0.5))") + OUT,
    HEAD + box_lines(LOWS, HIGHS).replace("(assert (>= X[0,0] -0.5))\n", "(assert (>= X[0,0] -0.5)) ") + OUT,
    HEAD + box_lines(LOWS, HIGHS).replace("(assert (>= X[0,0] -0.5))", "(assert (>= X[0,0]\n -0.5))") + OUT,
    # a bound inside a conjunction, and a box with no other assertion left
    HEAD + box_lines(LOWS[1:], HIGHS[1:]).replace("X[0,0]", "X[0,1]", 2)
    + "(assert (and (>= X[0,0] -0.5) (<= X[0,0] 0.5)))\n" + OUT,
    HEAD + box_lines(LOWS, HIGHS),
])
def test_every_form_it_does_not_read_is_left_to_the_whole_lowering(text):
    assert fast(text) is None
    assert loaded(text) == whole(text)


def test_what_it_reads_means_what_the_whole_lowering_says():
    cases = {
        "strict bounds close the box as the lowering's box does":
            box_lines(LOWS, HIGHS).replace("(<= X[1,2] 2.0)", "(< X[1,2] 2.0)").replace(">= X[0,0]", "> X[0,0]"),
        "a bound twice keeps the tighter":
            box_lines(LOWS, HIGHS) + "(assert (<= X[0,0] 0.25))\n(assert (>= X[0,0] -0.75))\n",
        "an empty box leaves no disjunct": box_lines(LOWS, HIGHS) + "(assert (>= X[1,0] 5.0))\n",
        "extra spaces": box_lines(LOWS, HIGHS, "(assert  ({op}  X [{i}, {j}]   {v} ) )"),
        "an output bound on its own line": box_lines(LOWS, HIGHS) + "(assert (<= Y[1] 7.0))\n",
    }
    for name, box in cases.items():
        text = HEAD + box + OUT
        spec = fast(text)
        assert spec is not None, name
        assert spec == whole(text), name
    unbounded = HEAD + box_lines(LOWS, HIGHS).replace("(assert (<= X[1,1] 0.30000000000000004))\n", "") + OUT
    assert fast(unbounded) == whole(unbounded)
    assert fast(unbounded)[0] is vnnlib.query.UnsupportedQuery and "X[1,1]" in fast(unbounded)[1]


def test_errors_after_the_box_keep_their_line():
    text = HEAD + box_lines(LOWS, HIGHS) + "(assert (<= (* Y[0] Y[1] Y[2] Y[3] Y[0] Y[1] Y[2]) 1.0))\n"
    assert fast(text) is None or fast(text) == whole(text)
    with pytest.raises(VnnlibError) as raised:
        vnnlib.parse_text(text, "q.vnnlib")
    assert raised.value.line in (None, 18)


def test_several_tensors_or_a_scalar_input_are_declined():
    two = ("(vnnlib-version <2.0>)\n(declare-network N\n (declare-input X float32 [2])\n"
           " (declare-input Z float32 [1])\n (declare-output Y float32 [1])\n)\n"
           "(assert (>= X[0] 0.0))\n(assert (<= X[0] 1.0))\n(assert (>= X[1] 0.0))\n(assert (<= X[1] 1.0))\n"
           "(assert (>= Z[0] 0.0))\n(assert (<= Z[0] 1.0))\n(assert (<= Y[0] 0.0))\n")
    assert fast(two) is None
    scalar = ("(vnnlib-version <2.0>)\n(declare-network N\n (declare-input X float32 [])\n"
              " (declare-output Y float32 [1])\n)\n(assert (>= X 0.0))\n(assert (<= X 1.0))\n(assert (<= Y[0] 0.0))\n")
    assert fast(scalar) is None


def test_random_queries_read_the_same_both_ways():
    """Seeded random queries over a [2,3] input: every box line in one of the forms this
    pass reads or leaves to the rest, valid or not as the standard sees it (an integer, an
    index out of range or of the wrong rank, a subnormal or overflowing number, a line
    before the declarations or inside another assertion), bounds missing or repeated,
    outputs and mixed rows sometimes. ``vnnlib.parse_text`` must give what the standard's
    parse and the whole lowering give: the same Spec, or the same error."""
    rng = random.Random(20261208)
    read_forms = ["(assert ({op} X[{i},{j}] {v}))", "(assert ({op} X[{i}, {j}] {v}))",
                  "(assert ({op}  X [ {i},{j} ]  {v}))", "(assert ({strict} X[{i},{j}] {v}))"]
    other_forms = ["  (assert ({op} X[{i},{j}] {v}))", "(assert ({rev} {v} X[{i},{j}]))",
                   "; (assert ({op} X[{i},{j}] {v}))", "(assert (and ({op} X[{i},{j}] {v})))",
                   "(assert ({op} X[{i}] {v}))", "(assert ({op} X[{i},{j},0] {v}))",
                   "(assert ({op} X[{i},{j}] {v})) junk",
                   "(assert ({op} X[{i},{j}] {v})))", "(assert (or ({op} X[{i},{j}] {v})"]
    reverse = {">=": "<=", "<=": ">="}
    numbers = [lambda: f"{rng.randint(0, 3)}.{rng.randint(0, 10**rng.randint(1, 17))}",
               lambda: f"-{rng.randint(0, 10**6)}.{rng.randint(0, 99)}",
               lambda: str(rng.randint(0, 3)),                                    # an integer: a type error
               lambda: "0." + "0" * rng.choice([300, 310, 320]) + "1",            # subnormal or underflow
               lambda: "1" + "0" * rng.choice([300, 308, 309, 400]) + ".0",       # near or past overflow
               lambda: "-0.0"]
    read = 0
    for _ in range(400):
        lines = []
        other = 0.0 if rng.random() < 0.5 else 0.08   # the share of lines in forms left to the rest
        odd = 0.0 if rng.random() < 0.5 else 0.03     # the share of numbers of the odd kinds
        for k in range(6):
            i, j = divmod(k, 3)
            if rng.random() < 0.03:
                i = 5   # out of range
            for op in (">=", "<="):
                for _ in range(rng.choice([0, 1, 1, 1, 1, 2])):
                    v = rng.choice(numbers[2:])() if rng.random() < odd else rng.choice(numbers[:2])()
                    form = rng.choice(other_forms if rng.random() < other else read_forms)
                    lines.append(form.format(op=op, rev=reverse[op], strict=op[0], i=i, j=j, v=v))
        rng.shuffle(lines)
        if rng.random() < 0.05:   # bound lines inside an assertion left open
            lines.insert(rng.randint(0, len(lines) // 2), "(assert (and (<= Y[0] 1.0)")
            lines.append("))")
        tail = rng.choice([OUT, OUT, "(assert (<= Y[0] X[0,1]))\n", "(assert (<= Y[3] 0.0))\n" + OUT, "",
                           "(assert (and (<= Y[0] 1.0)\n"])
        head = HEAD
        if rng.random() < 0.05:   # a bound line before the declarations
            head = HEAD.replace("(declare-network", "(assert (<= X[0,0] 1.0))\n(declare-network")
        text = head + "\n".join(lines) + "\n" + tail + ("))\n" if tail.endswith("1.0)\n") else "")
        got, want = loaded(text), whole(text)
        assert got == want, text
        query = plain_box_query(text, "q.vnnlib")
        if query is not None:
            read += 1
            reference = parse_query(text, "q.vnnlib")
            assert query.to_spec_with_stand_ins() == reference.to_spec_with_stand_ins()
            spec = reference.to_spec_with_stand_ins()[0]
            if not spec.disjuncts:
                continue
            lower, upper = spec.disjuncts[0].region.lower, spec.disjuncts[0].region.upper
            for _ in range(12):   # inside the box, one entry on an end (strictness decides there) or past it
                x = (lower + upper) / 2
                k = rng.randrange(6)
                x[k] = rng.choice([lower[k], upper[k], lower[k] - 1.0, upper[k] + 1.0])
                z = np.concatenate([x, [1.0, 0.0, 0.0, 0.0]])   # an output every tail here allows
                assert query.satisfied_by(z) == reference.satisfied_by(z), (text, z)
    assert read > 100   # the one-pass reading was exercised, not only declined


@needs_shared
def test_the_shared_files_in_their_2_0_form_read_in_one_pass():
    """One file of each family of ../shared/bench written as 2.0: the one-pass reading
    applies and gives the 1.0 file's Spec."""
    families: dict[str, str] = {}
    for f in sorted(glob.glob(str(BENCH / "*" / "vnnlib" / "*.vnnlib*"))):
        families.setdefault(f.split("/")[-3], f)
    for f in families.values():
        spec = vnnlib.load(f)
        text = format_vnnlib2(spec)
        got = fast(text)
        if all(d.region.A is None for d in spec.disjuncts) and len(spec.disjuncts) == 1:
            assert got is not None, f
        if got is not None:
            assert got == spec, f
