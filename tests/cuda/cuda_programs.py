"""Small programs that together use every op, forward and backward, shared
by the PTX tests (everywhere) and the GPU parity tests (`pytest -m gpu`).

A new op needs a program here: test_ptx.py fails, naming it, until one of
these programs' graphs (after autodiff) uses it.
"""
from pathlib import Path

EXAMPLES = sorted((Path(__file__).parent.parent.parent / "examples").glob("*.dl"))
DIGITS_MLP = next(p for p in EXAMPLES if p.stem == "digits_mlp")   # the small example most tests use


def regression(expr: str, optimizer: str = "adam(lr=1e-3)") -> str:
    """A model y = expr(x) of 5 features to 4, trained by mse."""
    return f"""
model m {{
    input x: f32[batch, 5]
    output y = {expr}
}}
train g {{
    input x: f32[batch, 5]
    input t: f32[batch, 4]
    loss = mse(m(x), t)
    optimizer = {optimizer}
}}
"""


def classifier(loss: str, head: str) -> str:
    label = "i32[batch]" if loss == "cross_entropy" else "f32[batch, 3]"
    return f"""
model m {{
    input x: f32[batch, 5]
    h = dense(x, 8, name="fc1") |> tanh
    output y = {head}
}}
train g {{
    input x: f32[batch, 5]
    input t: {label}
    loss = {loss}(m(x), t)
    optimizer = sgd(lr=0.1, momentum=0.9)
}}
"""


def d(name: str, units: int = 4) -> str:
    return f'dense(x, {units}, name="{name}")'


PROGRAMS = {
    "activations": regression(f"relu({d('a')}) + sigmoid({d('b')}) + tanh({d('c')}) "
                              f"+ leaky_relu({d('e')}, slope=0.2) + softmax({d('f')}) "
                              f"+ log_softmax({d('g')})"),
    "math": regression(f"exp({d('a')}) + log(sigmoid({d('b')})) + sqrt(sigmoid({d('c')})) "
                       f"- {d('e')} * 2.5 + 1 - {d('f')} / (sigmoid({d('q', 1)}) + 1)", "sgd(lr=0.1)"),
    "no_bias": regression('dense(x, 4, name="p", bias=false) * dense(x, 1, name="q")',
                          "sgd(lr=0.1, momentum=0.9)"),
    "cross_entropy": classifier("cross_entropy", 'dense(h, 3, name="out")'),
    "bce": classifier("bce", 'sigmoid(dense(h, 3, name="out"))'),
    # Pools of every lowering (avgpool, 3x3 stride-1 maxpool saves argmax
    # indices), global pooling, concat (its gradient slices), flatten; a
    # strided padded convolution (its input gradient is cropped).
    "cnn": """
model m {
    input x: f32[batch, 2, 7, 7]
    a = conv2d(x, 3, 3, padding=1, name="c1") |> relu |> maxpool(3, stride=1, padding=1)
    b = avgpool(x, 2, stride=1, padding=1) |> conv2d(2, (2, 2), name="c2")
    c = conv2d(x, 3, 1, name="c0") |> conv2d(4, 3, stride=2, padding=1, name="c3")
    h = concat(a, b, axis=1)
    z = dense(flatten(global_avgpool(c)), 4, name="out2")
    output y = dense(flatten(global_avgpool(h)) + flatten(avgpool(h, 7)), 4, name="out") + z
}
train g {
    input x: f32[batch, 2, 7, 7]
    input t: f32[batch, 4]
    loss = mse(m(x), t)
    optimizer = sgd(lr=0.1)
}
""",
    # Growing images: a strided transposed convolution (bounds checked) and
    # a stride-1 one (over its padded input), bilinear upsampling (a
    # reduction in its gradient) and nearest, then a conv1d over the rows.
    "generator": """
model m {
    input x: f32[batch, 2, 3, 3]
    h = conv2d(x, 3, 1, name="c0") |> conv_transpose2d(3, 4, stride=2, padding=1, output_padding=1, name="t1")
    h = relu(h) |> conv_transpose2d(2, 3, padding=1, name="t2") |> upsample(2, mode="bilinear") |> upsample((1, 2))
    s = conv1d(reshape(h, (-1, 2, 392)), 3, 5, stride=4, padding=2, name="c1")
    output y = dense(flatten(s), 4, name="out")
}
train g {
    input x: f32[batch, 2, 3, 3]
    input t: f32[batch, 4]
    loss = mse(m(x), t)
    optimizer = sgd(lr=0.1)
}
""",
    # Clamps, gelu's two forms, masks, layernorm, noise, and indexing: a
    # gather's gradient is a scatter-add, argmax a statement-level kernel.
    "misc": """
model m {
    input x: f32[batch, 5]
    h = dense(x, 4, name="a")
    h = abs(h) + clamp(h, -0.5, 0.5) + gelu(h) + gelu(h, approximate="tanh")
    output y = layernorm(where(one_hot(argmax(h, 1), 4), h, h * 0.5), name="ln")
}
train g {
    input x: f32[batch, 5]
    input i: i32[batch, 4]
    input t: f32[batch, 4]
    loss = mse(gather(gaussian_noise(m(x), 0.1), i, 1), t)
    optimizer = sgd(lr=0.1)
}
""",
    # Recurrences (statement-level kernels), both directions, stacked.
    "tensor": """
model m {
    input x: f32[batch, 5]
    h = reshape(dense(x, 12, name="a"), (-1, 3, 4))
    p = matmul(h, reshape(dense(x, 12, name="b"), (batch, 4, 3)))
    q = max(p, axis=1) + min(p, axis=1) + mean(p, axis=(1, 2), keepdim=true)[:, 0]
    output y = q * sum(h[:, 1:3, -1], axis=1, keepdim=true)
}
train g {
    input x: f32[batch, 5]
    input t: i32[batch]
    loss = cross_entropy(m(x), t, ignore_index=-100) + smooth_l1(m(x), m(x) * 0.5, beta=0.5)
    optimizer = sgd(lr=0.1)
}
""",
    "sequence": """
model m {
    input x: f32[batch, 4, 5]
    h = lstm(x, 3, name="l", bidirectional=true) |> rnn(4, name="r")
    output y = last(h)
}
train g {
    input x: f32[batch, 4, 5]
    input t: f32[batch, 4]
    loss = mse(m(x), t)
    optimizer = sgd(lr=0.1)
}
""",
    # Recurrent state: initial states (h0, c0) and final ones (h_n, c_n),
    # a bidirectional gru, an rnn with relu.
    "sequence_state": """
model m {
    input x: f32[batch, 4, 5]
    a = gru(x, 3, name="g", bidirectional=true, h0=dense(last(x), 6, name="z") |> tanh)
    b = lstm(a, 2, name="l", h0=a.h_n |> dense(2, name="hl"), c0=last(a) |> dense(2, name="cl"))
    r = rnn(b, 4, name="r", nonlinearity="relu", h0=dense(b.c_n, 4, name="hr"))
    output y = r.h_n + dense(b.h_n, 4, name="out")
}
train g {
    input x: f32[batch, 4, 5]
    input t: f32[batch, 4]
    loss = mse(m(x), t)
    optimizer = sgd(lr=0.1)
}
""",
}
