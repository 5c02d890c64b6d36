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
    # Recurrences (statement-level kernels), both directions, stacked.
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
}
