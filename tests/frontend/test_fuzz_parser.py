"""Fuzzing the frontend: the example programs, mutated (tokens and lines
deleted, doubled, swapped or replaced, characters inserted, nesting deepened,
the text cut short, bytes that are not UTF-8), must give a program or a
CompileError whose every diagnostic points into the source: no other
exception, no hang.

Derandomized (a fixed seed per test) and bounded, so CI sees the same few
hundred cases every run in a few seconds; raise FUZZ_EXAMPLES locally to
search longer.
"""
import os
import re
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlc import driver
from dlc.errors import CompileError
from dlc.frontend import parse_program

from tests.frontend.test_errors import RAW_TERMINAL

EXAMPLES = {p.stem: p.read_text() for p in sorted((Path(__file__).parents[2] / "examples").glob("*.dl"))}
# Cheap to build (no convolutions): the cases that go on to LLVM IR.
SMALL = ("moons", "digits_mlp", "autoencoder", "gan", "sentiment")
TOKEN = re.compile(r'"[^"\n]*"|[A-Za-z_]\w*|\d+(\.\d+)?([eE][+-]?\d+)?|\|>|\s+|.', re.S)
# Tokens a mutation may put anywhere: the language's own, and trouble.
POOL = ["model", "train", "input", "output", "loss", "optimizer", "on", "true", "false",
        "relu", "dense", "conv2d", "reshape", "x", "h", "batch", "f32", "i32", "f16",
        "(", ")", "[", "]", "{", "}", ",", ".", ":", "=", "+", "-", "*", "/", "|>", "|",
        "0", "-1", "1.5", "1e999", "9" * 30, "4611686018427387904", '"', "'", "#", "\\",
        "\n", "\r\n", "\t", "\f", "\x00", "\u2028", "é", "\ufeff", " "]
SETTINGS = dict(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
N = int(os.environ.get("FUZZ_EXAMPLES", "1"))   # a multiplier of the example counts
CASE_SECONDS = 10   # far above any case's time: past it, the frontend hangs


@contextmanager
def time_limit(seconds: float):
    """Fails a case that runs longer than `seconds` (a hang), where
    hypothesis' deadline would only notice one that ends."""
    def expire(signum, frame):
        raise AssertionError(f"the case ran for more than {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def located(err: CompileError, source: str) -> None:
    """Every diagnostic is at a place in `source`, in words, printable."""
    lines = source.split("\n")
    assert err.diagnostics
    for d in err.diagnostics:
        assert d.span is not None, d.message
        assert 1 <= d.span.line <= len(lines), (d.span, d.message)
        assert 1 <= d.span.col <= len(lines[d.span.line - 1]) + 1, (d.span, d.message)
        assert d.message and not RAW_TERMINAL.search(d.message), d.message
    rendered = err.render().split("\n")
    assert rendered[0].startswith(f"{err.file}:{err.line}:{err.col}: error: ")
    assert rendered[1] == "    " + lines[err.line - 1].rstrip("\r")   # the line of the error


def frontend(source: str) -> None:
    with time_limit(CASE_SECONDS):
        try:
            parse_program(source, "fuzz.dl")
        except CompileError as err:
            located(err, source)


# ------------------------------------------------------------- mutations

def tokens(source: str) -> list[str]:
    return [m.group(0) for m in TOKEN.finditer(source)]


@st.composite
def token_edit(draw, source: str) -> str:
    ts = tokens(source)
    i, j = draw(st.integers(0, len(ts) - 1)), draw(st.integers(0, len(ts) - 1))
    kind = draw(st.sampled_from(["delete", "duplicate", "swap", "replace"]))
    if kind == "delete":
        del ts[i]
    elif kind == "duplicate":
        ts.insert(i, ts[i])
    elif kind == "swap":
        ts[i], ts[j] = ts[j], ts[i]
    else:
        ts[i] = draw(st.sampled_from(POOL))
    return "".join(ts)


@st.composite
def line_edit(draw, source: str) -> str:
    lines = source.split("\n")
    i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
    kind = draw(st.sampled_from(["delete", "duplicate", "swap"]))
    if kind == "delete":
        del lines[i]
    elif kind == "duplicate":
        lines[i:i] = [lines[i]] * draw(st.integers(1, 50))
    else:
        lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


@st.composite
def insertion(draw, source: str) -> str:
    at = draw(st.integers(0, len(source)))
    text = draw(st.text(min_size=1, max_size=4) | st.sampled_from(POOL))
    return source[:at] + text + source[at:]


@st.composite
def nesting(draw, source: str) -> str:
    """An identifier wrapped in many calls, parentheses or minus signs."""
    names = list(re.finditer(r"\b[a-z]\w*\b", source))
    if not names:
        return source
    m = names[draw(st.integers(0, len(names) - 1))]
    k = draw(st.integers(1, 400))
    before, after = draw(st.sampled_from([("relu(", ")"), ("(", ")"), ("-", ""), ("(", ",)")]))
    return source[:m.start()] + before * k + m.group(0) + after * k + source[m.end():]


@st.composite
def truncation(draw, source: str) -> str:
    return source[:draw(st.integers(0, len(source)))]


MUTATIONS = [token_edit, token_edit, line_edit, insertion, nesting, truncation]


@st.composite
def mutated(draw, names=tuple(EXAMPLES)) -> str:
    source = EXAMPLES[draw(st.sampled_from(names))]
    for _ in range(draw(st.integers(1, 4))):
        if source:
            source = draw(draw(st.sampled_from(MUTATIONS))(source))
    return source


# ----------------------------------------------------------------- tests

def test_the_examples_are_valid_programs():
    for name, source in EXAMPLES.items():
        parse_program(source, f"{name}.dl")


@settings(max_examples=400 * N, **SETTINGS)
@given(mutated())
def test_mutated_examples_parse_and_check_cleanly(source):
    frontend(source)


@settings(max_examples=100 * N, **SETTINGS)
@given(mutated(), st.data())
def test_bytes_that_are_not_utf8_give_located_errors(source, data):
    raw = bytearray(source.encode())
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=3))
    with time_limit(CASE_SECONDS):
        try:
            text = driver.decode_source(bytes(raw), "fuzz.dl")
        except CompileError as err:
            located(err, err.source)
            return
    frontend(text)


@settings(max_examples=60 * N, **SETTINGS)
@given(mutated(SMALL))
def test_mutated_programs_that_check_build_to_llvm_ir_or_fail_located(source):
    with time_limit(6 * CASE_SECONDS):
        try:
            driver.build(source, "fuzz.dl")
        except CompileError as err:
            located(err, source)


@pytest.mark.parametrize("cut", [b"\xe2", b"\xe2\x82", b"\xc3"])
def test_a_file_cut_inside_a_character_is_located(cut):
    data = EXAMPLES["moons"].encode() + b"# " + cut
    with pytest.raises(CompileError) as info:
        driver.decode_source(data, "cut.dl")
    located(info.value, info.value.source)
    assert info.value.line == EXAMPLES["moons"].count("\n") + 1
