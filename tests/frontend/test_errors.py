"""Bad programs must fail with a located, readable error.

Each file in bad/ starts with `# error: LINE:COL: TEXT`: the first diagnostic
must be at LINE:COL and its message must contain TEXT.
"""
import re
from pathlib import Path

import pytest

from dlc.errors import CompileError
from dlc.frontend import parse_program
from dlc.frontend.check import MAX_ERRORS
from dlc.ops import REGISTRY
from dlc.ops.base import Arg, Op

BAD = sorted((Path(__file__).parent / "bad").glob("*.dl"))
HEADER = re.compile(r"# error: (\d+):(\d+): (.+)")
# What users must never see: Lark's terminal names.
RAW_TERMINAL = re.compile(r"\$END|__ANON|\b(NAME|RPAR|LPAR|COMMA|_NL|RBRACE|LSQB|EQUAL)\b")


def test_there_are_enough_bad_inputs():
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_input(path: Path):
    source = path.read_text()
    line, col, text = HEADER.match(source).groups()
    line, col = int(line), int(col)
    with pytest.raises(CompileError) as info:
        parse_program(source, path.name)
    err = info.value
    assert (err.line, err.col) == (line, col), err.render()
    assert text in err.message, err.render()
    assert not RAW_TERMINAL.search(err.message)

    rendered = err.render().splitlines()
    assert rendered[0] == f"{path.name}:{line}:{col}: error: {err.message}"
    assert rendered[1] == "    " + source.splitlines()[line - 1]
    caret = rendered[2]
    assert caret.index("^") == 4 + col - 1
    assert set(caret.strip()) <= {"^", "~"}


def errors_of(source: str) -> list[tuple[int, int, str]]:
    with pytest.raises(CompileError) as info:
        parse_program(source, "t.dl")
    return [(d.span.line, d.span.col, d.message) for d in info.value.diagnostics]


def test_independent_errors_are_all_reported():
    source = """\
model a {
    input x: f32[batch, 2]
    h = rleu(x)
    g = h * 2
    k = dense(x, 4) + zz
    output y = dense(x, 3) |> relu
}
model b {
    input x: f16[batch, 2]
    output y = x
}
train fit {
    input x: f32[batch, 2]
    loss = relu(x)
    optimizer = sgd(lr=0.1, momentun=0.9)
}
train fit {
    loss = 1
}
"""
    errors = errors_of(source)
    assert [(line, col) for line, col, _ in errors] == [
        (3, 9), (5, 23), (9, 14), (14, 12), (15, 29), (17, 7)]
    messages = [m for _, _, m in errors]
    assert "unknown op 'rleu' (did you mean 'relu'?)" in messages[0]
    assert "undefined name 'zz'" in messages[1]
    assert "unknown dtype 'f16'" in messages[2]
    assert "the loss must be a floating-point scalar" in messages[3]
    assert "'sgd' has no attribute 'momentun' (did you mean 'momentum'?)" in messages[4]
    assert "'fit' is already defined" in messages[5]


def test_syntax_errors_in_independent_statements_are_all_reported():
    source = """\
model m {
    input x: f32[batch, 2]
    h = dense(x 16)
    g = x +
    output y = relu(x)
}
model n {
    input x f32[2]
    h = dense(x, 3
    output y = h
}
train t {
    loss = f(x))
    optimizer = sgd
}
"""
    errors = errors_of(source)
    assert [(line, col) for line, col, _ in errors] == [
        (3, 17), (4, 12), (8, 13), (9, 19), (13, 16), (14, 20)]
    starts = ["expected ')' or ','", "expected an expression after '+'",
              "'input' declarations need a type", "expected ')' or ','",
              "unmatched ')'", "expected '(' after 'sgd'"]
    assert all(m.startswith(start) for (_, _, m), start in zip(errors, starts)), errors


def test_a_broken_model_is_reported_once_not_at_each_call():
    source = """\
model a {
    input x: f32[batch, 2]
    output y = dense(x, 2) |> rleu
}
model b {
    input x: f32[batch, 2]
    output y = a(x) + a(x)
}
train fit {
    input x: f32[batch, 2]
    loss = mse(a(x), x)
    optimizer = sgd(lr=0.1)
}
"""
    assert [(line, col) for line, col, _ in errors_of(source)] == [(3, 31)]


def test_errors_are_capped():
    body = "".join(f"    h{i} = nope{i}(x)\n" for i in range(MAX_ERRORS + 10))
    source = f"model m {{\n    input x: f32[4]\n{body}    output y = x\n}}\n"
    assert len(errors_of(source)) == MAX_ERRORS


def test_errors_inside_an_inlined_model_point_into_its_body():
    source = """\
model pair {
    input a: f32[n]
    input b: f32[m]
    output y = relu(a)
}
model use {
    input x: f32[4]
    output y = pair(x, x) + pair(x, x)
}
"""
    assert parse_program(source).functions["use"].outputs["y"].type.shape == (4,)


def test_only_op_errors_become_diagnostics(monkeypatch):
    """An OpError is the user's fault; any other exception is a bug in dlc
    and must reach the caller unchanged."""

    class Broken(Op):
        name = "broken"
        signature = (Arg("x", "tensor"),)

        def build(self, b, args):
            raise ZeroDivisionError("bug in an op")

    monkeypatch.setitem(REGISTRY, "broken", Broken())
    with pytest.raises(ZeroDivisionError, match="bug in an op"):
        parse_program("model m {\n input x: f32[2]\n output y = broken(x)\n}\n")


def test_internal_ops_are_unknown():
    (line, col, message), = errors_of("model m {\n input x: f32[2]\n output y = neg(x)\n}\n")
    assert (line, col) == (3, 13) and message.startswith("unknown op 'neg'")


MOONS = """\
model moons {
    input x: f32[batch, 2]
    h = dense(x, 16, name="fc1") |> relu
    output logits = dense(h, 2) * 0.5
}
train fit {
    input x: f32[batch, 2]
    input t: i32[batch]
    loss = cross_entropy(moons(x), t)
    optimizer = sgd(lr=0.1, momentum=0.9) on moons
}
"""


@pytest.mark.parametrize("edit", ["delete", "duplicate"])
def test_every_single_character_edit_fails_cleanly(edit):
    """Deleting or doubling any one character gives a program or a
    CompileError with a readable first message, never a traceback."""
    for i in range(len(MOONS)):
        source = MOONS[:i] + (MOONS[i] * 2 if edit == "duplicate" else "") + MOONS[i + 1:]
        try:
            parse_program(source, "m.dl")
        except CompileError as err:
            assert err.line >= 1 and err.col >= 1, (i, err.render())
            assert not RAW_TERMINAL.search(err.message), (i, err.render())
