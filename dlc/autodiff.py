"""Reverse-mode differentiation: a train block becomes a training step
(forward, loss, backward, optimizer update) and a gradient entry.

Each train block `fit` gives two functions: `fit` (kind 'train': outputs the
loss, assigns new values to parameters and optimizer states) and
`fit.grads` (kind 'grads': outputs the loss and one gradient per trained
parameter, named as the parameter). Gradients come from each op's `grad`
rule, written as graph ops, so the backward pass is ordinary graph IR.
"""
from __future__ import annotations

from dataclasses import replace

from .errors import CompileError, Diagnostic
from .ir.graph import Builder, Function, Node, Program, Value
from .ops.elementwise import add, scalar_like
from .ops.optim import updates


def clone_function(fn: Function, name: str, kind: str) -> Function:
    """A copy with fresh values, so two entries never share identities."""
    new = Function(name, kind, optimizer=fn.optimizer, span=fn.span)
    vmap: dict[int, Value] = {}
    for v in fn.inputs:
        nv = Value(v.type, "input", v.name)
        new.inputs.append(nv)
        vmap[id(v)] = nv
    for pname, v in fn.params.items():
        new.params[pname] = vmap[id(v)] = Value(v.type, "param", pname)
    for sname, v in fn.states.items():
        new.states[sname] = vmap[id(v)] = Value(v.type, "state", sname)
    for n in fn.nodes:
        m = Node(n.op, tuple(vmap[id(v)] for v in n.inputs), n.attrs, n.out.type, n.span)
        new.nodes.append(m)
        vmap[id(n.out)] = m.out
    new.outputs = {k: vmap[id(v)] for k, v in fn.outputs.items()}
    new.assigns = [(vmap[id(t)], vmap[id(v)]) for t, v in fn.assigns]
    return new


def backward(b: Builder, fn: Function, y: Value, wrt: list[str]) -> dict[str, Value]:
    """d y / d param for each param named in `wrt` that y depends on."""
    grads: dict[int, Value] = {id(y): scalar_like(b, 1.0, y)}
    for node in reversed(list(fn.nodes)):
        g = grads.get(id(node.out))
        if g is None:
            continue
        b.span = node.span
        for v, gv in zip(node.inputs, node.op.grad(b, node, g)):
            if gv is not None:
                grads[id(v)] = add(b, grads[id(v)], gv) if id(v) in grads else gv
    return {name: grads[id(fn.params[name])] for name in wrt
            if name in fn.params and id(fn.params[name]) in grads}


def trained_params(program: Program, fn: Function) -> list[str]:
    """The params the optimizer may update: all the block uses, or only the
    `on` models' ones."""
    names = list(fn.params)
    if fn.optimizer and fn.optimizer.on:
        owned = {p for m in fn.optimizer.on for p in program.functions[m].params}
        names = [p for p in names if p in owned]
    return names


def _nothing_to_train(program: Program, fn: Function) -> None:
    """A step that updates nothing is a mistake (torch.optim refuses an empty
    parameter list too): an error at the optimizer, for sgd and adam alike."""
    opt = fn.optimizer
    of = f" of {', '.join(repr(m) for m in opt.on)}" if opt.on else ""
    raise CompileError([Diagnostic(opt.span, (
        f"the loss of '{fn.name}' depends on no parameter{of} (no gradient reaches one), "
        f"so '{opt.kind}' would train nothing"))], program.source)


def differentiate(program: Program) -> Program:
    """Pure: returns a new program whose train blocks are full steps."""
    # States declared by the check (dropout's step counter) stay; the
    # optimizer's are added by `updates`.
    out = replace(program, functions={}, states=dict(program.states))
    for fn in program.functions.values():
        if fn.kind != "train":
            out.functions[fn.name] = fn
            continue
        wrt = trained_params(program, fn)
        step = clone_function(fn, fn.name, "train")
        b = Builder(out, step)
        grads = backward(b, step, step.outputs["loss"], wrt)
        if not grads:
            _nothing_to_train(program, fn)
        step.trained = list(grads)
        b.span = fn.optimizer.span if fn.optimizer else fn.span
        # After the forward pass's own writes (batchnorm's running stats,
        # dropout's step), the optimizer's.
        step.assigns += updates(b, fn.optimizer, {p: step.params[p] for p in grads}, grads)

        gfn = clone_function(fn, f"{fn.name}.grads", "grads")
        gfn.assigns = []   # the gradient entry changes nothing
        gb = Builder(out, gfn)
        ggrads = backward(gb, gfn, gfn.outputs["loss"], wrt)
        gfn.trained = list(ggrads)
        gfn.outputs.update(ggrads)
        out.functions[step.name] = step
        out.functions[gfn.name] = gfn
    return out
