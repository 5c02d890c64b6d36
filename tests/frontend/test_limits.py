"""What no program text may do to the compiler: train nothing, hide bad
bytes, ask for absurd sizes, or nest deeper than Python's recursion limit.
Each case gives a located CompileError or compiles; never a traceback."""
import sys

import numpy as np
import pytest

import dlc
from dlc import driver
from dlc.cli import main
from dlc.errors import CompileError
from dlc.frontend import parse, parse_program, unparse
from dlc.ir.graph import MAX_RANK


def error_of(source: str, build: bool = False) -> CompileError:
    with pytest.raises(CompileError) as info:
        (driver.build if build else parse_program)(source, "t.dl")
    return info.value


# ------------------------------------------------------- nothing to train

NO_PARAMETER = """\
model m {
    input x: f32[batch, 2]
    output y = relu(x)
}
train fit {
    input x: f32[batch, 2]
    input t: f32[batch, 2]
    loss = mse(m(x), t)
    optimizer = %s
}
"""


@pytest.mark.parametrize("optimizer", ["sgd(lr=0.1)", "sgd(lr=0.1, momentum=0.9, clip=1.0)",
                                       "adam(lr=0.01)"])
def test_a_loss_that_reaches_no_parameter_is_an_error_at_the_optimizer(optimizer):
    err = error_of(NO_PARAMETER % optimizer, build=True)
    assert (err.line, err.col) == (9, 5), err.render()
    assert "depends on no parameter" in err.message and "would train nothing" in err.message


def test_a_parameter_the_loss_does_not_use_trains_nothing_either():
    # The block has a parameter, but the loss does not depend on it.
    source = NO_PARAMETER.replace("loss = mse(m(x), t)", "h = dense(x, 2)\n    loss = mse(m(x), t)")
    err = error_of(source % "adam(lr=0.01)", build=True)
    assert err.line == 10 and "would train nothing" in err.message


# ------------------------------------------------------------- not UTF-8

BAD_BYTES = b"model m {\n    input x: f32[b, 2]\n    output y = r\xe9lu(x)\n}\n"


def test_a_file_that_is_not_utf8_gives_a_located_error(tmp_path):
    path = tmp_path / "bad.dl"
    path.write_bytes(BAD_BYTES)
    with pytest.raises(CompileError) as info:
        driver.read_source(str(path))
    err = info.value
    assert (err.file, err.line, err.col) == (str(path), 3, 17)
    assert "not valid UTF-8" in err.message and "0xe9" in err.message
    assert err.render().splitlines()[2] == "    " + " " * 16 + "^"
    with pytest.raises(CompileError):
        dlc.compile(path)


def test_the_cli_reports_bad_bytes_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "bad.dl"
    path.write_bytes(BAD_BYTES)
    assert main(["compile", str(path), "--emit", "graph", "-o", "-"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:3:17: error: the file is not valid UTF-8")
    assert "Traceback" not in err


def test_a_utf8_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "bom.dl"
    path.write_bytes(b"\xef\xbb\xbf" + BAD_BYTES.replace(b"r\xe9lu(x)", "relu(x)  # é".encode()))
    source, _ = driver.read_source(str(path))
    assert parse_program(source).functions["m"].outputs


# --------------------------------------------------------- absurd sizes

BIG = "1" * 400
SIZES = {
    "a 400-digit size": ("h = dense(x, %s)" % BIG, (3, 18), "integer too large"),
    "a 400-digit size, then a dense": ("h = dense(dense(x, %s), 3)" % BIG, (3, 24), "integer too large"),
    "a product past int64": ("h = dense(x, 3037000500 * 3037000500)", (3, 29), "must fit in 64 bits"),
    "a constant past int64": ("h = x * %s" % BIG, (3, 13), "integer too large"),
    "a weight past 2^48 bytes": ("h = dense(x, 4611686018427387904)", (3, 9), "2^48 bytes"),
    "a reshape past the rank limit": ("h = reshape(x, (2, %s))" % ", ".join(["1"] * MAX_RANK), (3, 9),
                                      f"at most {MAX_RANK} dims"),
}


@pytest.mark.parametrize("statement,at,text", SIZES.values(), ids=SIZES.keys())
def test_absurd_sizes_are_located_errors(statement, at, text):
    err = error_of(f"model m {{\n    input x: f32[1, 2]\n    {statement}\n    output y = h\n}}\n")
    assert (err.line, err.col) == at, err.render()
    assert text in err.message


@pytest.mark.parametrize("dims,col,text", [
    (f"batch, {BIG}", 25, "integer too large"),
    ("batch, 70368744177665", 14, "2^48 bytes"),
    (", ".join(["1"] * (MAX_RANK + 1)), 14, f"at most {MAX_RANK} dims")])
def test_absurd_input_types_are_located_errors(dims, col, text):
    err = error_of(f"model m {{\n    input x: f32[{dims}]\n    output y = x\n}}\n")
    assert (err.line, err.col) == (2, col), err.render()
    assert text in err.message


# ------------------------------------------------- depth of expressions

def model(expression: str) -> str:
    return f"model m {{\n    input x: f32[batch, 2]\n    output y = {expression}\n}}\n"


def trained(expression: str) -> str:
    return model(expression) + """\
train fit {
    input x: f32[batch, 2]
    input t: f32[batch, 2]
    loss = mse(m(x) + dense(x, 2), t)
    optimizer = adam(lr=0.01)
}
"""


DEEP = {   # several times Python's recursion limit
    "nested calls": "relu(" * 5000 + "x" + ")" * 5000,
    "a long sum": " + ".join(["x"] * 10000),
    "a long pipeline": "x" + " |> relu" * 5000,
    "unary minus signs": "-" * 5000 + "x",
    "parentheses": "(" * 5000 + "x" + ")" * 5000,
    # sigmoid reads its operand twice: the fused expression is a DAG whose
    # paths double with each op
    "a pipeline of ops that read their input twice": "x" + " |> sigmoid |> leaky_relu" * 1000,
}


def test_the_deep_cases_are_deeper_than_the_recursion_limit():
    assert sys.getrecursionlimit() < 5000


@pytest.mark.parametrize("expression", DEEP.values(), ids=DEEP.keys())
def test_deep_expressions_parse_and_print(expression):
    module = parse(model(expression))
    assert unparse(module).count("x") >= expression.count("x")


@pytest.mark.parametrize("expression", DEEP.values(), ids=DEEP.keys())
def test_deep_expressions_compile_with_their_gradients(expression):
    art = driver.build(trained(expression), "deep.dl")
    assert {e.name for e in art.loops.entries} == {"m", "fit", "fit.grads", "fit.input_grads", "fit.apply"}


def test_deeply_nested_tuples_are_an_error():
    err = error_of(model("reshape(x, " + "(" * 3000 + "1," + ")," * 2999 + "))"))
    assert "a tuple can't contain a tuple" in err.message


def test_a_long_chain_of_model_calls_checks():
    blocks = ["model m0 {\n    input x: f32[b, 2]\n    output y = relu(x)\n}\n"] + [
        f"model m{i} {{\n    input x: f32[b, 2]\n    output y = m{i - 1}(x) + x\n}}\n" for i in range(1, 150)]
    program = parse_program("".join(blocks))
    assert len(program.functions["m149"].nodes) == 150


# ------------------------------------------------------ deep programs

def layers(n: int, train: bool) -> str:
    lines = "".join("    h = dense(h, 4) |> relu\n" for _ in range(n))
    source = f"model m {{\n    input x: f32[batch, 2]\n    h = x\n{lines}    output y = h\n}}\n"
    if train:
        source += ("train fit {\n    input x: f32[batch, 2]\n    input t: f32[batch, 4]\n"
                   "    loss = mse(m(x), t)\n    optimizer = adam(lr=0.01, clip=1.0)\n}\n")
    return source


# 10,000 layers compile too, but in minutes with a train block: too slow here.
@pytest.mark.parametrize("n,train", [(500, True), (2000, False)])
def test_a_long_chain_of_layers_compiles_to_llvm_ir(n, train):
    art = driver.build(layers(n, train), "chain.dl")
    assert len(art.graph.params) == 2 * n
    assert f"m.dense{n - 1}.weight" in art.llvm_modules[0]


def test_a_long_chain_of_layers_runs_as_numpy_computes_it():
    n = 150
    program = dlc.compile(layers(n, train=True))
    x = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    h = x
    for k in range(n):
        p = program.params
        h = np.maximum(h @ p[f"m.dense{k}.weight"].T + p[f"m.dense{k}.bias"], 0)
    np.testing.assert_allclose(program.run("m", x=x)["y"], h, rtol=1e-5, atol=1e-6)
    t = np.ones((5, 4), np.float32)
    assert program.train("fit", x=x, t=t) > program.train("fit", x=x, t=t)
