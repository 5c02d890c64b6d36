"""A dlc model's inference graph as an ONNX model.

The graph exported is the checked one (before autodiff and the optimizing
passes), where each op is still close to what the user wrote. Nodes are
emitted on demand from the outputs, so dead values (a recurrence's unused
final cell state) leave nothing, and a few patterns become one ONNX node:
a dense layer's product + bias (Gemm), a convolution's zero padding and
bias (Conv), a batchnorm's inference arithmetic (BatchNormalization), a
broadcast feeding an elementwise op (ONNX broadcasts as NumPy does) and a
recurrent layer (LSTM / GRU / RNN, bidirectional in one node, their weights
re-packed in the graph from PyTorch's gate order, so the initializers keep
dlc's names and layouts). Symbolic dims (`batch`, `time`) stay symbolic:
the graph reads their run-time sizes from the inputs' shapes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..errors import DlcError, NotFoundError
from ..ir.graph import Dim, Function, Node, Value, dim_factors

OPSET = 17
IR_VERSION = 8   # what opset 17 came with; ONNX Runtime reads it

DTYPES = {"f32": np.float32, "f64": np.float64, "i32": np.int32}
UNARY = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp", "log": "Log",
         "sqrt": "Sqrt", "neg": "Neg", "abs": "Abs"}
BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}
# PyTorch's gate chunks in ONNX's order: LSTM ifgo -> iofc, GRU rzn -> zrh.
GATE_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn": (0,), "rnn_relu": (0,)}
CELL_OP = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN", "rnn_relu": "RNN"}
EXPORTABLE = sorted(set(UNARY) | set(BINARY) | {
    "gemm", "matmul", "broadcast_to", "conv2d", "conv2d_input_grad", "upsample", "pad2d", "maxpool",
    "avgpool", "global_avgpool", "reshape", "transpose", "concat", "narrow", "slice", "constant",
    "numel", "leaky_relu", "clamp", "where", "reduce_sum", "sum_last", "max_last", "sum_to",
    "stop_gradient", "gelu", "one_hot", "reduce_max", "reduce_min", "gather_rows", "argmax",
    "seq_project", "recurrence", "slice_last", "pad_last", "pick_time", "reverse_time"})


def _onnx():
    try:
        import onnx
    except ImportError:
        raise DlcError("ONNX export needs the onnx package: pip install 'dlc[onnx]'") from None
    return onnx


def export_model(prog, model: str, path) -> "onnx.ModelProto":  # noqa: F821
    """Writes model `model` of compiled program `prog`, with its current
    parameters, as an ONNX model at `path` (checked with the full check);
    returns the ModelProto."""
    onnx = _onnx()
    from .. import frontend
    checked = frontend.parse_program(prog.graph.source, prog.graph.file)
    fn = checked.functions.get(model)
    if fn is None or fn.kind != "model":
        have = [n for n, f in checked.functions.items() if f.kind == "model"]
        raise NotFoundError(f"no model named '{model}'; this program has: {', '.join(have) or 'none'}")
    params = prog.params
    proto = to_onnx(fn, {name: np.array(params[name]) for name in fn.params})
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(Path(path)))
    return proto


def to_onnx(fn: Function, weights: dict[str, np.ndarray]):
    """The ModelProto of model function `fn` (checked, unoptimized) with
    parameter values `weights`."""
    onnx = _onnx()
    h = onnx.helper
    ex = _Exporter(h, fn, weights)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20 * len(fn.nodes) + 1000))   # emission recurses along the graph
    try:
        results = {name: ex.value(v) for name, v in fn.outputs.items()}
    finally:
        sys.setrecursionlimit(limit)
    ex.name_outputs(results)

    def info(name: str, v: Value):
        shape = [d if isinstance(d, int) else str(d) for d in v.type.shape]
        return h.make_tensor_value_info(name, h.np_dtype_to_tensor_dtype(np.dtype(DTYPES[v.type.dtype])), shape)

    graph = h.make_graph(
        ex.nodes, fn.name, [info(v.name, v) for v in fn.inputs],
        [info(name, v) for name, v in fn.outputs.items()],
        [onnx.numpy_helper.from_array(np.asarray(a, order="C"), name) for name, a in ex.inits.items()])
    from .. import __version__
    return h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                        producer_name="dlc", producer_version=__version__)


class _Exporter:
    def __init__(self, helper, fn: Function, weights: dict[str, np.ndarray]):
        self.h, self.fn, self.weights = helper, fn, weights
        self.readers = fn.readers()
        self.nodes: list = []
        self.inits: dict[str, np.ndarray] = {}
        self.names: dict[int, str] = {id(v): v.name for v in fn.inputs}
        self.dims: dict[Dim, str] = {}
        self.recurrences: dict[tuple, _Recurrent] = {}
        self.count = 0

    # ------------------------------------------------------------ helpers

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def emit(self, op: str, inputs: list[str], outputs: int = 1, **attrs):
        outs = [self.fresh(op) for _ in range(outputs)]
        self.nodes.append(self.h.make_node(op, inputs, outs, name=outs[0], **attrs))
        return outs[0] if outputs == 1 else outs

    def const(self, array, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.inits[name] = np.asarray(array)
        return name

    def ints(self, values) -> str:
        return self.const(np.array(values, np.int64), "ints")

    def value(self, v: Value) -> str:
        """v's ONNX name, its node (and what that reads) emitted first."""
        name = self.names.get(id(v))
        if name is not None:
            return name
        if v.kind == "param":
            name = v.name
            self.inits[name] = self.weights[name]
        else:
            name = self.node(v.node)
        self.names[id(v)] = name
        return name

    def dim(self, d: Dim) -> str:
        """int64[1]: the run-time size of dim d."""
        if d not in self.dims:
            if isinstance(d, int):
                self.dims[d] = self.ints([d])
            else:
                fixed, syms = dim_factors(d)
                parts = [self.symbol(s) for s in syms] + ([self.ints([fixed])] if fixed != 1 else [])
                out = parts[0]
                for p in parts[1:]:
                    out = self.emit("Mul", [out, p])
                self.dims[d] = out
        return self.dims[d]

    def symbol(self, s: str) -> str:
        for v in self.fn.inputs:
            if s in v.type.shape:
                i = v.type.shape.index(s)
                return self.emit("Shape", [v.name], start=i, end=i + 1)
        raise DlcError(f"ONNX export: no input of model '{self.fn.name}' has the dim '{s}'")

    def shape(self, shape) -> str:
        """int64[rank]: a shape, computed at run time where it is symbolic."""
        if all(isinstance(d, int) for d in shape):
            return self.ints(list(shape))
        return self.emit("Concat", [self.dim(d) for d in shape], axis=0)

    def producer(self, v: Value, op: str) -> Node | None:
        return v.node if v.node is not None and v.node.op.name == op else None

    def only_reader(self, v: Value, n: Node) -> bool:
        return self.readers.get(id(v), []) == [n] and id(v) not in {id(o) for o in self.fn.outputs.values()}

    def name_outputs(self, results: dict[str, str]) -> None:
        """Gives the nodes that compute the outputs the outputs' names
        (an output that is an input, a parameter or another output's value
        gets an Identity)."""
        produced = {o for n in self.nodes for o in n.output}
        rename, used = {}, set()
        for out, src in results.items():
            if src in produced and src not in used:
                rename[src] = out
            else:
                self.nodes.append(self.h.make_node("Identity", [rename.get(src, src)], [out], name=out))
            used.add(src)
        for n in self.nodes:
            n.input[:] = [rename.get(x, x) for x in n.input]
            n.output[:] = [rename.get(x, x) for x in n.output]

    # -------------------------------------------------------------- ops

    def node(self, n: Node) -> str:
        op = n.op.name
        if op in UNARY:
            return self.emit(UNARY[op], [self.value(n.inputs[0])])
        if op in BINARY:
            return self.binary(n)
        handler = getattr(self, "op_" + op, None)
        if handler is None:
            raise DlcError(f"ONNX export of model '{self.fn.name}': op '{op}' (giving {n.out.type}) "
                           f"has no ONNX form here; exportable ops: {', '.join(EXPORTABLE)}")
        return handler(n)

    def operand(self, v: Value, n: Node) -> str:
        """v as an operand of elementwise n: a broadcast is left to ONNX's
        broadcasting when the other operand has the result's full shape."""
        b = self.producer(v, "broadcast_to")
        others = [o for o in n.inputs if o is not v]
        if b is not None and others and all(o.type.shape == n.out.type.shape and
                                            self.producer(o, "broadcast_to") is None for o in others):
            return self.value(b.inputs[0])
        return self.value(v)

    def binary(self, n: Node) -> str:
        a, b = n.inputs
        if n.op.name == "add":
            fused = self.with_bias(a, b, n) or self.with_bias(b, a, n) or self.concat_last(a, b) \
                or self.batchnorm(a, b)
            if fused:
                return fused
        return self.emit(BINARY[n.op.name], [self.operand(a, n), self.operand(b, n)])

    def with_bias(self, main: Value, bias: Value, add: Node) -> str | None:
        """Gemm or Conv with its bias as input C / B: a dense layer
        (gemm + broadcast bias [N]) or a convolution (conv2d + broadcast
        bias [C, 1, 1])."""
        bcast = self.producer(bias, "broadcast_to")
        if bcast is None or not self.only_reader(main, add):
            return None
        b = bcast.inputs[0]
        gemm = self.producer(main, "gemm")
        conv = self.producer(main, "conv2d") or self.producer(main, "conv2d_input_grad")
        if gemm is not None and main.type.rank == 2 and b.type.rank == 1:
            return self.op_gemm(gemm, self.value(b))
        shaped = self.producer(b, "reshape")
        if conv is not None and shaped is not None and shaped.inputs[0].type.rank == 1:
            return getattr(self, "op_" + conv.op.name)(conv, self.value(shaped.inputs[0]))
        return None

    def param_of(self, v: Value, *through: str) -> Value | None:
        """The param that v is, through a chain of the ops `through` (outermost first)."""
        for op in through:
            node = self.producer(v, op)
            if node is None:
                return None
            v = node.inputs[0]
        return v if v.kind == "param" else None

    def constant_of(self, v: Value) -> float | None:
        """The number a broadcast constant holds."""
        c = self.producer(v, "broadcast_to")
        c = c and self.producer(c.inputs[0], "constant")
        return None if c is None else c.attrs["value"]

    def batchnorm(self, scaled: Value, shift: Value) -> str | None:
        """BatchNormalization for a batchnorm layer's inference arithmetic,
        ((x - mean) * (1 / sqrt(var + eps))) * weight + bias, per channel."""
        per_channel = lambda v: self.param_of(v, "broadcast_to", "reshape")
        times_weight = self.producer(scaled, "mul")
        normalized = times_weight and self.producer(times_weight.inputs[0], "mul")
        centered = normalized and self.producer(normalized.inputs[0], "sub")
        inv = normalized and self.producer(normalized.inputs[1], "broadcast_to")
        inv = inv and self.producer(inv.inputs[0], "div")
        root = inv and self.producer(inv.inputs[1], "sqrt")
        plus = root and self.producer(root.inputs[0], "add")
        if plus is None or self.constant_of(inv.inputs[0]) != 1.0:
            return None
        layer = [per_channel(shift), per_channel(times_weight.inputs[1]), per_channel(centered.inputs[1]),
                 self.param_of(plus.inputs[0], "reshape")]
        eps = self.constant_of(plus.inputs[1])
        if None in layer or eps is None:
            return None
        bias, weight, mean, var = layer
        prefix = bias.name.rsplit(".", 1)[0]
        if [p.name for p in layer] != [f"{prefix}.{s}" for s in ("bias", "weight", "running_mean", "running_var")]:
            return None
        out = self.emit("BatchNormalization", [self.value(centered.inputs[0])] +
                        [self.value(p) for p in (weight, bias, mean, var)], epsilon=float(eps))
        self.nodes[-1].name = f"/{prefix}/BatchNormalization"
        return out

    def concat_last(self, a: Value, b: Value) -> str | None:
        """Concat for the sum of two zero-padded halves of the last axis
        (how a bidirectional layer joins its directions)."""
        pa, pb = self.producer(a, "pad_last"), self.producer(b, "pad_last")
        if pa is None or pb is None:
            return None
        if pa.attrs["start"] > pb.attrs["start"]:
            pa, pb = pb, pa
        first, second = pa.inputs[0], pb.inputs[0]
        if pa.attrs["start"] != 0 or pb.attrs["start"] != first.type.shape[-1] or \
                pb.attrs["width"] != pb.attrs["start"] + second.type.shape[-1]:
            return None
        return self.bidirectional(first, second) or \
            self.emit("Concat", [self.value(first), self.value(second)], axis=-1)

    def op_pad_last(self, n: Node) -> str:
        x = n.inputs[0]
        before = [0] * (x.type.rank - 1)
        start, after = n.attrs["start"], n.attrs["width"] - n.attrs["start"] - x.type.shape[-1]
        return self.emit("Pad", [self.value(x), self.ints(before + [start] + before + [after])])

    def op_gemm(self, n: Node, bias: str | None = None) -> str:
        a, b = n.inputs
        ta, tb = n.attrs["ta"], n.attrs["tb"]
        if a.type.rank == 2 and b.type.rank == 2:
            return self.emit("Gemm", [self.value(a), self.value(b)] + ([bias] if bias else []),
                             transA=int(ta), transB=int(tb))

        def t(v: Value, flip: bool) -> str:
            if not flip:
                return self.value(v)
            perm = list(range(v.type.rank))
            perm[-2:] = perm[-1], perm[-2]
            return self.emit("Transpose", [self.value(v)], perm=perm)
        return self.emit("MatMul", [t(a, ta), t(b, tb)])

    def op_matmul(self, n: Node) -> str:
        return self.emit("MatMul", [self.value(v) for v in n.inputs])

    def op_broadcast_to(self, n: Node) -> str:
        return self.emit("Expand", [self.value(n.inputs[0]), self.shape(n.attrs["shape"])])

    def op_conv2d(self, n: Node, bias: str | None = None) -> str:
        x, w = n.inputs
        (ph, pw), extra = n.attrs["padding"], (0, 0)
        pad = self.producer(x, "pad2d")
        if pad is not None:   # dlc pads with zeros before the convolution; Conv pads with zeros too
            x, extra = pad.inputs[0], pad.attrs["padding"]
        ph, pw = ph + extra[0], pw + extra[1]
        return self.emit("Conv", [self.value(x), self.value(w)] + ([bias] if bias else []),
                         kernel_shape=list(n.attrs["kernel"]), strides=list(n.attrs["stride"]),
                         dilations=list(n.attrs["dilation"]), group=n.attrs["groups"],
                         pads=[ph, pw, ph, pw])

    def op_conv2d_input_grad(self, n: Node, bias: str | None = None) -> str:
        """conv_transpose2d: ConvTranspose of the unpadded input (dlc pads
        it for a stride-1 form of the product), output_padding from the size."""
        from ..ops.conv import unpadded_g, windows
        x, w = unpadded_g(n), n.inputs[1]
        (ph, pw), size = n.attrs["padding"], n.attrs["size"]
        spans = [win.span for win in windows(size, n.attrs)]
        extra = [o - ((i - 1) * s + span - 2 * p) for o, i, s, span, p in
                 zip(size, x.type.shape[2:], n.attrs["stride"], spans, (ph, pw))]
        return self.emit("ConvTranspose", [self.value(x), self.value(w)] + ([bias] if bias else []),
                         kernel_shape=list(n.attrs["kernel"]), strides=list(n.attrs["stride"]),
                         dilations=list(n.attrs["dilation"]), group=n.attrs["groups"],
                         pads=[ph, pw, ph, pw], output_padding=extra)

    def op_upsample(self, n: Node) -> str:
        """Resize by integer scales: nearest as PyTorch's (floor of the
        scaled position), bilinear with align_corners=False (half pixels)."""
        sh, sw = n.attrs["scale"]
        nearest = n.attrs["mode"] == "nearest"
        mode = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"} \
            if nearest else {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}
        scales = self.const(np.array([1, 1, sh, sw], np.float32))
        return self.emit("Resize", [self.value(n.inputs[0]), "", scales], **mode)

    def op_pad2d(self, n: Node) -> str:
        ph, pw = n.attrs["padding"]
        return self.emit("Pad", [self.value(n.inputs[0]), self.ints([0, 0, ph, pw, 0, 0, ph, pw])])

    def pool(self, n: Node, op: str, **extra) -> str:
        (ph, pw), dilation = n.attrs["padding"], list(n.attrs["dilation"])
        if op == "AveragePool" and dilation != [1, 1]:   # dilations: opset 19
            raise DlcError(f"ONNX export (opset {OPSET}): avgpool with dilation {tuple(dilation)} "
                           f"has no ONNX form")
        if op == "MaxPool":
            extra["dilations"] = dilation
        return self.emit(op, [self.value(n.inputs[0])], kernel_shape=list(n.attrs["kernel"]),
                         strides=list(n.attrs["stride"]), pads=[ph, pw, ph, pw], **extra)

    def op_maxpool(self, n: Node) -> str:
        return self.pool(n, "MaxPool")

    def op_avgpool(self, n: Node) -> str:
        return self.pool(n, "AveragePool", count_include_pad=1)

    def op_global_avgpool(self, n: Node) -> str:
        return self.emit("GlobalAveragePool", [self.value(n.inputs[0])])

    def op_reshape(self, n: Node) -> str:
        shape = n.attrs["shape"]
        free = [i for i, d in enumerate(shape) if not isinstance(d, int)]
        if len(free) == 1:   # the one run-time size is what is left: -1
            target = self.ints([-1 if i in free else d for i, d in enumerate(shape)])
        else:
            target = self.shape(shape)
        return self.emit("Reshape", [self.value(n.inputs[0]), target])

    def op_transpose(self, n: Node) -> str:
        return self.emit("Transpose", [self.value(n.inputs[0])], perm=list(n.attrs["dims"]))

    def op_concat(self, n: Node) -> str:
        return self.emit("Concat", [self.value(v) for v in n.inputs], axis=n.attrs["axis"])

    def slice(self, v: Value, axis: int, start: int, size: int) -> str:
        end = start + size if start + size != 0 else np.iinfo(np.int64).max
        return self.emit("Slice", [self.value(v), self.ints([start]), self.ints([end]), self.ints([axis])])

    def op_narrow(self, n: Node) -> str:
        return self.slice(n.inputs[0], n.attrs["axis"], n.attrs["start"], n.attrs["length"])

    def op_slice(self, n: Node) -> str:
        return self.slice(n.inputs[0], n.attrs["axis"], n.attrs["start"], n.attrs["size"])

    def op_constant(self, n: Node) -> str:
        return self.const(np.array(n.attrs["value"], DTYPES[n.attrs["dtype"]]))

    def op_numel(self, n: Node) -> str:
        dims = n.attrs["shape"]
        count = self.dim(dims[0]) if dims else self.ints([1])
        for d in dims[1:]:
            count = self.emit("Mul", [count, self.dim(d)])
        scalar = self.emit("Reshape", [count, self.ints([])])
        return self.emit("Cast", [scalar], to=self.h.np_dtype_to_tensor_dtype(np.dtype(DTYPES[n.attrs["dtype"]])))

    def op_leaky_relu(self, n: Node) -> str:
        return self.emit("LeakyRelu", [self.value(n.inputs[0])], alpha=float(n.attrs["slope"]))

    def op_clamp(self, n: Node) -> str:
        dt = DTYPES[n.out.type.dtype]
        return self.emit("Clip", [self.value(n.inputs[0]), self.const(np.array(n.attrs["lo"], dt)),
                                  self.const(np.array(n.attrs["hi"], dt))])

    def op_where(self, n: Node) -> str:
        c, a, b = n.inputs
        zero = self.const(np.zeros((), DTYPES[c.type.dtype]))
        cond = self.emit("Not", [self.emit("Equal", [self.operand(c, n), zero])])
        return self.emit("Where", [cond, self.operand(a, n), self.operand(b, n)])

    def reduce(self, n: Node, op: str) -> str:
        axes = list(n.attrs["axes"]) if "axes" in n.attrs else [-1]   # sum_last, max_last: the last
        if op == "ReduceSum":   # axes: an input from opset 13, an attribute of the others until 18
            return self.emit(op, [self.value(n.inputs[0]), self.ints(axes)], keepdims=1)
        return self.emit(op, [self.value(n.inputs[0])], axes=axes, keepdims=1)

    def op_reduce_sum(self, n: Node) -> str:
        return self.reduce(n, "ReduceSum")

    def op_reduce_max(self, n: Node) -> str:
        return self.reduce(n, "ReduceMax")

    def op_reduce_min(self, n: Node) -> str:
        return self.reduce(n, "ReduceMin")

    def op_sum_last(self, n: Node) -> str:
        return self.reduce(n, "ReduceSum")

    def op_max_last(self, n: Node) -> str:
        return self.reduce(n, "ReduceMax")

    def op_stop_gradient(self, n: Node) -> str:   # inference has no gradient to stop
        return self.value(n.inputs[0])

    def op_sum_to(self, n: Node) -> str:
        x, shape = n.inputs[0], n.attrs["shape"]
        lead = x.type.rank - len(shape)
        axes = list(range(lead)) + [lead + i for i, d in enumerate(shape)
                                    if d == 1 and x.type.shape[lead + i] != 1]
        if not axes:
            return self.value(x)
        summed = self.emit("ReduceSum", [self.value(x), self.ints(axes)], keepdims=1)
        return self.emit("Reshape", [summed, self.shape(shape)]) if lead else summed

    def op_gelu(self, n: Node) -> str:
        """x Phi(x) from Erf (ONNX's Gelu is opset 20), or the tanh form."""
        x, dt = self.value(n.inputs[0]), DTYPES[n.out.type.dtype]
        c = lambda v: self.const(np.array(v, dt))
        if n.attrs["approximate"] == "tanh":
            from ..ops.elementwise import GELU_C, GELU_K
            cube = self.emit("Mul", [self.emit("Mul", [x, x]), x])
            inner = self.emit("Mul", [c(GELU_C), self.emit("Add", [x, self.emit("Mul", [c(GELU_K), cube])])])
            phi2 = self.emit("Add", [c(1.0), self.emit("Tanh", [inner])])
        else:
            phi2 = self.emit("Add", [c(1.0), self.emit("Erf", [self.emit("Div", [x, c(np.sqrt(2.0))])])])
        return self.emit("Mul", [self.emit("Mul", [c(0.5), x]), phi2])

    def op_one_hot(self, n: Node) -> str:
        values = self.const(np.array([0, 1], np.float32))
        labels = self.emit("Cast", [self.value(n.inputs[0])],   # ONNX Runtime's OneHot reads int64 labels
                           to=self.h.np_dtype_to_tensor_dtype(np.dtype(np.int64)))
        return self.emit("OneHot", [labels, self.ints(n.attrs["n"]), values], axis=-1)

    def op_argmax(self, n: Node) -> str:
        i = self.emit("ArgMax", [self.value(n.inputs[0])], axis=n.attrs["axis"], keepdims=0)
        return self.emit("Cast", [i], to=self.h.np_dtype_to_tensor_dtype(np.dtype(np.int32)))

    def op_gather_rows(self, n: Node) -> str:
        w, tokens = n.inputs
        return self.emit("Gather", [self.value(w), self.value(tokens)], axis=0)

    def op_seq_project(self, n: Node) -> str:
        x, w = n.inputs
        perm = [1, 0] if n.attrs["tw"] else [0, 1]
        return self.emit("MatMul", [self.value(x), self.emit("Transpose", [self.value(w)], perm=perm)])

    # ------------------------------------------------------- recurrences

    def lengths64(self, x: Value, lengths: Value | None) -> str:
        """int64[batch]: each example's length (all of `time` without lengths)."""
        if lengths is not None:
            return self.emit("Cast", [self.value(lengths)], to=self.h.np_dtype_to_tensor_dtype(np.dtype(np.int64)))
        return self.emit("Expand", [self.dim(x.type.shape[1]), self.dim(x.type.shape[0])])

    def op_reverse_time(self, n: Node) -> str:
        x, *lengths = n.inputs
        return self.emit("ReverseSequence", [self.value(x), self.lengths64(x, lengths[0] if lengths else None)],
                         batch_axis=0, time_axis=1)

    def gates(self, v: Value, cell: str) -> str:
        """A PyTorch-packed weight or bias, its gate chunks in ONNX's order."""
        order, name = GATE_ORDER[cell], self.value(v)
        if len(order) == 1:
            return name
        rows = v.type.shape[0] // len(order)
        parts = self.emit("Split", [name, self.ints([rows] * len(order))], outputs=len(order), axis=0)
        return self.emit("Concat", [parts[i] for i in order], axis=0)

    def recurrence(self, *dirs: Node) -> _Recurrent:
        """The ONNX recurrent node of one recurrence, or of a bidirectional
        layer's two (forward, reverse)."""
        key = tuple(id(n) for n in dirs)
        if key in self.recurrences:
            return self.recurrences[key]
        n = dirs[0]
        cell, H = n.attrs["cell"], n.attrs["hidden"]
        x = self.producer(n.inputs[0], "seq_project").inputs[0]
        init = [dict(zip(d.attrs["init"], d.inputs[4:])) for d in dirs]
        lengths = n.inputs[-1] if n.attrs["lengths"] else None

        def stacked(values: list[str]) -> str:   # [D, ...]: one row per direction
            rows = [self.emit("Unsqueeze", [v, self.ints([0])]) for v in values]
            return rows[0] if len(rows) == 1 else self.emit("Concat", rows, axis=0)
        project = [self.producer(d.inputs[0], "seq_project").inputs[1] for d in dirs]
        inputs = [self.emit("Transpose", [self.value(x)], perm=[1, 0, 2]),   # time-major
                  stacked([self.gates(w, cell) for w in project]),
                  stacked([self.gates(d.inputs[1], cell) for d in dirs]),
                  stacked([self.emit("Concat", [self.gates(d.inputs[2], cell), self.gates(d.inputs[3], cell)],
                                     axis=0) for d in dirs]),
                  self.value(lengths) if lengths is not None else ""]
        for s in ("hc" if cell == "lstm" else "h"):
            inputs.append(stacked([self.value(i[s]) for i in init]) if s in init[0] else "")
        attrs = {"hidden_size": H}
        if len(dirs) == 2:
            attrs["direction"] = "bidirectional"
        if cell in ("rnn", "rnn_relu"):
            attrs["activations"] = ["Tanh" if cell == "rnn" else "Relu"] * len(dirs)
        if cell == "gru":
            attrs["linear_before_reset"] = 1   # PyTorch's n = tanh(W_in x + r * (W_hn h + b_hn))
        layer = n.inputs[1].name.rsplit(".weight_hh", 1)[0]
        outs = self.emit(CELL_OP[cell], inputs, outputs=3 if cell == "lstm" else 2, **attrs)
        self.nodes[-1].name = f"/{layer}/{CELL_OP[cell]}"   # the module path names the layer on import
        found = self.recurrences[key] = _Recurrent(self, outs, len(dirs))
        return found

    def bidirectional(self, first: Value, second: Value) -> str | None:
        """[forward | reverse] of a bidirectional layer (its states, or its
        final h or c) as the outputs of one ONNX node, when `first` comes
        from a forward recurrence and `second` from the reverse one over
        the same input."""
        rev = self.producer(second, "reverse_time")
        a = self.state(first)
        b = self.state(rev.inputs[0]) if rev is not None else None
        what = "h"
        if a is None or b is None:
            pa, pb = self.producer(first, "pick_time"), self.producer(second, "pick_time")
            if pa is None or pb is None or pa.attrs.get("first") or pb.attrs.get("first"):
                return None
            a, b = self.state(pa.inputs[0]), self.state(pb.inputs[0])
            if a is None or b is None or a[1] != b[1] or pa.inputs[1:] != pb.inputs[1:]:
                return None
            what = a[1] + "_n"
        elif a[1] != "h" or b[1] != "h":
            return None
        fwd, bwd = a[0], b[0]
        xa, xb = (self.producer(d.inputs[0], "seq_project").inputs[0] for d in (fwd, bwd))
        flip = self.producer(xb, "reverse_time")
        lengths = lambda d: d.inputs[4 + len(d.attrs["init"]):]
        if flip is None or flip.inputs[0] is not xa or fwd.attrs != bwd.attrs or lengths(fwd) != lengths(bwd):
            return None
        return self.recurrence(fwd, bwd).get(what)

    def op_recurrence(self, n: Node) -> str:
        if n.attrs["cell"] not in ("rnn", "rnn_relu"):
            raise DlcError("ONNX export: a recurrence's packed state is not an ONNX tensor")
        return self.recurrence(n).get("h")

    def state(self, v: Value) -> tuple[Node, str] | None:
        """(recurrence, 'h' or 'c') when v is a recurrence's hidden or cell states."""
        rec = self.producer(v, "recurrence")
        if rec is not None:
            return (rec, "h") if rec.attrs["cell"] in ("rnn", "rnn_relu") else None
        part = self.producer(v, "slice_last")
        rec = part and self.producer(part.inputs[0], "recurrence")
        if rec is None or part.attrs["size"] != rec.attrs["hidden"]:
            return None
        return {0: (rec, "h"), rec.attrs["hidden"]: (rec, "c")}.get(part.attrs["start"]) \
            if rec.attrs["cell"] == "lstm" else ((rec, "h") if part.attrs["start"] == 0 else None)

    def op_slice_last(self, n: Node) -> str:
        found = self.state(n.out)
        if found is not None and found[1] == "h":
            return self.recurrence(found[0]).get("h")
        if found is not None or self.producer(n.inputs[0], "recurrence"):
            raise DlcError("ONNX export: ONNX's recurrent ops give the hidden states of every "
                           "step and the final states only (h_n, c_n), not the cell state of every step")
        x = n.inputs[0]
        return self.slice(x, x.type.rank - 1, n.attrs["start"], n.attrs["size"])

    def op_pick_time(self, n: Node) -> str:
        h, *lengths = n.inputs
        found = self.state(h)
        if found is not None and not n.attrs.get("first"):
            rec, which = found
            rec_lengths = rec.inputs[-1] if rec.attrs["lengths"] else None
            if (lengths[0] if lengths else None) is rec_lengths:
                return self.recurrence(rec).get(f"{which}_n")
        if n.attrs.get("first") or not lengths:
            at = self.const(np.array(0 if n.attrs.get("first") else -1, np.int64))
            return self.emit("Gather", [self.value(h), at], axis=1)
        last = self.emit("Sub", [self.lengths64(h, lengths[0]), self.ints([1])])
        index = self.emit("Unsqueeze", [last, self.ints([1])])   # [batch, 1]: one step per example
        return self.emit("GatherND", [self.value(h), index], batch_dims=1)


class _Recurrent:
    """The outputs of an ONNX recurrent node (Y [time, D, batch, hidden],
    Y_h and Y_c [D, batch, hidden]) in dlc's layouts, made when first
    asked for: 'h' all states [batch, time, D*hidden] (directions side by
    side, as PyTorch's), 'h_n' and 'c_n' final states [batch, D*hidden]."""

    def __init__(self, ex: _Exporter, outs: list[str], directions: int):
        self.ex, self.outs, self.d, self.made = ex, outs, directions, {}

    def get(self, what: str) -> str:
        if what not in self.made:
            ex = self.ex
            if what == "h":
                y = self.outs[0]
                if self.d == 1:
                    tbh = ex.emit("Squeeze", [y, ex.ints([1])])
                else:
                    tbh = ex.emit("Reshape", [ex.emit("Transpose", [y], perm=[0, 2, 1, 3]), ex.ints([0, 0, -1])])
                self.made[what] = ex.emit("Transpose", [tbh], perm=[1, 0, 2])
            else:
                final = self.outs[1 if what == "h_n" else 2]
                self.made[what] = ex.emit("Squeeze", [final, ex.ints([0])]) if self.d == 1 else \
                    ex.emit("Reshape", [ex.emit("Transpose", [final], perm=[1, 0, 2]), ex.ints([0, -1])])
        return self.made[what]
