"""Fuzzing: any text either parses to a Spec or raises VnnlibError with a sane location.

Any other exception, or a case that takes more than a few seconds, fails the test.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import vnnlib
from tests.vnnlib._util import BENCH, box, header
from vnnlib.results import parse_results
from vnnlib.tokenizer import tokenize, tokenize_regex

CASE_SECONDS = 5.0

ALPHABET = [
    "(", ")", "(", ")", "assert", "declare-const", "Real", "Int", "X_0", "X_1", "X_2", "Y_0",
    "Y_1", "X_01", "Z_0", "and", "or", "not", "<=", ">=", "<", ">", "=", "+", "-", "*", "/",
    "0", "1", "-1", "0.5", "-0.5", "1e-05", "2E+3", ".5", "5.", "1e999", "1e-999", "inf",
    "nan", "1_0", "true", "false", "check-sat", ";c\n", "; (\n", "\n", "\t", "é", "",
]

SEED_TEXTS = [
    header(2, 2) + box([0.0, -1.0], [1.0, 1.0]) + "(assert (or (and (<= Y_0 Y_1)) "
    "(and (>= (+ (* 2 Y_0) (- Y_1) 1e-05) -0.5) (< Y_1 3))))\n",
    header(1, 2) + "(assert (or (and (>= X_0 0) (<= X_0 1) (<= Y_0 0))\n"
    "  (and (>= X_0 2) (<= X_0 3) (= Y_1 (- 0.5)))))\n",
    header(2, 1) + box([0, 0], [1, 1]) + "(assert (<= (+ X_0 X_1) 1.5)) ; c\n"
    "(assert (>= (- Y_0 (/ 1 4)) (* -3 1)))\n",
]
if BENCH.exists():
    SEED_TEXTS += [p.read_text() for p in sorted(BENCH.rglob("*.vnnlib"))
                   if p.stat().st_size < 6000][:12]


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail a case that hangs instead of hanging the test run (POSIX main thread)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):  # noqa: ARG001
        raise TimeoutError(f"case took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(text: str) -> vnnlib.Spec | vnnlib.VnnlibError:
    """Parse ``text``; only a Spec or a located VnnlibError is an acceptable outcome."""
    start = time.perf_counter()
    with deadline(CASE_SECONDS):
        try:
            outcome: vnnlib.Spec | vnnlib.VnnlibError = vnnlib.parse_text(text, "fuzz.vnnlib")
        except vnnlib.VnnlibError as err:
            assert 1 <= err.line <= text.count("\n") + 1, (err, text)
            assert 1 <= err.col <= len(text.split("\n")[err.line - 1]) + 1, (err, text)
            assert str(err).startswith(f"fuzz.vnnlib:{err.line}:{err.col}: ")
            outcome = err
    assert time.perf_counter() - start < CASE_SECONDS
    return outcome


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(ALPHABET), max_size=80), st.randoms(use_true_random=False))
def test_token_soup(tokens: list[str], rnd: random.Random) -> None:
    check("".join(tok + rnd.choice([" ", "", "\n"]) for tok in tokens))


def _term(depth: int) -> st.SearchStrategy[str]:
    atom = st.sampled_from(["X_0", "X_1", "Y_0", "Y_1", "Y_2", "0", "-1.5", "2e-3", "(- 4)"])
    if depth == 0:
        return atom
    sub = _term(depth - 1)
    return st.one_of(atom, st.builds(lambda op, args: f"({op} {' '.join(args)})",
                                     st.sampled_from(["+", "-", "*", "/"]),
                                     st.lists(sub, min_size=1, max_size=3)))


FORMULAS = st.recursive(
    st.builds(lambda op, a, b: f"({op} {a} {b})", st.sampled_from(["<=", ">=", "<", ">", "="]),
              _term(2), _term(2)),
    lambda sub: st.builds(lambda op, args: f"({op} {' '.join(args)})",
                          st.sampled_from(["and", "or"]), st.lists(sub, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(FORMULAS, max_size=5), st.booleans())
# one row written two ways (a variable pair, a sum of one) was kept twice, and read back once
@example(["(<= X_0 X_0)", "(<= X_1 X_0)", "(<= X_1 (+ X_0))"], True)
def test_structured_formulas(formulas: list[str], with_box: bool) -> None:
    text = header(2, 3) + (box([0, 0], [1, 1]) if with_box else "")
    outcome = check(text + "".join(f"(assert {f})\n" for f in formulas))
    if isinstance(outcome, vnnlib.Spec):
        assert outcome.n_inputs == 2 and outcome.n_outputs == 3
        # whatever was parsed must survive writing and reading back
        assert check(vnnlib.format_vnnlib(outcome)) == outcome


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("();ab_X0 \t\n\x0b\x1c\u00a0\u2028é-.")),
               max_size=60))
def test_fast_tokenizer_agrees_with_the_regex(text: str) -> None:
    assert tokenize(text).tokens == tokenize_regex(text).tokens


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_results_reader_never_crashes(text: str) -> None:
    with deadline(CASE_SECONDS):
        try:
            parse_results(text, "r.txt")
        except vnnlib.VnnlibError:
            pass


def _mutate(text: str, rnd: random.Random) -> str:
    tokens = tokenize_regex(text).tokens
    kind = rnd.randrange(6)
    if kind == 0 or not tokens:  # truncate at a random character
        return text[:rnd.randrange(len(text) + 1)]
    for _ in range(rnd.randint(1, 3)):
        k = rnd.randrange(len(tokens))
        if kind == 1:
            del tokens[k]
        elif kind == 2:
            tokens.insert(k, rnd.choice(ALPHABET))
        elif kind == 3:
            tokens.insert(k, tokens[k])
        elif kind == 4:
            j = rnd.randrange(len(tokens))
            tokens[k], tokens[j] = tokens[j], tokens[k]
        else:
            tokens[k] = rnd.choice(ALPHABET)
        if not tokens:
            break
    return " ".join(tokens)


@pytest.mark.parametrize("seed", range(4))
def test_mutations_of_real_specs(seed: int) -> None:
    rnd = random.Random(seed)
    outcomes = {"spec": 0, "error": 0}
    for case in range(1000):
        outcome = check(_mutate(rnd.choice(SEED_TEXTS), rnd))
        outcomes["spec" if isinstance(outcome, vnnlib.Spec) else "error"] += 1
    assert outcomes["error"] > 0  # the mutations do break things


@pytest.mark.parametrize("text", [
    "(" * 100_000, ")" * 100_000, "(assert " * 50_000, "(declare-const", "(assert (<= X_0",
    header(1, 1) + "(assert (or " + "(<= Y_0 1) " * 200_000 + "))",
])
def test_pathological_inputs_finish(text: str) -> None:
    check(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("();ab_X0 \t\n\r\u2028é-.")), max_size=80))
def test_token_offsets_point_at_their_tokens(text: str) -> None:
    import vnnlib.tokenizer as tokenizer_module

    original = tokenizer_module._CHUNK_CHARS
    tokenizer_module._CHUNK_CHARS = 4  # exercise the chunked search on small texts
    try:
        stream = tokenize(text)
        for k, tok in enumerate(stream.tokens):
            assert text.startswith(tok, stream.offset(k))
    finally:
        tokenizer_module._CHUNK_CHARS = original
