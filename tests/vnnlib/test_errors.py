"""Malformed files give a VnnlibError that says where (file:line:col) and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

import vnnlib
from tests.vnnlib._util import box, header

BOX1 = box([0.0], [1.0])


def error_of(text: str, **counts: int) -> vnnlib.VnnlibError:
    with pytest.raises(vnnlib.VnnlibError) as info:
        vnnlib.parse_text(text, path="spec.vnnlib", **counts)
    err = info.value
    assert str(err).startswith(f"spec.vnnlib:{err.line}:{err.col}: ")
    return err


def test_undeclared_variable_points_at_its_use() -> None:
    text = header(1, 1) + "(assert (>= X_0 0))\n(assert (<= X_0 1))\n  (assert (<= Y_1 0))\n"
    err = error_of(text)
    assert (err.line, err.col) == (5, 15)
    assert "undeclared variable Y_1" in err.message and "declare-const Y_1" in err.message


def test_use_before_declaration_is_undeclared() -> None:
    err = error_of("(assert (<= X_0 1))\n(declare-const X_0 Real)")
    assert (err.line, err.col, "undeclared" in err.message) == (1, 13, True)


def test_empty_box_is_an_error_at_the_bound() -> None:
    text = header(1, 1) + "(assert (>= X_0 0.5))\n(assert (<= X_0 0.25))\n(assert (<= Y_0 0))"
    err = error_of(text)
    assert "empty input region" in err.message and "X_0" in err.message
    assert (err.line, err.col) == (4, 9)  # the upper bound that makes it empty
    assert "3:9" in err.message  # where the lower bound was set
    # numbers as written in the file, not numpy reprs such as np.float64(0.5)
    assert "lower bound 0.5 " in err.message and "upper bound 0.25 " in err.message
    assert "np." not in err.message


def test_missing_bound_is_an_error_at_the_declaration() -> None:
    err = error_of(header(2, 1) + "(assert (>= X_0 0)) (assert (<= X_0 1)) (assert (>= X_1 0))")
    assert "X_1 has no upper bound" in err.message and (err.line, err.col) == (2, 16)
    err = error_of(header(1, 1) + "(assert (<= X_0 1))")
    assert "X_0 has no lower bound" in err.message


def test_missing_closing_paren_at_end_of_input() -> None:
    err = error_of(header(1, 1) + BOX1 + "(assert (or (<= Y_0 0)\n")
    assert "expected ')'" in err.message and "end of input" in err.message
    assert "'or'" in err.message and "5:9" in err.message  # the unclosed '(' of the or


def test_extra_closing_paren() -> None:
    err = error_of(header(1, 1) + BOX1 + "(assert (<= Y_0 0)))")
    assert "no matching '('" in err.message and (err.line, err.col) == (5, 20)


@pytest.mark.parametrize("text, expected", [
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (foo X_0 1))", "formula operator"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 bar))", "unknown symbol 'bar'"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 (^ 2 3)))",
     "arithmetic operator"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 and))", "keyword"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(frobnicate)", "expected a command"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1 2))", "exactly two"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 inf))", "unknown symbol"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 2e308))", "float64 range"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1_0))", "unknown symbol"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1e-99999))", "exponent"),
    ("(declare-const X_0 Int)", "sort 'Real'"),
    ("(declare-const Z_0 Real)", "X_<i> for an input"),
    ("(declare-const X_01 Real)", "X_<i> for an input"),
    ("(declare-const x_0 Real)", "X_<i> for an input"),
    ("(declare-const X_0 Real)(declare-const X_0 Real)", "declared twice"),
    ("(declare-const X_0 Real)(declare-const X_2 Real)(declare-const Y_0 Real)", "X_1 is not"),
    ("(declare-const X_0 Real)", "no output variables"),
    ("(declare-const Y_0 Real)", "no input variables"),
    ("", "no input variables"),
    ("assert", "expected '(' to start a command"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert X_0)", "expected '(' to start a formula"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= (/ X_0 0) 1))", "division by zero"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= (/ 1 X_0) 1))", "non-linear"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= (+) 1))", "at least one"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= 2 1))", "can never hold"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert false)", "can never hold"),
])
def test_malformed_input_is_reported(text: str, expected: str) -> None:
    assert expected in error_of(text).message


def test_product_of_two_variables_is_non_linear() -> None:
    err = error_of(header(2, 1) + box([0, 0], [1, 1]) + "\n(assert (<= (* X_0 X_1) 1))")
    assert "non-linear" in err.message and (err.line, err.col) == (9, 13)
    err = error_of(header(1, 2) + BOX1 + "(assert (<= (* 2 Y_0 (+ 1 Y_1)) 1))")
    assert "non-linear" in err.message


def test_constraint_mixing_inputs_and_outputs() -> None:
    err = error_of(header(1, 1) + BOX1 + "(assert (<= X_0 Y_0))")
    assert "mixes input (X_) and output (Y_)" in err.message and (err.line, err.col) == (5, 9)
    err = error_of(header(1, 1) + BOX1 + "(assert (<= (+ X_0 Y_0) 1))")
    assert "mixes" in err.message


def test_terms_cancelling_to_a_constant_do_not_mix() -> None:
    spec = vnnlib.parse_text(header(1, 1) + BOX1 + "(assert (<= (+ Y_0 X_0 (- X_0)) 1))")
    assert spec.disjuncts[0].outputs[0].C.tolist() == [[1.0]]


def test_dnf_blow_up_is_refused() -> None:
    ors = "".join(f"(assert (or (<= Y_0 {k}) (<= Y_1 {k})))\n" for k in range(17))  # 2^17 terms
    err = error_of(header(1, 2) + BOX1 + ors)
    assert "more than 100000 terms" in err.message


def test_deep_nesting_is_refused_cleanly() -> None:
    err = error_of(header(1, 1) + BOX1 + "(assert " + "(and " * 5000 + "(<= Y_0 0)" + ")" * 5001)
    assert "nested deeper" in err.message
    err = error_of(header(1, 1) + BOX1 + "(assert (<= Y_0 " + "(- " * 5000 + "1" + ")" * 5002)
    assert "nested deeper" in err.message


def test_count_mismatch_names_both_counts() -> None:
    err = error_of(header(2, 3) + box([0, 0], [1, 1]), n_inputs=4)
    assert "2 input variables" in err.message and "4 were expected" in err.message
    err = error_of(header(2, 3) + box([0, 0], [1, 1]), n_outputs=10)
    assert "3 output variables" in err.message and "10" in err.message


def test_unreadable_files_are_vnnlib_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.vnnlib.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(vnnlib.VnnlibError, match="cannot read") as info:
        vnnlib.load(broken)
    assert str(info.value).startswith(f"{broken}: cannot read the file: not a valid gzip file")
    with pytest.raises(vnnlib.VnnlibError, match="cannot read") as info:
        vnnlib.load(tmp_path)  # a directory
    assert str(info.value).startswith(f"{tmp_path}: cannot read the file: ")


def test_a_missing_file_has_no_spurious_location(tmp_path: Path) -> None:
    """`nncert verify model.onnx missing.vnnlib` said `missing.vnnlib:1:1: ...`."""
    missing = tmp_path / "missing.vnnlib"
    for read in (vnnlib.load, vnnlib.read_results):
        with pytest.raises(vnnlib.VnnlibError) as info:
            read(missing)
        err = info.value
        assert str(err) == f"{missing}: no such file"
        assert (err.path, err.line, err.col, err.message) == (str(missing), None, None, "no such file")


def test_non_utf8_bytes_in_a_comment_are_harmless(tmp_path: Path) -> None:
    path = tmp_path / "latin1.vnnlib"
    path.write_bytes(b"; caf\xe9\n" + (header(1, 1) + BOX1).encode())
    assert vnnlib.load(path).n_inputs == 1


def test_too_many_distinct_regions_is_refused() -> None:
    # 13 binary choices over a 4000-input box: 8192 distinct regions of 4000 inputs each
    n = 4000
    ors = "".join(f"(assert (or (<= X_{k} 0.5) (>= X_{k} 0.5)))\n" for k in range(13))
    err = error_of(header(n, 1) + box([0.0] * n, [1.0] * n) + ors)
    assert "distinct input regions" in err.message


def test_error_near_the_end_of_a_large_file_is_located_quickly() -> None:
    import time

    n = 50_000
    text = header(n, 1) + box([0.0] * n, [1.0] * n) + "(assert (<= Y_0 oops))\n"
    start = time.perf_counter()
    err = error_of(text)
    assert (err.line, err.col) == (3 * n + 2, 17) and "oops" in err.message
    assert time.perf_counter() - start < 30.0


def test_exact_arithmetic_cannot_be_made_to_hang() -> None:
    import time

    start = time.perf_counter()
    product = "(* " + " ".join(["1e-400"] * 3000) + " Y_0)"
    err = error_of(header(1, 1) + BOX1 + f"(assert (<= {product} 1))")
    assert "bits" in err.message
    fractions = "(+ " + " ".join(f"(/ Y_0 {p})" for p in range(2, 3000)) + ")"
    try:
        vnnlib.parse_text(header(1, 1) + BOX1 + f"(assert (<= {fractions} 1))")
    except vnnlib.VnnlibError as exc:
        assert "bits" in exc.message
    assert time.perf_counter() - start < 20.0
