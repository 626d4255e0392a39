"""VNN-LIB 2.0 queries through the standard's parser, lowered to rows and to a Spec,
checked against hand-computed rows, boxes and verdict-relevant rounding."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from tests.conftest import BENCH, needs_shared
from vnnlib import VnnlibError
from vnnlib.query import UnsupportedQuery, parse_query
from vnnlib.standard import text_version, vendor_dir

pytestmark = pytest.mark.skipif(not (vendor_dir() / "vnnlib" / "__init__.py").is_file(),
                                reason="the standard's VNN-LIB parser is not installed beside the venv "
                                       "(`make` installs it into .venv/nncert-vendor)")


def q(body: str, x: str = "X float32 [2]", y: str = "Y float32 [2]") -> str:
    return (f"; a comment first\n(vnnlib-version <2.0>)\n(declare-network N (declare-input {x}) "
            f"(declare-output {y}))\n{body}")


BOX = "(assert (>= X[0] 0.0)) (assert (<= X[0] 1.0)) (assert (>= X[1] -1.0)) (assert (<= X[1] 2.0))\n"


def test_version_sniffing():
    assert text_version(q("")) == (2, 0)
    assert text_version("; c\n(declare-const X_0 Real)\n") is None
    assert text_version("(vnnlib-version <2.1>)") == (2, 1)


def test_box_and_output_rows():
    query = parse_query(q(BOX + "(assert (or (> Y[0] Y[1]) (and (<= Y[1] 3.0) (== Y[0] 1.5))))"))
    assert [t.name for t in query.tensors] == ["X", "Y"] and query.size == 4
    spec = query.to_spec()
    assert spec.n_inputs == 2 and spec.n_outputs == 2 and len(spec.disjuncts) == 1
    region = spec.disjuncts[0].region
    np.testing.assert_array_equal(region.lower, [0.0, -1.0])
    np.testing.assert_array_equal(region.upper, [1.0, 2.0])
    assert region.A is None
    first, second = spec.disjuncts[0].outputs
    # Y0 > Y1  ->  -Y0 + Y1 < 0
    np.testing.assert_array_equal(first.C, [[-1.0, 1.0]])
    np.testing.assert_array_equal(first.d, [0.0])
    assert first.strict.tolist() == [True]
    # Y1 <= 3, Y0 <= 1.5, -Y0 <= -1.5
    np.testing.assert_array_equal(second.C, [[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_array_equal(second.d, [3.0, 1.5, -1.5])
    assert second.strict.tolist() == [False, False, False]


def test_not_equal_splits_a_term_and_regions_group():
    query = parse_query(q(BOX + "(assert (!= Y[0] 0.5))"))
    spec = query.to_spec()
    assert len(query.terms) == 2 and len(spec.disjuncts) == 1  # one box, two conjunctions
    a, b = spec.disjuncts[0].outputs
    np.testing.assert_array_equal(a.C, [[1.0, 0.0]]) and np.testing.assert_array_equal(b.C, [[-1.0, 0.0]])
    assert a.strict.all() and b.strict.all() and a.d[0] == 0.5 and b.d[0] == -0.5


def test_disjunction_over_inputs_gives_two_regions():
    text = q("(assert (>= X[1] 0.0)) (assert (<= X[1] 1.0))"
             "(assert (or (and (>= X[0] 0.0) (<= X[0] 1.0)) (and (>= X[0] 2.0) (<= X[0] 3.0))))"
             "(assert (>= Y[0] 1.0))")
    spec = parse_query(text).to_spec()
    assert [d.region.lower.tolist() for d in spec.disjuncts] == [[0.0, 0.0], [2.0, 0.0]]
    assert [d.region.upper.tolist() for d in spec.disjuncts] == [[1.0, 1.0], [3.0, 1.0]]


def test_coupled_inputs_become_rows_and_constants_move_exactly():
    spec = parse_query(q(BOX + "(assert (>= (+ (* 0.5 X[0]) (* 0.75 X[1])) (- 3.0 1.0)))"
                             "(assert (<= (+ Y[0] 0.25) 1.0))")).to_spec()
    region = spec.disjuncts[0].region
    np.testing.assert_array_equal(region.A, [[-0.5, -0.75]])
    np.testing.assert_array_equal(region.b, [-2.0])
    np.testing.assert_array_equal(spec.disjuncts[0].outputs[0].d, [0.75])


def test_inexact_bounds_widen_outward():
    spec = parse_query(q("(assert (>= X[0] 0.0)) (assert (<= (* 3.0 X[0]) 1.0))"
                         "(assert (>= (* -3.0 X[1]) 1.0)) (assert (>= X[1] -5.0))"
                         "(assert (<= (+ Y[0] 0.1) 0.7))")).to_spec()
    region = spec.disjuncts[0].region
    assert Fraction(region.upper[0]) >= Fraction(1, 3) and region.upper[0] == math.nextafter(1 / 3, 1)
    assert Fraction(region.upper[1]) >= Fraction(-1, 3)  # -3 x >= 1  ->  x <= -1/3
    d = spec.disjuncts[0].outputs[0].d[0]  # 0.7 - 0.1 is inexact in float64: rounded up
    assert Fraction(0.7 - 0.1) != Fraction(0.7) - Fraction(0.1)
    assert Fraction(d) >= Fraction(0.7) - Fraction(0.1) and d == math.nextafter(0.7 - 0.1, 1)


def test_row_major_indices_and_satisfied_by():
    text = q("(assert (>= X[1,2] 0.0)) (assert (< X[1,2] 1.0)) (assert (>= Y[0] 0.0))", x="X real [2,3]",
             y="Y real [1]")
    query = parse_query(text)
    row = query.terms[0][0]
    assert row.index.tolist() == [5]
    z = np.zeros(7)
    assert query.satisfied_by(z)
    z[5] = 1.0
    assert not query.satisfied_by(z)  # the strict bound, which a closed box cannot say
    z[5], z[6] = 0.5, -1.0
    assert not query.satisfied_by(z)


def test_constant_comparisons_and_empty_terms():
    assert parse_query(q(BOX + "(assert (<= 3.0 1.0))")).terms == ()
    spec = parse_query(q(BOX + "(assert (<= 1.0 3.0)) (assert (>= Y[0] 0.0))")).to_spec()
    assert len(spec.disjuncts) == 1
    empty_box = parse_query(q(BOX + "(assert (>= X[0] 2.0)) (assert (>= Y[0] 0.0))")).to_spec()
    assert empty_box.disjuncts == ()


def test_no_output_row_means_any_output():
    spec = parse_query(q(BOX)).to_spec()
    conj = spec.disjuncts[0].outputs[0]
    assert conj.holds(np.array([1e30, -1e30]))


def test_errors_point_at_the_line():
    with pytest.raises(VnnlibError) as e:
        parse_query(q("(assert (>= X[0] 1e-3))"), "p.vnnlib")
    # the 'e' is the 19th character (the standard's parser says column 18: it counts from 0)
    assert str(e.value).startswith("p.vnnlib:4:19:") and "syntax error" in str(e.value)
    with pytest.raises(VnnlibError) as e:   # its message held a lone byte of the 'é' (UnicodeDecodeError)
        parse_query(q("(assert (>= Xé[0] 0.0))"), "p.vnnlib")
    assert str(e.value).startswith("p.vnnlib:4:14: syntax error at 'é'")
    with pytest.raises(VnnlibError) as e:
        parse_query(q("\n(assert (>= X[3] 0.0))"), "p.vnnlib")
    assert str(e.value).startswith("p.vnnlib:5:") and "X[3]" in str(e.value) and "IndexOutOfBounds" in str(e.value)


@pytest.mark.parametrize("body, needle", [
    ("(assert (>= X[0] 0.0)) (assert (>= Y[0] 0.0))", "X[0] (and 1 more) has no lower or upper bound"),
])
def test_unsupported_constructs_name_themselves(body, needle):
    with pytest.raises(UnsupportedQuery) as e:
        parse_query(q(body), "p.vnnlib").to_spec()
    assert needle in str(e.value)


def test_several_networks_and_hidden_nodes_lay_out_inputs_then_the_rest():
    two = ("(vnnlib-version <2.0>)\n(declare-network f (declare-input X float32 [1]) "
           "(declare-hidden H float32 [2] \"relu_out\") (declare-output Y float32 [1]))\n"
           "(declare-network g (equal-to f) (declare-input X2 float32 [1]) (declare-output Y2 float32 [1]))\n"
           "(assert (>= X[0] 0.0)) (assert (<= X[0] 1.0)) (assert (>= X2[0] -1.0)) (assert (<= X2[0] 0.0))\n"
           "(assert (>= X[0] X2[0])) (assert (< Y[0] Y2[0])) (assert (<= H[1] 3.0))")
    query = parse_query(two)
    assert [n.name for n in query.networks] == ["f", "g"] and query.networks[1].equal_to == "f"
    assert query.networks[0].hidden[0].onnx_name == "relu_out"
    assert [(t.name, t.offset) for t in query.tensors] == [("X", 0), ("H", 1), ("Y", 3), ("X2", 4), ("Y2", 5)]
    spec = query.to_spec()
    assert spec.n_inputs == 2 and spec.n_outputs == 4   # x = [X, X2]; y = [H0, H1, Y, Y2]
    region, [conj] = spec.disjuncts[0].region, spec.disjuncts[0].outputs
    assert region.lower.tolist() == [0.0, -1.0] and region.upper.tolist() == [1.0, 0.0]
    np.testing.assert_array_equal(region.A, [[-1.0, 1.0]]) and np.testing.assert_array_equal(region.b, [0.0])
    np.testing.assert_array_equal(conj.C, [[0.0, 0.0, 1.0, -1.0], [0.0, 1.0, 0.0, 0.0]])
    assert conj.d.tolist() == [0.0, 3.0] and conj.strict.tolist() == [True, False]


def test_rows_mixing_inputs_and_outputs_read_the_inputs_echo():
    query = parse_query(q(BOX + "(assert (>= Y[1] (+ X[0] 0.5)))"))
    spec = query.to_spec()
    assert spec.n_inputs == 2 and spec.n_outputs == 4   # y = [Y0, Y1, echo X0, echo X1]
    conj = spec.disjuncts[0].outputs[0]
    np.testing.assert_array_equal(conj.C, [[0.0, -1.0, 1.0, 0.0]])   # X0 - Y1 <= -0.5
    assert conj.d.tolist() == [-0.5]


def test_products_of_variables_become_entries_of_y():
    query = parse_query(q(BOX + "(assert (>= (- (* X[0] X[1]) (* 2.0 (* Y[0] Y[0]))) (+ 0.5 Y[1])))"))
    assert query.products == ((0, 1), (2, 2))          # z = [X0, X1, Y0, Y1]
    spec = query.to_spec()
    assert spec.n_outputs == 4                          # y = [Y0, Y1, X0*X1, Y0*Y0]
    conj = spec.disjuncts[0].outputs[0]                 # -X0 X1 + 2 Y0^2 + Y1 <= -0.5
    np.testing.assert_array_equal(conj.C, [[0.0, 1.0, -1.0, 2.0]])
    assert conj.d.tolist() == [-0.5]
    assert query.satisfied_by(np.array([1.0, 2.0, 0.5, 1.0]))        # 2 - 0.5 >= 1.5
    assert not query.satisfied_by(np.array([1.0, 2.0, 0.5, 1.1]))    # 1.5 >= 1.6 fails


def test_the_plain_reader_takes_one_network_queries_and_sends_the_rest_to_verify(tmp_path):
    import vnnlib
    from vnnlib.writer import format_vnnlib2

    spec = vnnlib.robustness_spec(np.array([0.5, -0.5, 0.25]), 0.1, 1, 3)
    path = tmp_path / "r.vnnlib"
    path.write_text(format_vnnlib2(spec, (1, 3), (1, 3)))
    import re

    assert "X[0,2]" in path.read_text() and not re.search(r"\d[eE][-+]?\d", path.read_text())
    assert vnnlib.load(path, 3, 3) == spec
    with pytest.raises(VnnlibError, match="declares 3 inputs; the model has 4"):
        vnnlib.load(path, 4, 3)
    path.write_text(q(BOX + "(assert (>= (* Y[0] Y[1]) 1.0))"))
    with pytest.raises(UnsupportedQuery, match="`nncert verify` reads it"):
        vnnlib.load(path)


@needs_shared
def test_every_shared_vnnlib_file_round_trips_through_2_0(tmp_path):
    """Each 1.0 file of ../shared/bench, written as 2.0 and read by the standard's parser,
    is the same Spec (a sample of each family: the whole set is a benchmark)."""
    import glob

    import vnnlib
    from vnnlib.writer import format_vnnlib2

    files = sorted(glob.glob(str(BENCH / "*" / "vnnlib" / "*.vnnlib*")))
    families: dict[str, str] = {}
    for f in files:
        families.setdefault(f.split("/")[-3], f)
    for f in families.values():
        spec = vnnlib.load(f)
        assert parse_query(format_vnnlib2(spec), f).to_spec() == spec, f


def test_merged_inputs_sum_their_coefficients_exactly():
    """Inputs made equal share one entry of x, and a row's coefficients on them are summed:
    1e20 + 1 - 1e20 is 1, not the 0 of a float sum (which dropped the coefficient, or made
    a satisfiable row false and its whole term vanish: a wrong unsat). Here the point
    x = (-1, -1, -1, 1, 0) satisfies both queries as written, and the lowered Spec must
    contain it; echo rows (inputs mixed with outputs) sum the same way."""
    box = "".join(f"(assert (>= X[{i}] {lo})) (assert (<= X[{i}] {hi}))\n"
                  for i, (lo, hi) in enumerate([(-1.0, 0.0)] * 3 + [(-2.0, 2.0), (0.0, 0.001)]))
    tied = "(assert (== X[0] X[1])) (assert (== X[1] X[2]))\n"
    big = "100000000000000000000.0"
    cases = {
        "rows": f"(assert (<= (+ (* {big} X[0]) X[1] (* -{big} X[2]) X[3] (* -1.0 X[4])) 0.0))\n",
        "false": f"(assert (<= (+ (* {big} X[0]) X[1] (* -{big} X[2])) -0.5))\n",
        "echo": f"(assert (<= (+ (* {big} X[0]) X[1] (* -{big} X[2]) Y[0]) 0.0))\n",
    }
    x = np.array([-1.0, -1.0, -1.0, 1.0, 0.0])
    for name, row in cases.items():
        query = parse_query(q(box + tied + row + "(assert (>= Y[0] -100.0))", x="X float32 [5]", y="Y float32 [1]"))
        assert query.satisfied_by(np.concatenate([x, [1.0]] if name != "echo" else [x, [0.5]])), name
        spec = query.to_spec()
        assert len(spec.disjuncts) == 1, name               # the term is kept
        region = spec.disjuncts[0].region
        xs = np.array([-1.0, 1.0, 0.0])                     # X0 = X1 = X2 share entry 0
        assert np.all(region.lower <= xs) and np.all(xs <= region.upper), name
        if region.A is not None:
            assert np.all(region.A @ xs <= region.b), (name, region.A, region.b)
        if name == "rows":
            np.testing.assert_array_equal(region.A, [[1.0, 1.0, -1.0]])
        if name == "echo":                                  # y = (Y0, echo of x): the row is X012 + Y0 <= 0
            C = spec.disjuncts[0].outputs[0].C
            assert C.shape[1] == 4 and np.count_nonzero(C[0] == 1.0) == 2


@pytest.mark.parametrize("number", ["1" + "0" * 400 + ".0", "0." + "0" * 310 + "1", "-" + "9" * 30])
def test_a_number_out_of_range_is_an_error_at_its_place(number):
    """The standard's parser (1.0.2) lets C++'s stod/stoll escape on such a number (an
    IndexError, which ended the run as an internal error): it is a one-line error at the
    number, and a comment's number out of range is not blamed."""
    x = "X int64 [2]" if "." not in number else "X float32 [2]"
    text = q("; 1" + "0" * 400 + ".0 in a comment\n(assert (>= X[0] 0.5))\n"
             f"(assert (<= X[1] {number}))\n(assert (<= Y[0] 1.5))\n", x=x)
    if "." not in number:
        text = text.replace("0.5", "0")
    with pytest.raises(VnnlibError, match="is out of range") as raised:
        parse_query(text, "q.vnnlib")
    assert (raised.value.line, raised.value.col) == (6, 18)
