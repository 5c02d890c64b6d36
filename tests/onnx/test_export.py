"""dlc -> ONNX -> ONNX Runtime: every example model's inference, exported
with its (perturbed) weights, gives dlc's outputs at batch 1 and 37."""
from pathlib import Path

import numpy as np
import pytest

NEEDS = "the ONNX tests need onnx, onnxruntime and torch: pip install '.[test]'"
onnx = pytest.importorskip("onnx", reason=NEEDS)
ort = pytest.importorskip("onnxruntime", reason=NEEDS)

import dlc  # noqa: E402
from dlc.errors import DlcError  # noqa: E402
from dlc.onnx import export_model  # noqa: E402

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples"
EXAMPLES = {
    "moons": ["moons"], "digits_mlp": ["digits"], "digits_cnn": ["digits_cnn"], "lenet": ["lenet"],
    "cifar_cnn": ["cifar_cnn"], "autoencoder": ["encoder", "decoder", "autoencoder"],
    "gan": ["gen", "disc"], "sentiment": ["sentiment"], "crnn": ["crnn"],
    "adding": ["adding", "adding_rnn"],
}
RTOL, ATOL = 1e-4, 1e-5
TIME = 7


def perturbed(prog, seed=0):
    """prog with its constant-initialised params (batchnorm's ones and zeros)
    made random, so that they count; running variances stay positive."""
    rng = np.random.default_rng(seed)
    for name, p in prog.params.items():
        if p.dtype == np.float32 and p.ndim and p.std() == 0:
            moved = p + rng.normal(0, 0.2, p.shape)
            p[...] = np.abs(moved) + 0.1 if name.endswith("running_var") else moved
    return prog


@pytest.fixture(scope="module")
def programs():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = perturbed(dlc.compile(EXAMPLE_DIR / f"{name}.dl"))
        return cache[name]
    return get


def random_inputs(fn, batch, rng, vocab=24):
    feeds = {}
    for v in fn.inputs:
        shape = [batch if d == "batch" else TIME if d == "time" else d for d in v.type.shape]
        if v.type.dtype == "i32":
            high = TIME + 1 if v.name == "lengths" else vocab
            feeds[v.name] = rng.integers(1, high, shape).astype(np.int32)
        else:
            feeds[v.name] = rng.normal(size=shape).astype(np.float32)
    return feeds


def check_against_ort(prog, model, path, rng):
    proto = export_model(prog, model, path)
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    fn = prog.graph.functions[model]
    for v, given in zip(fn.inputs, proto.graph.input):   # symbolic dims stay symbolic
        dims = [d.dim_param or d.dim_value for d in given.type.tensor_type.shape.dim]
        assert dims == list(v.type.shape)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == list(fn.outputs)
    for batch in (1, 37):
        feeds = random_inputs(fn, batch, rng)
        want = prog.run(model, **feeds)
        got = dict(zip(names, session.run(None, feeds)))
        for k, w in want.items():
            assert got[k].shape == w.shape
            np.testing.assert_allclose(got[k], w, rtol=RTOL, atol=ATOL, err_msg=f"{model}.{k} at batch {batch}")
    return proto


@pytest.mark.parametrize("example,model", [(e, m) for e, ms in EXAMPLES.items() for m in ms])
def test_example_model_matches_ort(programs, example, model, tmp_path):
    prog = programs(example)
    proto = check_against_ort(prog, model, tmp_path / f"{model}.onnx", np.random.default_rng(1))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    used = prog.graph.functions[model].params
    for name in used:   # weights named and laid out as dlc's params (a batchnorm's counter is unused)
        if name.endswith("num_batches_tracked"):
            continue
        np.testing.assert_array_equal(inits[name], prog.params[name])


def test_patterns_become_single_nodes(programs, tmp_path):
    """A dense layer is one Gemm, a padded convolution with bias one Conv, a
    batchnorm one BatchNormalization, an LSTM one LSTM node with its final
    state read from it."""
    ops = lambda m: [n.op_type for n in m.graph.node]
    lenet = export_model(programs("lenet"), "lenet", tmp_path / "lenet.onnx")
    assert ops(lenet).count("Gemm") == 3 and ops(lenet).count("Conv") == 2 and "Pad" not in ops(lenet)
    digits = export_model(programs("digits_cnn"), "digits_cnn", tmp_path / "digits.onnx")
    assert ops(digits).count("BatchNormalization") == 2 and "Sqrt" not in ops(digits)
    sentiment = export_model(programs("sentiment"), "sentiment", tmp_path / "s.onnx")
    assert ops(sentiment).count("LSTM") == 1 and "GatherND" not in ops(sentiment)


RECURRENT = """
model rec {
    input tokens: i32[batch, time]
    input lengths: i32[batch]
    input h0: f32[batch, 12]
    input c0: f32[batch, 12]
    x = embedding(tokens, 24, 5, name="embed")
    a = lstm(x, 6, name="bi", lengths=lengths, bidirectional=true, h0=h0, c0=c0)
    g = gru(a, 4, name="gru", lengths=lengths)
    r = rnn(g, 3, name="relu_rnn", nonlinearity="relu")
    output states = a
    output h_n = a.h_n
    output c_n = a.c_n
    output last_g = last(g, lengths)
    output first_r = r[:, 0]
    output r = r
}
"""


def test_recurrent_variants_match_ort(tmp_path):
    """Bidirectional LSTM with lengths and initial states, GRU, relu RNN."""
    prog = perturbed(dlc.compile(RECURRENT), seed=3)
    proto = check_against_ort(prog, "rec", tmp_path / "rec.onnx", np.random.default_rng(2))
    ops = [n.op_type for n in proto.graph.node]
    assert (ops.count("LSTM"), ops.count("GRU"), ops.count("RNN")) == (1, 1, 1)   # one node per layer
    lstm = next(n for n in proto.graph.node if n.op_type == "LSTM")
    assert lstm.name == "/bi/LSTM" and onnx.helper.get_attribute_value(lstm.attribute[0]) == b"bidirectional"


PICKED = """
model m {
    input x: f32[batch, time, 3]
    input lengths: i32[batch]
    h = lstm(x, 4, name="l", lengths=lengths)
    output a = last(h * 2.0, lengths)
    output b = last(h)
    output c = h[:, 0]
}
"""


def test_picked_steps_match_ort(tmp_path):
    """Steps picked from any sequence (not a recurrent node's final state):
    by lengths, the last, a subscript."""
    check_against_ort(perturbed(dlc.compile(PICKED)), "m", tmp_path / "m.onnx", np.random.default_rng(4))


MISC = """
model m {
    input x: f32[batch, 4]
    input s: f32[batch, 2, 9]
    output seq = conv1d(s, 3, 3, padding=1, name="c1")
    output layernorm = layernorm(x, name="ln")
    output softmax = softmax(x)
    output log_softmax = log_softmax(x)
    output gelu = gelu(x)
    output gelu_tanh = gelu(x, approximate="tanh")
    output one_hot = one_hot(argmax(x, 1), 4)
    output argmax = argmax(x, 1)
    output reductions = sum(x, axis=1) + mean(x) + max(x, axis=1) - min(x, axis=1)
    output elementwise = clamp(x, -0.5, 0.5) + where(x, x, 2.0) + exp(abs(x)) / sqrt(abs(x) + 1.0) - -x
    output products = matmul(x, transpose(x, (1, 0))) + 1.0
    output joined = concat(leaky_relu(x, 0.1), tanh(x)[:, 1:3], axis=1) |> reshape((-1, 2, 3))
}
"""


IMAGES = """
model m {
    input x: f32[batch, 4, 5, 5]
    up = conv_transpose2d(x, 4, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=2, name="up")
    output strided = conv_transpose2d(x, 3, 4, stride=2, padding=1, name="gen") |> upsample(2)
    output same = conv_transpose2d(x, 3, 3, padding=1, bias=false, name="same") |> upsample((2, 3), mode="bilinear")
    output grouped = conv2d(up, 4, 3, stride=2, dilation=2, groups=2, padding=(1, 2), name="grouped")
    output pooled = avgpool(up, 3, stride=1, padding=1) |> global_avgpool
}
"""


def test_misc_ops_match_ort(tmp_path):
    check_against_ort(perturbed(dlc.compile(MISC)), "m", tmp_path / "m.onnx", np.random.default_rng(5))


def test_image_ops_match_ort(tmp_path):
    """Transposed convolutions (their padded stride-1 form too), upsampling,
    grouped and dilated convolutions, average pooling."""
    proto = check_against_ort(perturbed(dlc.compile(IMAGES)), "m", tmp_path / "m.onnx", np.random.default_rng(6))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("ConvTranspose") == 3 and ops.count("Resize") == 2


def test_unsupported_op_is_named(tmp_path):
    prog = dlc.compile("model m {\n input x: f32[batch, 4]\n input i: i32[batch, 2]\n"
                       " output y = gather(x, i, 1)\n}\n")
    with pytest.raises(DlcError, match=r"op 'gather' \(giving f32\[batch, 2\]\) has no ONNX form"
                                       r".*exportable ops: .*conv2d"):
        export_model(prog, "m", tmp_path / "m.onnx")
    with pytest.raises(DlcError, match="no model named 'nope'; this program has: m"):
        export_model(prog, "nope", tmp_path / "m.onnx")


def test_cli_export(tmp_path):
    from dlc.cli import main
    prog = perturbed(dlc.compile(EXAMPLE_DIR / "moons.dl"), seed=5)
    weights = tmp_path / "w.safetensors"
    prog.save(weights)
    out = tmp_path / "moons.onnx"
    assert main(["export", str(EXAMPLE_DIR / "moons.dl"), "--model", "moons", "--weights", str(weights),
                 "-o", str(out)]) == 0
    x = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, prog.run("moons", x=x)["logits"], rtol=RTOL, atol=ATOL)
