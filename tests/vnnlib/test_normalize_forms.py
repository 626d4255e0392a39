"""Hand-computed normal forms for each construct of VNN-LIB that a file may use."""

from __future__ import annotations

import gzip
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import vnnlib
from tests.vnnlib._util import box, header

BOX1 = box([0.0], [1.0])


def rows(conj: vnnlib.OutputConstraints) -> list[tuple[list[float], float, bool]]:
    return [(c.tolist(), float(d), bool(s)) for c, d, s in zip(conj.C, conj.d, conj.strict)]


def only_disjunct(spec: vnnlib.Spec) -> vnnlib.Disjunct:
    assert len(spec.disjuncts) == 1
    return spec.disjuncts[0]


def test_several_asserts_are_anded_with_an_or() -> None:
    spec = vnnlib.parse_text(header(1, 3) + BOX1 + """
        (assert (or (<= Y_0 1) (>= Y_1 2)))
        (assert (<= Y_2 3))""")
    d = only_disjunct(spec)
    assert [rows(c) for c in d.outputs] == [
        [([1.0, 0.0, 0.0], 1.0, False), ([0.0, 0.0, 1.0], 3.0, False)],
        [([0.0, -1.0, 0.0], -2.0, False), ([0.0, 0.0, 1.0], 3.0, False)],
    ]


def test_nested_and_or_expands_in_order() -> None:
    # (A and B or C) and (D or E)  ->  ABD, ABE, CD, CE
    spec = vnnlib.parse_text(header(1, 3) + BOX1 + """
        (assert (and (or (and (<= Y_0 1) (<= Y_1 2)) (<= Y_2 0))
                     (or (>= Y_0 5) (>= Y_1 6))))""")
    d = only_disjunct(spec)
    a, b, c = ([1.0, 0, 0], 1.0, False), ([0, 1.0, 0], 2.0, False), ([0, 0, 1.0], 0.0, False)
    dd, e = ([-1.0, 0, 0], -5.0, False), ([0, -1.0, 0], -6.0, False)
    assert [rows(conj) for conj in d.outputs] == [[a, b, dd], [a, b, e], [c, dd], [c, e]]


def test_disjunction_mixing_regions_and_outputs_groups_by_region() -> None:
    spec = vnnlib.parse_text(header(1, 2) + """
        (assert (or (and (>= X_0 0) (<= X_0 1) (<= Y_0 0))
                    (and (>= X_0 2) (<= X_0 3) (>= Y_0 1))
                    (and (<= X_0 1.0) (>= X_0 0.0) (<= Y_1 5))))""")
    assert len(spec.disjuncts) == 2
    first, second = spec.disjuncts
    assert first.region.lower.tolist() == [0.0] and first.region.upper.tolist() == [1.0]
    assert [rows(c) for c in first.outputs] == [[([1.0, 0.0], 0.0, False)],
                                                 [([0.0, 1.0], 5.0, False)]]
    assert second.region.lower.tolist() == [2.0] and second.region.upper.tolist() == [3.0]
    assert [rows(c) for c in second.outputs] == [[([-1.0, 0.0], -1.0, False)]]


def test_several_input_boxes_with_shared_output_condition() -> None:
    spec = vnnlib.parse_text(header(2, 2) + """
        (assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1))
                    (and (>= X_0 -1) (<= X_0 0) (>= X_1 5) (<= X_1 6))))
        (assert (<= Y_1 Y_0))""")
    assert [d.region.lower.tolist() for d in spec.disjuncts] == [[0, 0], [-1, 5]]
    assert [d.region.upper.tolist() for d in spec.disjuncts] == [[1, 1], [0, 6]]
    for d in spec.disjuncts:
        assert [rows(c) for c in d.outputs] == [[([-1.0, 1.0], 0.0, False)]]


def test_comparison_between_two_outputs() -> None:
    spec = vnnlib.parse_text(header(1, 2) + BOX1 + "(assert (or (<= Y_0 Y_1) (>= Y_0 Y_1)))")
    assert [rows(c) for c in only_disjunct(spec).outputs] == [
        [([1.0, -1.0], 0.0, False)], [([-1.0, 1.0], 0.0, False)]]


def test_linear_combinations_with_constants_on_both_sides() -> None:
    spec = vnnlib.parse_text(header(1, 3) + BOX1 + """
        (assert (<= (+ (* 2 Y_0) (- Y_1) 3) (* 0.5 Y_2)))
        (assert (>= (- Y_0 Y_1 1) (* Y_2 -2)))
        (assert (<= (- (+ Y_0 Y_0) (* 2 Y_0)) Y_1))""")
    # 2y0 - y1 - 0.5y2 <= -3 ; y0 - y1 - 1 >= -2y2 -> -y0 + y1 - 2y2 <= -1 ; 0 <= y1
    assert rows(only_disjunct(spec).outputs[0]) == [
        ([2.0, -1.0, -0.5], -3.0, False),
        ([-1.0, 1.0, -2.0], -1.0, False),
        ([0.0, -1.0, 0.0], 0.0, False),
    ]


def test_strict_and_non_strict_rows() -> None:
    spec = vnnlib.parse_text(header(1, 1) + BOX1 + """
        (assert (< Y_0 1)) (assert (> Y_0 -1)) (assert (<= Y_0 2)) (assert (>= Y_0 -2))""")
    assert rows(only_disjunct(spec).outputs[0]) == [
        ([1.0], 1.0, True), ([-1.0], 1.0, True), ([1.0], 2.0, False), ([-1.0], 2.0, False)]


def test_strict_input_bounds_give_the_closed_box() -> None:
    spec = vnnlib.parse_text(header(1, 1) + "(assert (> X_0 0)) (assert (< X_0 1)) "
                                            "(assert (<= Y_0 0))")
    region = only_disjunct(spec).region
    assert region.lower.tolist() == [0.0] and region.upper.tolist() == [1.0]


def test_tightest_of_several_bounds_wins() -> None:
    spec = vnnlib.parse_text(header(1, 1) + """
        (assert (>= X_0 -3)) (assert (<= X_0 4)) (assert (>= X_0 -1)) (assert (<= 2 X_0))
        (assert (<= X_0 3.5)) (assert (>= 3 X_0)) (assert (<= Y_0 0))""")
    region = only_disjunct(spec).region
    assert region.lower.tolist() == [2.0] and region.upper.tolist() == [3.0]


def test_general_input_constraints_become_rows_of_A() -> None:
    spec = vnnlib.parse_text(header(2, 1) + box([0, 0], [1, 1]) + """
        (assert (<= (+ X_0 X_1) 1.5)) (assert (>= (- X_0 X_1) -0.25)) (assert (<= Y_0 0))""")
    region = only_disjunct(spec).region
    assert region.A.tolist() == [[1.0, 1.0], [-1.0, 1.0]]
    assert region.b.tolist() == [1.5, 0.25]
    assert region.contains([0.5, 0.5]) and not region.contains([1.0, 1.0])


def test_bounds_are_exact_then_rounded_once() -> None:
    spec = vnnlib.parse_text(header(2, 1) + """
        (assert (<= (+ X_0 0.1) 0.3)) (assert (>= X_0 0))
        (assert (<= (* 3 X_1) 1)) (assert (>= (/ X_1 2) -0.25)) (assert (<= Y_0 0))""")
    region = only_disjunct(spec).region
    assert region.upper.tolist() == [0.2, float(Fraction(1, 3))]  # not 0.3 - 0.1
    assert region.lower.tolist() == [0.0, -0.5]


def test_equality_pins_a_variable() -> None:
    spec = vnnlib.parse_text(header(1, 1) + "(assert (= X_0 0.25)) (assert (= Y_0 1))")
    d = only_disjunct(spec)
    assert d.region.lower.tolist() == d.region.upper.tolist() == [0.25]
    assert rows(d.outputs[0]) == [([1.0], 1.0, False), ([-1.0], -1.0, False)]


def test_comments_are_ignored() -> None:
    text = ("; header comment (assert (<= X_0 5)) with ) parens\n"
            + header(1, 1)
            + "(assert (>= X_0 0)) ; trailing comment (\n"
            + "(assert ; inside an assert\n (<= X_0 1))\n"
            + "(assert (<= Y_0 0));no newline at end")
    d = only_disjunct(vnnlib.parse_text(text))
    assert d.region.upper.tolist() == [1.0]


@pytest.mark.parametrize("literal, value", [
    ("1e-05", 1e-05), ("1.5E+2", 150.0), ("-2.5e-3", -0.0025), ("3", 3.0), ("+4.", 4.0),
    (".5", 0.5), ("-0.5", -0.5), ("(- 0.5)", -0.5), ("(- -0.5)", 0.5), ("(- 1 0.25)", 0.75),
    ("0.100000000000000000000001", 0.1), ("1e-400", 0.0),
])
def test_numeric_literals(literal: str, value: float) -> None:
    spec = vnnlib.parse_text(header(1, 1) + f"(assert (<= X_0 {literal})) "
                                            f"(assert (>= X_0 -1000)) (assert (<= Y_0 0))")
    assert only_disjunct(spec).region.upper.tolist() == [value]


def test_zero_width_box_is_fine() -> None:
    spec = vnnlib.parse_text(header(2, 1) + box([0.5, -1.0], [0.5, 2.0]) + "(assert (<= Y_0 0))")
    region = only_disjunct(spec).region
    assert region.lower[0] == region.upper[0] == 0.5


def test_constant_comparisons_are_evaluated() -> None:
    spec = vnnlib.parse_text(header(1, 2) + BOX1 + """
        (assert (<= 1 2))
        (assert (or (and (<= 2 1) (<= Y_0 0)) (<= Y_1 0) (and (< 1 1) (<= Y_0 7))))""")
    assert [rows(c) for c in only_disjunct(spec).outputs] == [[([0.0, 1.0], 0.0, False)]]


def test_output_free_term_is_an_empty_conjunction() -> None:
    spec = vnnlib.parse_text(header(1, 1) + BOX1)
    conj = only_disjunct(spec).outputs[0]
    assert conj.C.shape == (0, 1) and conj.holds(np.array([123.0]))


def test_empty_term_of_a_disjunction_is_dropped() -> None:
    # [0,1] x ({X_0 <= 0.5} or {X_0 >= 2}): the second term is empty, the first is kept
    spec = vnnlib.parse_text(header(1, 1) + BOX1 + "(assert (or (<= X_0 0.5) (>= X_0 2)))")
    assert only_disjunct(spec).region.upper.tolist() == [0.5]


def test_gzip_file_is_read_transparently(tmp_path: Path) -> None:
    text = header(1, 1) + BOX1 + "(assert (<= Y_0 0))"
    plain, packed = tmp_path / "p.vnnlib", tmp_path / "p.vnnlib.gz"
    plain.write_text(text)
    packed.write_bytes(gzip.compress(text.encode()))
    assert vnnlib.load(packed) == vnnlib.load(plain)
    assert vnnlib.load(packed).path == str(packed)


def test_declarations_may_interleave_and_come_in_any_order() -> None:
    spec = vnnlib.parse_text("(declare-const Y_0 Real)(declare-const X_1 Real)"
                             "(declare-const X_0 Real)" + box([0, 0], [1, 1]))
    assert (spec.n_inputs, spec.n_outputs) == (2, 1)


def test_spec_arrays_are_read_only_float64() -> None:
    spec = vnnlib.parse_text(header(1, 1) + BOX1 + "(assert (<= Y_0 0))")
    d = only_disjunct(spec)
    for array in (d.region.lower, d.region.upper, d.outputs[0].C, d.outputs[0].d):
        assert array.dtype == np.float64 and not array.flags.writeable
    assert spec.is_counterexample(np.array([0.5]), np.array([-1.0]))
    assert not spec.is_counterexample(np.array([1.5]), np.array([-1.0]))
