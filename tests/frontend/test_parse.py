"""Valid programs: the AST the parser builds and the graph IR the checker makes."""
import pytest

from dlc.frontend import parse, parse_program, unparse
from dlc.frontend import ast
from dlc.ir.graph import TensorType, verify

MOONS = """\
# two-moons classifier
model moons {
    input x: f32[batch, 2]                 # `batch` is a symbolic size
    h = dense(x, 16, name="fc1") |> relu   # a |> f(args) means f(a, args)
    h = dense(h, 16, name="fc2") |> relu   # rebinding a name is allowed
    output logits = dense(h, 2, name="out")
}

train fit {
    input x: f32[batch, 2]
    input t: i32[batch]
    loss = cross_entropy(moons(x), t)      # a model is callable
    optimizer = sgd(lr=0.1, momentum=0.9)  # updates the parameters the loss depends on
}
"""


def body_text(src: str) -> list[str]:
    """The unparsed statements of the first block."""
    return [line.strip() for line in unparse(parse(src).blocks[0]).splitlines()[1:-1]]


def test_moons_program():
    p = parse_program(MOONS, "moons.dl")
    verify(p)
    assert list(p.functions) == ["moons", "fit"]
    moons, fit = p.functions["moons"], p.functions["fit"]
    assert moons.kind == "model" and fit.kind == "train"
    assert [(v.name, v.type) for v in moons.inputs] == [("x", TensorType("f32", ("batch", 2)))]
    assert moons.outputs["logits"].type == TensorType("f32", ("batch", 2))
    assert [v.name for v in fit.inputs] == ["x", "t"]
    assert fit.outputs["loss"].type == TensorType("f32", ())
    assert list(p.params) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                              "out.weight", "out.bias"]
    assert p.params["fc1.weight"].type == TensorType("f32", (16, 2))
    assert set(fit.params) == set(p.params)
    opt = fit.optimizer
    assert (opt.kind, opt.hparams, opt.on) == ("sgd", {"lr": 0.1, "momentum": 0.9,
                                                       "weight_decay": 0.0}, ())
    assert (opt.span.line, opt.span.col) == (13, 5)
    assert (fit.span.line, fit.span.col) == (9, 7)
    assert p.symbols == ["batch"]
    assert p.file == "moons.dl" and p.source == MOONS


def test_nodes_keep_their_spans():
    p = parse_program(MOONS, "moons.dl")
    relus = [n for n in p.functions["moons"].nodes if n.op.name == "relu"]
    assert [(n.span.line, n.span.col) for n in relus] == [(4, 37), (5, 37)]


def test_pipe_is_a_call_with_the_left_side_first():
    src = """model m {
        input x: f32[b, 4]
        a = x |> relu
        b = x |> dense(3, name="d") |> leaky_relu(slope=0.2)
        c = x
            |> tanh    # a line starting with |> continues the pipeline
            |> sigmoid
    }"""
    assert body_text(src)[1:] == [
        "a = relu(x)",
        'b = leaky_relu(dense(x, 3, name="d"), slope=0.2)',
        "c = sigmoid(tanh(x))",
    ]
    call = parse(src).blocks[0].body[2].value
    assert isinstance(call, ast.Call) and call.func == "leaky_relu"
    assert (call.span.line, call.span.col) == (4, 40)


def test_precedence_and_associativity():
    src = """model m {
        a = x + y * z - -w / v
        b = x - y - z
        c = (x + y) * z |> relu
        d = -x * y
        e = net(x).probs * 2
    }"""
    assert body_text(src) == [
        "a = ((x + (y * z)) - ((-w) / v))",
        "b = ((x - y) - z)",
        "c = relu(((x + y) * z))",
        "d = ((-x) * y)",
        "e = (net(x).probs * 2)",
    ]


def test_literals():
    src = """model m {
        a = f(1, 2.5, 1e-3, 3.0e2, "s", true, false, (3, 3), (1,), (2))
    }"""
    call = parse(src).blocks[0].body[0].value
    values = [a.value for a in call.args[:7]]
    assert values == [1, 2.5, 1e-3, 300.0, "s", True, False]
    assert isinstance(call.args[0].value, int) and isinstance(call.args[3].value, float)
    assert [type(a) for a in call.args[7:]] == [ast.Tuple, ast.Tuple, ast.Number]
    assert body_text(src) == ['a = f(1, 2.5, 0.001, 300.0, "s", true, false, (3, 3), (1,), 2)']


def test_comments_blank_lines_and_multiline_calls():
    src = """# leading comment

    # another
model m {   # after the brace

    input x: f32[batch,   # dims may span lines
                 2]
    h = dense(x,          # so may calls
              4,
              name="d",   # with a trailing comma
    )
    # a comment line inside a block
    output y = h          # trailing comment
}   # after the block
# at the end, without a newline"""
    p = parse_program(src)
    assert p.functions["m"].outputs["y"].type == TensorType("f32", ("batch", 4))


def test_one_line_block():
    p = parse_program("model m { input x: f32[] \n output y = x * 2 }")
    assert p.functions["m"].outputs["y"].type == TensorType("f32", ())


TWO_OUTPUTS = """
model net {
    input x: f32[batch, 2]
    output logits = dense(x, 3)
    output probs = softmax(logits)
}
train fit {
    input x: f32[n, 2]
    input t: f32[n, 3]
    LOSS
    optimizer = adam(lr=2e-4, beta1=0.5)
}"""


def test_multi_output_model_and_fields():
    p = parse_program(TWO_OUTPUTS.replace("LOSS", "loss = mse(net(x).probs, t) + mse(net(x).logits, t)"))
    net = p.functions["net"]
    assert list(net.outputs) == ["logits", "probs"]
    fit = p.functions["fit"]
    assert fit.optimizer.hparams == {"lr": 2e-4, "beta1": 0.5, "beta2": 0.999,
                                     "eps": 1e-8, "weight_decay": 0.0}
    # Both calls use the one parameter set of `net`, each computing it (the
    # cse pass merges them later).
    assert list(p.params) == ["net.dense0.weight", "net.dense0.bias"]
    assert sum(n.op.name == "gemm" for n in fit.nodes) == 2


def test_a_bound_model_call_is_made_once_for_all_its_outputs():
    bound = "out = net(x)\n    loss = mse(out.probs, t) + mse(out.logits, t)"
    fit = parse_program(TWO_OUTPUTS.replace("LOSS", bound)).functions["fit"]
    assert sum(n.op.name == "gemm" for n in fit.nodes) == 1


def test_model_calls_model_defined_later_with_symbol_binding():
    src = """
model outer {
    input z: f32[n, 4]
    output y = inner(z) |> relu
}
model inner {
    input x: f32[batch, 4]
    output y = dense(x, 2, name="lin")
}"""
    p = parse_program(src)
    verify(p)
    assert p.functions["outer"].outputs["y"].type == TensorType("f32", ("n", 2))
    assert p.functions["inner"].outputs["y"].type == TensorType("f32", ("batch", 2))
    assert set(p.functions["outer"].params) == {"lin.weight", "lin.bias"}
    assert list(p.functions) == ["outer", "inner"]


def test_fixed_dim_binds_a_symbol_and_keyword_arguments():
    src = """
model pair {
    input a: f32[n, 2]
    input b: f32[n, 2]
    output s = a + b
}
model use {
    input x: f32[8, 2]
    output y = pair(b=x, a=x * 2)
}"""
    p = parse_program(src)
    assert p.functions["use"].outputs["y"].type == TensorType("f32", (8, 2))


def test_automatic_layer_names():
    src = """
model enc {
    input x: f32[batch, 8]
    h = dense(x, 6) |> relu
    h = dense(h, 4, name="mid") |> dense(3) |> relu
    output y = dense(h, 2, bias=false)
}
train fit {
    input x: f32[batch, 8]
    input t: f32[batch, 1]
    loss = mse(dense(enc(x), 1), t) + mse(dense(enc(x), 1, name="other"), t)
    optimizer = sgd(lr=0.01)
}"""
    p = parse_program(src)
    assert list(p.params) == [
        "enc.dense0.weight", "enc.dense0.bias", "mid.weight", "mid.bias",
        "enc.dense1.weight", "enc.dense1.bias", "enc.dense2.weight",
        "fit.dense0.weight", "fit.dense0.bias", "other.weight", "other.bias"]
    assert p.params["enc.dense2.weight"].layer == "enc.dense2"


def test_parameters_shared_between_train_blocks():
    src = """
model gen {
    input z: f32[batch, 4]
    output x = dense(z, 8) |> relu |> dense(2)
}
model disc {
    input x: f32[batch, 2]
    output p = dense(x, 8) |> leaky_relu(0.2) |> dense(1) |> sigmoid
}
train train_disc {
    input x: f32[batch, 2]
    input z: f32[batch, 4]
    input real: f32[batch, 1]
    input fake: f32[batch, 1]
    loss = bce(disc(x), real) + bce(disc(gen(z)), fake)
    optimizer = adam(lr=2e-4, beta1=0.5) on disc
}
train train_gen {
    input z: f32[batch, 4]
    input real: f32[batch, 1]
    loss = bce(disc(gen(z)), real)
    optimizer = adam(lr=2e-4, beta1=0.5) on gen
}"""
    p = parse_program(src)
    verify(p)
    gen_params = {"gen.dense0.weight", "gen.dense0.bias", "gen.dense1.weight", "gen.dense1.bias"}
    disc_params = {n.replace("gen", "disc") for n in gen_params}
    assert set(p.params) == gen_params | disc_params
    assert set(p.functions["train_disc"].params) == gen_params | disc_params
    assert set(p.functions["train_gen"].params) == gen_params | disc_params
    assert p.functions["train_disc"].optimizer.on == ("disc",)
    assert p.functions["train_gen"].optimizer.on == ("gen",)
    assert set(p.functions["gen"].params) == gen_params


def test_arithmetic_with_numbers():
    src = """
model m {
    input x: f32[batch, 3]
    input k: i32[batch]
    scale = 1 / 4
    output a = x * scale - 1
    output b = -x
    output c = k * 2 + k
    output d = 2 * x
}"""
    m = parse_program(src).functions["m"]
    assert m.outputs["c"].type == TensorType("i32", ("batch",))
    assert m.outputs["d"].type == TensorType("f32", ("batch", 3))
    consts = [n.attrs for n in m.nodes if n.op.name == "constant"]
    assert consts == [{"value": 0.25, "dtype": "f32"}, {"value": 1.0, "dtype": "f32"},
                      {"value": 2.0, "dtype": "i32"}, {"value": 2.0, "dtype": "f32"}]
    assert [n.op.name for n in m.nodes].count("neg") == 1


def test_optimizer_hyperparameters_are_folded():
    src = """
train t {
    input x: f32[batch, 3]
    loss = mse(dense(x, 3), x)
    optimizer = sgd(lr=1 / 100, weight_decay=-1 * -0.5)
}"""
    opt = parse_program(src).functions["t"].optimizer
    assert opt.hparams == {"lr": 0.01, "momentum": 0.0, "weight_decay": 0.5}


def test_scalar_inputs_and_f64():
    p = parse_program("model m {\n input s: f64[]\n input v: f64[5]\n output y = v * s\n}")
    m = p.functions["m"]
    assert m.inputs[0].type == TensorType("f64", ())
    assert m.outputs["y"].type == TensorType("f64", (5,))
