"""batchnorm(x): nn.BatchNorm2d over NCHW, composed of graph ops.

Parameters, with BatchNorm2d's names so a state dict maps by name:
`<name>.weight` (ones), `<name>.bias` (zeros), and the buffers
`<name>.running_mean` (zeros), `<name>.running_var` (ones) and
`<name>.num_batches_tracked` (zeros; i32 here, int64 in PyTorch). The
buffers are params, so weights files save and load them, but no loss
depends on them in a train block, so no optimizer ever changes them.

In a train block: normalise with the batch's mean and biased variance, and
write running = (1 - momentum) * running + momentum * batch statistic (the
variance unbiased) and num_batches_tracked + 1 after the step. In a model's
inference entry: normalise with the running statistics.

layernorm(x): nn.LayerNorm(x.shape[-1]) over the last axis, with
`<name>.weight` (ones) and `<name>.bias` (zeros) of that size: each row
normalised by its own mean and biased variance, in train blocks and models.
"""
from __future__ import annotations

from ..ir.graph import Builder, Init, TensorType, Value
from .base import Arg, Op, OpError, need_float, need_image, register
from .elementwise import NUMEL, SQRT, add, div, mul, scalar_like, sub
from .shape import broadcast, reshape, sum_to


class BatchNorm(Op):
    name = "batchnorm"
    owns_params = True
    signature = (Arg("x", "tensor"), Arg("eps", "float", 1e-5), Arg("momentum", "float", 0.1),
                 Arg("name", "str", None))

    def build(self, b: Builder, args) -> Value:
        x, name, eps, momentum = args["x"], args["name"], args["eps"], args["momentum"]
        need_image("batchnorm", x.type, fixed_channels=True)
        c = x.type.shape[1]
        if not 0 <= momentum <= 1:
            raise OpError(f"'batchnorm' needs momentum in [0, 1], got {momentum:g}", arg="momentum")
        dt, shape = x.type.dtype, x.type.shape
        vec = TensorType(dt, (c,))

        def param(suffix, init, t=vec):
            return b.param(f"{name}.{suffix}", t, Init(init), layer=name)

        weight, bias = param("weight", "ones"), param("bias", "zeros")
        running_mean, running_var = param("running_mean", "zeros"), param("running_var", "ones")
        tracked = param("num_batches_tracked", "zeros", TensorType("i32", ()))
        per_channel = lambda v: broadcast(b, reshape(b, v, (c, 1, 1)), shape)
        if b.fn.kind == "train":
            count, mean, centered, var = moments(b, x, (1, c, 1, 1))
            if any(t is running_mean for t, _ in b.fn.assigns):
                raise OpError(f"batchnorm layer '{name}' is used twice in train block "
                              f"'{b.fn.name}'; its running statistics can take one update per step")
            unbiased = div(b, count, sub(b, count, scalar_like(b, 1.0, count)))
            m = lambda v: scalar_like(b, momentum, v)
            keep = lambda v: scalar_like(b, 1.0 - momentum, v)
            new_mean = add(b, mul(b, keep(running_mean), running_mean),
                           mul(b, m(running_mean), reshape(b, mean, (c,))))
            batch_var = mul(b, reshape(b, var, (c,)), broadcast(b, unbiased, (c,)))
            new_var = add(b, mul(b, keep(running_var), running_var), mul(b, m(running_var), batch_var))
            b.fn.assigns += [(running_mean, new_mean), (running_var, new_var),
                             (tracked, add(b, tracked, scalar_like(b, 1, tracked)))]
        else:
            centered = sub(b, x, per_channel(running_mean))
            var = reshape(b, running_var, (1, c, 1, 1))
        y = add(b, mul(b, normalized(b, centered, var, eps), per_channel(weight)), per_channel(bias))
        b.layer(name, self.name, y)
        return y


class LayerNorm(Op):
    name = "layernorm"
    owns_params = True
    signature = (Arg("x", "tensor"), Arg("eps", "float", 1e-5), Arg("name", "str", None))

    def build(self, b: Builder, args) -> Value:
        x, name = args["x"], args["name"]
        need_float("layernorm", x.type)
        if x.type.rank == 0 or not isinstance(x.type.shape[-1], int):
            raise OpError(f"'layernorm' needs a fixed size of the last axis, got {x.type}", arg="x")
        shape = x.type.shape
        vec = TensorType(x.type.dtype, shape[-1:])
        weight = b.param(f"{name}.weight", vec, Init("ones"), layer=name)
        bias = b.param(f"{name}.bias", vec, Init("zeros"), layer=name)
        _, _, centered, var = moments(b, x, shape[:-1] + (1,))
        y = add(b, mul(b, normalized(b, centered, var, args["eps"]), broadcast(b, weight, shape)),
                broadcast(b, bias, shape))
        b.layer(name, self.name, y)
        return y


def moments(b: Builder, x: Value, stat_shape: tuple) -> tuple[Value, Value, Value, Value]:
    """The count, mean, x - mean and biased variance over the axes where
    stat_shape is 1 (mean and variance of shape stat_shape)."""
    shape = x.type.shape
    count = b.node(NUMEL, [], shape=tuple(d for d, s in zip(shape, stat_shape) if s == 1),
                   dtype=x.type.dtype)
    n = broadcast(b, count, stat_shape)
    mean = div(b, sum_to(b, x, stat_shape), n)
    centered = sub(b, x, broadcast(b, mean, shape))
    return count, mean, centered, div(b, sum_to(b, mul(b, centered, centered), stat_shape), n)


def normalized(b: Builder, centered: Value, var: Value, eps: float) -> Value:
    """centered / sqrt(var + eps), var broadcast."""
    inv_std = div(b, scalar_like(b, 1.0, var), b.node(SQRT, [add(b, var, scalar_like(b, eps, var))]))
    return mul(b, centered, broadcast(b, inv_std, centered.type.shape))


BATCHNORM, LAYERNORM = register(BatchNorm()), register(LayerNorm())
