"""An ONNX model as a `.dl` program and its weights.

`import_model(path)` reads the model with the `onnx` package (checked, and
its shapes inferred), walks its nodes in order and writes one statement per
layer or op. What the graph computes from constants alone (initializers,
Constant nodes, Identity aliases of weights) is folded; the shape
arithmetic the exporter writes for `x.view(x.size(0), -1)` (Shape -> Gather
-> Unsqueeze -> Concat -> Reshape) is followed symbolically, so a dynamic
batch stays `batch`. Layers take the name their weights have in the file
(`fc1.weight` -> `dense(..., name="fc1")`), else the module path of their
node (`/block/conv1/Conv` -> `block.conv1`), else `<op><k>`; the weights
are returned under the names, and in the layouts, the program's
parameters have (PyTorch's), so they load by name.
"""
from __future__ import annotations

import json
import keyword
import re
import struct
from pathlib import Path

import numpy as np

from ..errors import DlcError

SUPPORTED = sorted([
    "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Conv", "BatchNormalization", "Relu", "Sigmoid",
    "Tanh", "LeakyRelu", "Softmax", "LogSoftmax", "Exp", "Log", "Sqrt", "Abs", "Neg", "MaxPool",
    "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Transpose", "Concat", "Dropout",
    "Identity", "Gather", "Shape", "Unsqueeze", "Squeeze", "Constant", "Cast", "ConstantOfShape",
    "Slice", "ConvTranspose", "Resize",
    "LSTM", "GRU", "RNN"])
UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log",
         "Sqrt": "sqrt", "Abs": "abs"}
BINARY = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/"}
RESERVED = {"model", "train", "input", "output", "loss", "optimizer", "on", "true", "false"}


def _onnx():
    try:
        import onnx
    except ImportError:
        raise DlcError("ONNX import needs the onnx package: pip install 'dlc[onnx]'") from None
    return onnx


def import_model(path, model: str | None = None, loss: str | None = None,
                 optimizer: str = "sgd(lr=0.01)") -> tuple[str, dict[str, np.ndarray]]:
    """(.dl source of one model named `model`, default the file's stem;
    {param name: array}). With `loss` (cross_entropy, mse, ...), a train
    block `fit` of that loss against an input `t` and `optimizer`."""
    onnx = _onnx()
    from google.protobuf.message import DecodeError   # protobuf: onnx's own dependency
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except (OSError, DecodeError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise DlcError(f"cannot read ONNX model '{path}': {e}") from None
    name = _identifier(model or Path(path).stem)
    imp = _Importer(onnx, proto)
    imp.run()
    return imp.source(name, loss, optimizer), imp.weights


def save_safetensors(weights: dict[str, np.ndarray], path) -> None:
    """Writes `weights` as a safetensors file (what Session.load reads)."""
    codes = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.int32): "I32"}
    header, offset, blobs = {}, 0, []
    for name, a in weights.items():
        a = np.asarray(a, order="C")   # ascontiguousarray would make a scalar [1]
        data = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": codes[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)   # the data starts 8-aligned
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def _identifier(text: str) -> str:
    name = re.sub(r"\W", "_", text).strip("_") or "v"
    if name[0].isdigit() or name in RESERVED or keyword.iskeyword(name):
        name = "v_" + name
    return name


class _Var:
    """A tensor of the program: its .dl name, shape (dims: int or symbol;
    None unknown) and dtype. A view is an ONNX tensor that the program
    holds in another layout, written out only when an op reads it as it is
    (`_Importer.materialize`): ("tm", h) is h [batch, time, ...] time-major;
    ("y", s, D, H) a recurrent layer's Y [time, D, batch, H] of its states s
    [batch, time, D*H]; ("tdh", s, D, H) that Y as [time, batch, D, H];
    ("state", s.h_n, D, H) its Y_h [D, batch, H] (Y_c: s.c_n)."""
    def __init__(self, name: str, shape: tuple, dtype: str, view: tuple | None = None):
        self.name, self.shape, self.dtype, self.view = name, shape, dtype, view


class _Importer:
    def __init__(self, onnx, proto):
        self.onnx, self.proto, self.graph = onnx, proto, proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.consts: dict[str, np.ndarray] = {
            t.name: onnx.numpy_helper.to_array(t) for t in self.graph.initializer}
        self.shapes: dict[str, list] = {}        # ONNX name -> a shape vector (dims) computed at run time
        self.vars: dict[str, _Var] = {}          # ONNX name -> program tensor
        self.inputs: list[_Var] = []
        self.lines: list[str] = []
        self.weights: dict[str, np.ndarray] = {}
        self.layers: dict[str, tuple] = {}       # layer name -> its weights' ONNX names
        self.used: set[str] = set(RESERVED)
        self.symbols: dict[str, str] = {}        # dim_param -> .dl symbol
        self.types = {v.name: v.type for v in list(self.graph.value_info) + list(self.graph.output)
                      + list(self.graph.input)}
        self.readers: dict[str, list] = {}
        for n in self.graph.node:
            for x in n.input:
                self.readers.setdefault(x, []).append(n)
        self.skip: set[int] = set()              # nodes already folded into a layer
        self.zeros: set[str] = set()             # ConstantOfShape zeros (of a run-time shape)
        self.outputs: dict[str, str] = {}        # ONNX output -> its .dl name

    # ------------------------------------------------------------ helpers

    def fresh(self, base: str) -> str:
        name, k = _identifier(base), 1
        while name in self.used:
            k += 1
            name = f"{_identifier(base)}_{k}"
        self.used.add(name)
        return name

    def shape_of(self, onnx_name: str) -> tuple | None:
        t = self.types.get(onnx_name)
        if t is None or not t.tensor_type.HasField("shape"):
            return None
        return tuple(d.dim_value if d.HasField("dim_value") else self.symbols.get(d.dim_param)
                     for d in t.tensor_type.shape.dim)

    def bind(self, out: str, expr: str, base: str = "h") -> _Var:
        """`name = expr` for ONNX value `out` (a float tensor)."""
        name = self.fresh(base)
        self.lines.append(f"    {name} = {expr}")
        var = self.vars[out] = _Var(name, self.shape_of(out), "f32")
        return var

    def var(self, node, i: int) -> _Var:
        """Input i of node as a tensor of the program (a view written out)."""
        return self.materialize(self.peek(node, i))

    def peek(self, node, i: int) -> _Var:
        """Input i of node as a tensor of the program, or a view."""
        name = node.input[i]
        if name in self.zeros:
            raise self.unsupported(node, f"its input '{name}' is a ConstantOfShape, supported only "
                                         f"as a recurrent layer's initial state")
        if name not in self.vars:
            if name in self.consts:
                raise self.unsupported(node, f"its input {i} is a constant tensor, which has no "
                                             f"form in .dl here (only weights of layers and scalars)")
            raise self.unsupported(node, f"its input '{name}' is not a tensor the program computes")
        return self.vars[name]

    def attrs(self, node) -> dict:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def describe(self, node) -> str:
        shapes = []
        for x in filter(None, node.input):   # "": an optional input left out
            if x in self.consts:
                shapes.append(f"{x}: constant {list(self.consts[x].shape)}")
            else:
                s = self.shape_of(x)
                shapes.append(f"{x}: {list(s) if s is not None else 'unknown shape'}")
        return f"node '{node.name or node.output[0]}' ({node.op_type}; inputs {', '.join(shapes) or 'none'})"

    def unsupported(self, node, why: str | None = None) -> DlcError:
        what = why or f"op {node.op_type} is not supported"
        return DlcError(f"ONNX import: {self.describe(node)}: {what}; supported ops: {', '.join(SUPPORTED)}")

    def layer_name(self, node, weights: list[str], kind: str) -> str:
        """A layer's name: its weight's prefix (`fc1` of `fc1.weight`), the
        module path of its node (`block.conv1` of `/block/conv1/Conv`), or
        `<kind><k>`; unique per set of weights."""
        key = tuple(weights)
        candidates = []
        if weights[0].endswith(".weight") and all(w.startswith(weights[0][:-6]) for w in weights):
            candidates.append(weights[0][:-len(".weight")])
        path: list[str] = []
        for part in [p for p in node.name.split("/") if p][:-1]:
            # A Sequential's child is scoped as "<sequential>.<index>": /layer2/layer2.0/downsample/downsample.0
            if path and part.startswith(path[-1] + "."):
                path[-1] = part
            else:
                path.append(part)
        if path:
            candidates.append(".".join(path))
        for c in candidates:
            if re.fullmatch(r"[A-Za-z_][\w.]*", c) and self.layers.get(c, key) == key:
                self.layers[c] = key
                return c
        k = 0
        while f"{kind}{k}" in self.layers:
            k += 1
        self.layers[f"{kind}{k}"] = key
        return f"{kind}{k}"

    def const(self, node, i: int) -> np.ndarray | None:
        return self.consts.get(node.input[i]) if i < len(node.input) and node.input[i] else None

    def operand(self, node, i: int) -> str:
        """An elementwise operand: a tensor, or a constant holding one number."""
        c = self.const(node, i)
        if c is not None:
            if c.size != 1:
                raise self.unsupported(node, f"its input {i} is a constant tensor {list(c.shape)}; .dl "
                                             f"has numbers, and tensors only as layers' weights")
            return repr(float(c.reshape(())))
        return self.var(node, i).name

    def only_reader(self, name: str):
        readers = self.readers.get(name, [])
        outputs = {o.name for o in self.graph.output}
        return readers[0] if len(readers) == 1 and name not in outputs else None

    # -------------------------------------------------------------- walk

    def run(self) -> None:
        for x in self.graph.input:
            if x.name in self.consts:   # an initializer listed as an input (IR < 4)
                continue
            t = x.type.tensor_type
            dims = []
            for axis, d in enumerate(t.shape.dim):
                if d.HasField("dim_value"):
                    dims.append(d.dim_value)
                    continue
                if d.dim_param not in self.symbols:
                    base = "batch" if axis == 0 else "time" if axis == 1 and len(t.shape.dim) == 3 \
                        else (d.dim_param or f"d{axis}")
                    sym = _identifier(base)
                    while sym in self.symbols.values():
                        sym += "_"
                    self.symbols[d.dim_param] = sym
                dims.append(self.symbols[d.dim_param])
            elem = t.elem_type
            dtype = {1: "f32", 11: "f64", 6: "i32", 7: "i32"}.get(elem)
            if dtype is None:
                raise DlcError(f"ONNX import: input '{x.name}' has element type "
                               f"{self.onnx.helper.tensor_dtype_to_np_dtype(elem)}; dlc takes "
                               f"float32, float64 and integer (as i32) inputs")
            var = _Var(self.fresh(x.name), tuple(dims), dtype)
            self.vars[x.name] = var
            self.inputs.append(var)
        # The outputs keep their ONNX names: reserved before any statement's
        self.outputs = {o.name: self.fresh(o.name) for o in self.graph.output}
        for node in self.graph.node:
            if id(node) in self.skip:
                continue
            if all(x in self.consts for x in node.input if x) and node.op_type != "Shape":
                self.fold(node)
                continue
            if node.op_type in UNARY:
                self.unary(node, UNARY[node.op_type])
                continue
            handler = getattr(self, "op_" + node.op_type, None)
            if handler is None:
                raise self.unsupported(node)
            handler(node)
        for out in self.graph.output:
            if out.name not in self.vars:
                raise DlcError(f"ONNX import: output '{out.name}' is not computed from the inputs")
            self.materialize(self.vars[out.name])

    def fold(self, node) -> None:
        """A node of constants only: its value, computed now."""
        from onnx.reference import ReferenceEvaluator
        h = self.onnx.helper
        inputs = [x for x in node.input if x]
        typed = lambda x: h.make_tensor_value_info(x, h.np_dtype_to_tensor_dtype(self.consts[x].dtype), None)
        g = h.make_graph([node], "fold", [typed(x) for x in inputs],
                         [h.make_tensor_value_info(o, 0, None) for o in node.output])
        m = h.make_model(g, opset_imports=self.proto.opset_import)
        try:
            results = ReferenceEvaluator(m).run(None, {x: self.consts[x] for x in inputs})
        except Exception as e:   # the evaluator's own error, whatever its type
            raise self.unsupported(node, f"folding its constant inputs failed: {e}") from None
        for o, r in zip(node.output, results):
            self.consts[o] = np.asarray(r)

    def source(self, model: str, loss: str | None, optimizer: str) -> str:
        dims = lambda v: ", ".join(str(d) for d in v.shape)
        ins = [f"    input {v.name}: {v.dtype}[{dims(v)}]" for v in self.inputs]
        outs = [f"    output {self.outputs[o.name]} = {self.vars[o.name].name}" for o in self.graph.output]
        text = [f"# Imported from ONNX (opset {self.opset}) by dlc import.", f"model {model} {{"] + ins \
            + self.lines + outs + ["}"]
        if loss:
            first = self.vars[self.graph.output[0].name]
            target = f"i32[{dims(first)[:dims(first).rfind(',')]}]" if loss == "cross_entropy" \
                else f"{first.dtype}[{dims(first)}]"
            call = f"{model}({', '.join(v.name for v in self.inputs)})"
            if len(self.graph.output) > 1:   # the loss reads the first output
                call += "." + self.outputs[self.graph.output[0].name]
            text += ["", "train fit {"] + ins + [f"    input t: {target}", f"    loss = {loss}({call}, t)",
                                                 f"    optimizer = {optimizer}", "}"]
        return "\n".join(text) + "\n"

    # --------------------------------------------------------- shape ops

    def dims_of(self, node, i: int) -> list | None:
        """Input i as a shape vector: a constant, or one the graph computes."""
        name = node.input[i]
        if name in self.shapes:
            return list(self.shapes[name])
        if name in self.consts:
            return [int(d) for d in self.consts[name].reshape(-1)]
        return None

    def op_Shape(self, node) -> None:
        a = self.attrs(node)
        shape = self.peek(node, 0).shape   # a view has its shape: nothing to write out
        if shape is None or None in shape:
            raise self.unsupported(node, "the shape of its input is not known")
        self.shapes[node.output[0]] = list(shape)[a.get("start", 0):a.get("end", len(shape))]

    def shape_op(self, node, f) -> bool:
        """A shape-vector op on shape vectors (f of the inputs' dims)."""
        if not any(x in self.shapes for x in node.input):
            return False
        self.shapes[node.output[0]] = f([self.dims_of(node, i) for i in range(len(node.input))])
        return True

    def op_Gather(self, node) -> None:
        def pick(ins):
            index = self.consts[node.input[1]]
            return [ins[0][int(i)] for i in index.reshape(-1)]
        if self.shape_op(node, pick):
            return
        axis, index = self.attrs(node).get("axis", 0), self.const(node, 1)
        if node.input[0] in self.vars and index is not None and index.ndim == 0:
            x = self.peek(node, 0)
            k = int(index)
            if x.view is not None and x.view[0] == "state" and axis == 0:   # h_n of one direction
                H = x.view[3]
                k %= x.view[2]
                self.bind(node.output[0], f"{x.view[1].name}[:, {k * H}:{(k + 1) * H}]")
                return
            x = self.materialize(x)
            self.bind(node.output[0], f"{x.name}[{':, ' * (axis % len(x.shape))}{k}]")
            return
        weight = self.const(node, 0)
        if weight is None or weight.ndim != 2 or axis != 0:
            raise self.unsupported(node, "Gather is supported on shapes and as an embedding "
                                         "(a constant [vocab, dim] table, axis 0)")
        tokens = self.var(node, 1)
        name = self.layer_name(node, [node.input[0]], "embedding")
        self.weights[f"{name}.weight"] = weight.astype(np.float32)
        self.bind(node.output[0], f'embedding({tokens.name}, {weight.shape[0]}, {weight.shape[1]}, '
                                        f'name="{name}")', name)

    def op_Unsqueeze(self, node) -> None:
        if not self.shape_op(node, lambda ins: ins[0]):
            self.reshape_to_inferred(node)

    def axes(self, node) -> list[int]:
        """A Squeeze's / Unsqueeze's axes: an input from opset 13, an attribute before."""
        c = self.const(node, 1)
        return [int(a) for a in (c.reshape(-1) if c is not None else self.attrs(node).get("axes", []))]

    def op_Squeeze(self, node) -> None:
        if self.shape_op(node, lambda ins: ins[0]):
            return
        x = self.peek(node, 0)
        view, axes = x.view or ("",), self.axes(node)
        if view[0] == "y" and view[2] == 1 and axes == [1]:   # one direction's states, time-major
            self.vars[node.output[0]] = self.view(node, ("tm", view[1]))
        elif view[0] == "state" and view[2] == 1 and axes == [0]:
            self.vars[node.output[0]] = view[1]
        else:
            self.reshape_to_inferred(node)

    def view(self, node, view: tuple) -> _Var:
        return _Var(node.output[0], self.shape_of(node.output[0]), "f32", view)

    def materialize(self, x: _Var) -> _Var:
        """x, a view written out as a statement (once)."""
        if x.view is None:
            return x
        kind, base = x.view[:2]
        if kind == "tm":
            expr = f"transpose({base.name}, (1, 0, 2))"
        else:
            D, H = x.view[2:]
            batch = base.shape[0]
            if kind == "state":
                expr = f"transpose(reshape({base.name}, ({batch}, {D}, {H})), (1, 0, 2))"
            else:
                perm = "(1, 2, 0, 3)" if kind == "y" else "(1, 0, 2, 3)"
                expr = f"transpose(reshape({base.name}, ({batch}, {base.shape[1]}, {D}, {H})), {perm})"
        name = self.fresh("h")
        self.lines.append(f"    {name} = {expr}")
        x.name, x.view = name, None
        return x

    def op_Cast(self, node) -> None:
        if not self.shape_op(node, lambda ins: ins[0]):
            raise self.unsupported(node, "Cast is supported on shapes only")

    def op_Concat(self, node) -> None:
        if self.shape_op(node, lambda ins: [d for part in ins for d in part]):
            return
        xs = [self.var(node, i) for i in range(len(node.input))]
        axis = self.attrs(node)["axis"] % len(xs[0].shape)
        expr = xs[0].name
        for x in xs[1:]:
            expr = f"concat({expr}, {x.name}, axis={axis})"
        self.bind(node.output[0], expr)

    def reshape_to_inferred(self, node) -> None:
        shape = self.shape_of(node.output[0])
        if shape is None or None in shape:
            raise self.unsupported(node, "its output's shape is not known")
        self.reshape(node, self.var(node, 0), list(shape))

    def reshape(self, node, x: _Var, dims: list) -> None:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]   # 0: copy (allowzero=0)
        if len(dims) == 2 and x.shape[1:] and dims[0] == x.shape[0] and \
                all(isinstance(d, int) for d in x.shape[1:]) and dims[1] in (-1, int(np.prod(x.shape[1:]))):
            self.bind(node.output[0], f"flatten({x.name})")
            return
        text = ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "")
        self.bind(node.output[0], f"reshape({x.name}, ({text}))")

    def op_Reshape(self, node) -> None:
        dims = self.dims_of(node, 1)
        if dims is None:
            raise self.unsupported(node, "its shape is computed in a way dlc does not follow")
        x = self.peek(node, 0)
        if x.view is not None and x.view[0] == "tdh" and len(dims) == 3 and dims[:2] == [0, 0] \
                and dims[2] in (-1, x.view[2] * x.view[3]):   # the directions side by side
            self.vars[node.output[0]] = self.view(node, ("tm", x.view[1]))
            return
        if x.view is not None and x.view[0] == "bdh" and len(dims) == 2 and dims[0] == 0 \
                and dims[1] in (-1, x.view[2] * x.view[3]):   # final states side by side: h_n
            self.vars[node.output[0]] = x.view[1]
            return
        self.reshape(node, self.materialize(x), dims)

    def op_Slice(self, node) -> None:
        def ends(ins):
            starts, stops, axes = ins[1], ins[2], ins[3] if len(ins) > 3 else [0]
            if axes != [0] or (len(ins) > 4 and ins[4] != [1]):
                raise self.unsupported(node, "a Slice of a shape other than along it, step 1")
            return ins[0][starts[0]:stops[0]]
        if self.shape_op(node, ends):
            return
        x = self.var(node, 0)
        starts, stops = self.const(node, 1), self.const(node, 2)
        axes, steps = self.const(node, 3), self.const(node, 4)
        if starts is None or stops is None or (steps is not None and (steps != 1).any()):
            raise self.unsupported(node, "Slice is supported with constant starts and ends, step 1")
        axes = list(range(len(starts))) if axes is None else [int(a) % len(x.shape) for a in axes]
        items = [":"] * len(x.shape)
        for a, lo, hi in zip(axes, starts, stops):
            lo, hi = int(lo), int(hi)
            big = hi >= 2 ** 62   # "to the end" (INT64_MAX)
            items[a] = f"{lo}:" if big else f"{lo}:{hi}"
        while items and items[-1] == ":":
            items.pop()
        self.bind(node.output[0], f"{x.name}[{', '.join(items)}]")

    def op_Flatten(self, node) -> None:
        x = self.var(node, 0)
        axis = self.attrs(node).get("axis", 1) % max(len(x.shape), 1)
        if axis == 1:
            self.bind(node.output[0], f"flatten({x.name})")
        else:
            self.reshape_to_inferred(node)

    def op_Identity(self, node) -> None:
        self.vars[node.output[0]] = self.var(node, 0)

    def op_Dropout(self, node) -> None:
        ratio = self.const(node, 1)
        p = float(ratio) if ratio is not None else self.attrs(node).get("ratio", 0.5)
        self.bind(node.output[0], f"dropout({self.var(node, 0).name}, p={p:g})")

    def op_Transpose(self, node) -> None:
        x = self.peek(node, 0)
        perm = list(self.attrs(node).get("perm", list(range(len(x.shape)))[::-1]))
        view = x.view or ("",)
        if view[0] == "tm" and perm == [1, 0, 2]:
            self.vars[node.output[0]] = view[1]
            return
        if x.view is None and perm == [1, 0, 2]:   # time-major, as ONNX's recurrent ops read it
            self.vars[node.output[0]] = self.view(node, ("tm", x))
            return
        if view[0] == "y" and perm == [0, 2, 1, 3]:
            self.vars[node.output[0]] = self.view(node, ("tdh",) + view[1:])
            return
        if view[0] == "state" and perm == [1, 0, 2]:
            self.vars[node.output[0]] = self.view(node, ("bdh",) + view[1:])
            return
        x = self.materialize(x)
        self.bind(node.output[0], f"transpose({x.name}, ({', '.join(map(str, perm))}))")

    # ------------------------------------------------------ elementwise

    def unary(self, node, op: str) -> None:
        self.bind(node.output[0], f"{op}({self.var(node, 0).name})")

    def op_Neg(self, node) -> None:
        self.bind(node.output[0], f"-{self.var(node, 0).name}")

    def op_LeakyRelu(self, node) -> None:
        alpha = self.attrs(node).get("alpha", 0.01)
        self.bind(node.output[0], f"leaky_relu({self.var(node, 0).name}, {alpha:g})")

    def softmax(self, node, op: str) -> None:
        x = self.var(node, 0)
        axis = self.attrs(node).get("axis", -1 if self.opset >= 13 else 1)
        if axis % len(x.shape) != len(x.shape) - 1:
            raise self.unsupported(node, f"{node.op_type} over axis {axis}: dlc's is over the last axis")
        self.unary(node, op)

    def op_Softmax(self, node): self.softmax(node, "softmax")
    def op_LogSoftmax(self, node): self.softmax(node, "log_softmax")

    def binary(self, node) -> None:
        a, b = self.operand(node, 0), self.operand(node, 1)
        self.bind(node.output[0], f"{a} {BINARY[node.op_type]} {b}")

    def op_Add(self, node): self.binary(node)
    def op_Sub(self, node): self.binary(node)
    def op_Mul(self, node): self.binary(node)
    def op_Div(self, node): self.binary(node)

    # ------------------------------------------------------------ layers

    def dense(self, node, x: _Var, weight: np.ndarray, bias: np.ndarray | None, names: list[str],
              out: str) -> None:
        """dense(x) with weight [out, in] (PyTorch's layout) and bias."""
        name = self.layer_name(node, names, "dense")
        self.weights[f"{name}.weight"] = np.ascontiguousarray(weight, np.float32)
        flag = ""
        if bias is not None:
            self.weights[f"{name}.bias"] = np.broadcast_to(bias, weight.shape[:1]).astype(np.float32)
        else:
            flag = ", bias=false"
        self.bind(out, f'dense({x.name}, {weight.shape[0]}, name="{name}"{flag})', name)

    def op_Gemm(self, node) -> None:
        a = self.attrs(node)
        w, c = self.const(node, 1), self.const(node, 2)
        if w is None or a.get("transA", 0):
            raise self.unsupported(node, "Gemm is supported as a dense layer: A a tensor (not "
                                         "transposed), B a constant weight")
        w = (w if a.get("transB", 0) else w.T) * a.get("alpha", 1.0)
        bias = None if c is None else c * a.get("beta", 1.0)
        names = [node.input[1]] + ([node.input[2]] if c is not None else [])
        self.dense(node, self.var(node, 0), w, bias, names, node.output[0])

    def op_MatMul(self, node) -> None:
        w = self.const(node, 1)
        if w is None:
            self.bind(node.output[0], f"matmul({self.var(node, 0).name}, {self.var(node, 1).name})")
            return
        if w.ndim != 2:
            raise self.unsupported(node, "MatMul is supported with a 2-D constant weight or two tensors")
        # nn.Linear on more than 2 axes: MatMul by the transposed weight, then Add of the bias.
        add = self.only_reader(node.output[0])
        bias = None
        if add is not None and add.op_type == "Add":
            other = [x for x in add.input if x != node.output[0]]
            b = self.consts.get(other[0]) if len(other) == 1 else None
            if b is not None and b.size == w.shape[1] and b.ndim <= 1:
                bias = b.reshape(-1)
                self.skip.add(id(add))
        names = [other[0]] if bias is not None else [node.input[1]]
        if bias is not None and names[0].endswith(".bias"):   # the bias names the layer
            names = [names[0][:-len(".bias")] + ".weight"] + names
        out = add.output[0] if bias is not None else node.output[0]
        self.dense(node, self.var(node, 0), w.T, bias, names, out)

    def op_Conv(self, node) -> None:
        a = self.attrs(node)
        w, b = self.const(node, 1), self.const(node, 2)
        if w is None or w.ndim != 4:
            raise self.unsupported(node, "Conv is supported in 2-D with a constant weight")
        pads = list(a.get("pads", [0, 0, 0, 0]))
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto not in ("NOTSET", "VALID") or pads[:2] != pads[2:]:
            raise self.unsupported(node, f"padding {pads} (auto_pad {auto}): dlc pads both sides alike")
        x = self.var(node, 0)
        name = self.layer_name(node, [node.input[1]] + ([node.input[2]] if b is not None else []), "conv")
        self.weights[f"{name}.weight"] = w.astype(np.float32)
        if b is not None:
            self.weights[f"{name}.bias"] = b.astype(np.float32)
        pair = lambda v: f"({v[0]}, {v[1]})" if v[0] != v[1] else str(v[0])
        kernel = list(a.get("kernel_shape", w.shape[2:]))
        extra = ""
        for key, onnx_key, default in (("stride", "strides", [1, 1]), ("padding", "pads", [0, 0]),
                                       ("dilation", "dilations", [1, 1])):
            v = list(a.get(onnx_key, default))[:2]
            if v != default:
                extra += f", {key}={pair(v)}"
        if a.get("group", 1) != 1:
            extra += f", groups={a['group']}"
        if b is None:
            extra += ", bias=false"
        self.bind(node.output[0], f'conv2d({x.name}, {w.shape[0]}, {pair(kernel)}{extra}, name="{name}")', name)

    def op_ConvTranspose(self, node) -> None:
        a = self.attrs(node)
        w, b = self.const(node, 1), self.const(node, 2)
        pads = list(a.get("pads", [0, 0, 0, 0]))
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if w is None or w.ndim != 4 or "output_shape" in a or auto not in ("NOTSET", "VALID") \
                or pads[:2] != pads[2:]:
            raise self.unsupported(node, "ConvTranspose is supported in 2-D with a constant weight, "
                                         "symmetric pads and no output_shape")
        names = [node.input[1]] + ([node.input[2]] if b is not None else [])
        name = self.layer_name(node, names, "conv_transpose")
        self.weights[f"{name}.weight"] = w.astype(np.float32)   # [in, out / groups, kh, kw] in both
        if b is not None:
            self.weights[f"{name}.bias"] = b.astype(np.float32)
        pair = lambda v: f"({v[0]}, {v[1]})" if v[0] != v[1] else str(v[0])
        group = a.get("group", 1)
        extra = ""
        for key, onnx_key, default in (("stride", "strides", [1, 1]), ("padding", "pads", [0, 0]),
                                       ("output_padding", "output_padding", [0, 0]),
                                       ("dilation", "dilations", [1, 1])):
            v = list(a.get(onnx_key, default))[:2]
            if v != default:
                extra += f", {key}={pair(v)}"
        if group != 1:
            extra += f", groups={group}"
        if b is None:
            extra += ", bias=false"
        kernel = list(a.get("kernel_shape", w.shape[2:]))
        self.bind(node.output[0], f'conv_transpose2d({self.var(node, 0).name}, {w.shape[1] * group}, '
                                  f'{pair(kernel)}{extra}, name="{name}")', name)

    def op_Resize(self, node) -> None:
        a = self.attrs(node)
        text = lambda k, d: (lambda v: v.decode() if isinstance(v, bytes) else v)(a.get(k, d))
        mode, coords = text("mode", "nearest"), text("coordinate_transformation_mode", "half_pixel")
        x = self.var(node, 0)
        scales, sizes = self.const(node, 2), self.const(node, 3)
        if scales is None or scales.size == 0:
            scales = None if sizes is None or None in x.shape else sizes / np.array(x.shape, np.float64)
        nearest = (mode, coords, text("nearest_mode", "round_prefer_floor")) == ("nearest", "asymmetric", "floor")
        linear = mode == "linear" and coords in ("half_pixel", "pytorch_half_pixel")
        if scales is None or list(scales[:2]) != [1, 1] or any(s != int(s) or s < 1 for s in scales[2:]) \
                or len(scales) != 4 or not (nearest or linear):
            raise self.unsupported(node, "Resize is supported as PyTorch's nearest or bilinear "
                                         "(align_corners=False) upsampling of images by integer scales")
        sh, sw = int(scales[2]), int(scales[3])
        scale = str(sh) if sh == sw else f"({sh}, {sw})"
        self.bind(node.output[0], f"upsample({x.name}, {scale}" + (")" if nearest else ', mode="bilinear")'))

    def op_BatchNormalization(self, node) -> None:
        a = self.attrs(node)
        stats = [self.const(node, i) for i in range(1, 5)]
        if any(s is None for s in stats) or a.get("training_mode", 0) or len(node.output) > 1:
            raise self.unsupported(node, "BatchNormalization is supported in inference form, "
                                         "with constant scale, bias, mean and variance")
        names = list(node.input[1:5])
        name = self.layer_name(node, names, "bn")
        for suffix, s in zip(("weight", "bias", "running_mean", "running_var"), stats):
            self.weights[f"{name}.{suffix}"] = s.astype(np.float32)
        self.weights[f"{name}.num_batches_tracked"] = np.zeros((), np.int32)
        eps, momentum = a.get("epsilon", 1e-5), 1.0 - a.get("momentum", 0.9)
        self.bind(node.output[0], f'batchnorm({self.var(node, 0).name}, eps={eps:.6g}, '
                                        f'momentum={momentum:.6g}, name="{name}")', name)

    def pool(self, node, op: str) -> None:
        a = self.attrs(node)
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if a.get("ceil_mode", 0) or list(a.get("dilations", [1, 1])) != [1, 1] or pads[:2] != pads[2:]:
            raise self.unsupported(node, f"{node.op_type} with ceil_mode, dilations or uneven pads {pads}")
        if op == "avgpool" and any(pads) and not a.get("count_include_pad", 0):
            raise self.unsupported(node, "AveragePool that leaves padding out of the count "
                                         "(dlc's avgpool counts it, as count_include_pad=True)")
        pair = lambda v: f"({v[0]}, {v[1]})" if v[0] != v[1] else str(v[0])
        kernel, stride = list(a["kernel_shape"]), list(a.get("strides", [1, 1]))
        extra = "" if stride == kernel else f", stride={pair(stride)}"
        if any(pads):
            extra += f", padding={pair(pads[:2])}"
        self.bind(node.output[0], f"{op}({self.var(node, 0).name}, {pair(kernel)}{extra})")

    def op_MaxPool(self, node): self.pool(node, "maxpool")
    def op_AveragePool(self, node): self.pool(node, "avgpool")

    def op_ConstantOfShape(self, node) -> None:
        value = self.attrs(node).get("value")
        if node.input[0] not in self.shapes or (value is not None and
                                                self.onnx.numpy_helper.to_array(value).any()):
            raise self.unsupported(node, "ConstantOfShape is supported as zeros of a computed shape")
        self.zeros.add(node.output[0])

    def op_LSTM(self, node): self.recurrent(node, "lstm", (0, 2, 3, 1))   # ONNX iofc -> PyTorch ifgo
    def op_GRU(self, node): self.recurrent(node, "gru", (1, 0, 2))        # ONNX zrh -> PyTorch rzn
    def op_RNN(self, node): self.recurrent(node, "rnn", (0,))

    def recurrent(self, node, op: str, order: tuple) -> None:
        a = self.attrs(node)
        H, direction = a["hidden_size"], a.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        acts = [x.decode() if isinstance(x, bytes) else x for x in a.get("activations", [])]
        W, R, B = self.const(node, 1), self.const(node, 2), self.const(node, 3)
        G = len(order)
        defaults = {"lstm": ["Sigmoid", "Tanh", "Tanh"], "gru": ["Sigmoid", "Tanh"], "rnn": ["Tanh"]}[op]
        nonlinearity = ""
        if op == "rnn" and acts[:1] == ["Relu"]:
            nonlinearity, acts = ', nonlinearity="relu"', acts[1:]
        why = None
        if W is None or R is None:
            why = "its weights are not constants"
        elif direction not in ("forward", "bidirectional") or a.get("layout", 0) or "clip" in a:
            why = (f"direction {direction}, layout {a.get('layout', 0)}, clip: dlc runs forward or "
                   f"bidirectional, time-major in ONNX, unclipped")
        elif any(x not in defaults for x in acts) or (op == "lstm" and a.get("input_forget", 0)):
            why = f"activations {acts} / input_forget: dlc's cells are PyTorch's"
        elif op == "gru" and not a.get("linear_before_reset", 0):
            why = "a GRU with linear_before_reset=0 (PyTorch's GRU is linear_before_reset=1)"
        elif len(node.input) > 7 and node.input[7]:
            why = "LSTM peepholes (P) have no PyTorch form"
        if why:
            raise self.unsupported(node, why)
        D = 2 if direction == "bidirectional" else 1
        x = self.peek(node, 0)
        x = x.view[1] if x.view is not None and x.view[0] == "tm" else \
            self.bind(node.input[0] + "/batch_first", f"transpose({self.var(node, 0).name}, (1, 0, 2))")
        name = self.layer_name(node, [node.input[1], node.input[2]], op)
        if B is None:
            B = np.zeros((D, 2 * G * H), np.float32)
        gates = lambda m: np.concatenate([np.split(m, G)[k] for k in order]).astype(np.float32)
        for d, suffix in enumerate(["", "_reverse"][:D]):
            self.weights[f"{name}.weight_ih{suffix}"] = gates(W[d])
            self.weights[f"{name}.weight_hh{suffix}"] = gates(R[d])
            self.weights[f"{name}.bias_ih{suffix}"] = gates(B[d][:G * H])
            self.weights[f"{name}.bias_hh{suffix}"] = gates(B[d][G * H:])
        args = nonlinearity
        if len(node.input) > 4 and node.input[4]:
            args += f", lengths={self.var(node, 4).name}"
        if D == 2:
            args += ", bidirectional=true"
        for i, s in ((5, "h0"), (6, "c0")):
            if len(node.input) > i and node.input[i] and node.input[i] not in self.zeros:
                v = self.var(node, i)   # [D, batch, H] -> [batch, D*H], forward then backward
                args += f", {s}=reshape(transpose({v.name}, (1, 0, 2)), ({v.shape[1]}, {D * H}))"
        states = self.fresh(name)
        self.lines.append(f'    {states} = {op}({x.name}, {H}, name="{name}"{args})')
        s = _Var(states, (x.shape[0], x.shape[1], D * H), "f32")
        outs = list(node.output) + [""] * 3
        if outs[0]:
            self.vars[outs[0]] = _Var(outs[0], self.shape_of(outs[0]), "f32", ("y", s, D, H))
        for out, field in ((outs[1], "h_n"), (outs[2], "c_n")):
            if out:
                final = _Var(f"{states}.{field}", (x.shape[0], D * H), "f32")
                self.vars[out] = _Var(out, self.shape_of(out), "f32", ("state", final, D, H))

    def op_GlobalAveragePool(self, node) -> None:
        self.bind(node.output[0], f"global_avgpool({self.var(node, 0).name})")
