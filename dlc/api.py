"""The Python API: compile a .dl program, run, train, inspect it.

    prog = dlc.compile("examples/moons.dl")
    prog.params["fc1.weight"]              # live numpy view of runtime memory
    prog.run("moons", x=X)                 # {output name: array}
    prog.train("fit", x=X, t=T)            # one step; the loss before it
    prog.grads("fit", x=X, t=T)            # {param name: gradient}, no update
    prog.grads("fit", wrt=("x",), x=X, t=T)  # ... and {"x": d loss / d x}
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import draw, driver, training
from .codegen import compiler
from .errors import DlcError, InvalidArgumentError, NotFoundError
from .ir.graph import Program as GraphProgram
from .ir.loops import LoopEntry, LoopProgram, evaluate
from .passes.loop_memory import layout
from .progress import CompileProgress


class CompiledProgram:
    """A compiled program and one runtime session holding its parameters.
    Safe to call from several threads: calls run one at a time, and
    `params` are live, unsynchronised views (see dlc.runtime.Session)."""

    def __init__(self, graph: GraphProgram, library: Path, seed: int, num_threads: int,
                 target: str = "cpu", loops: LoopProgram | None = None):
        # Here, not at module level: the command line's compile needs no
        # runtime (cffi parses its C declarations at import, 40 ms).
        from .runtime import load_program
        self.graph, self.library, self.target, self.loops = graph, library, target, loops
        self._runtime = load_program(str(library))
        self._session = self._runtime.session(seed=seed, num_threads=num_threads)

    @property
    def params(self):
        """name -> writable numpy view of the runtime's parameter memory.
        cuda: the host copy of the device's params, refreshed by each access
        of this property; writes to it reach the device on the next run."""
        if self.target == "cuda":
            self._session.refresh_params()
        return Params(self._session)

    @property
    def entries(self) -> list[str]:
        return list(self._runtime.entries)

    def _entry(self, name: str, kinds: tuple[str, ...], what: str):
        e = self._runtime.entries.get(name)
        if e is None or e.kind not in kinds:
            have = [n for n, x in self._runtime.entries.items() if x.kind in kinds]
            raise NotFoundError(f"no {what} named '{name}'; this program has: {', '.join(have) or 'none'}")
        return e

    def run(self, model: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run a model's inference entry: {output name: array}."""
        self._entry(model, ("infer",), "model")
        return self._session.run(model, inputs)

    def train(self, block: str, **inputs: np.ndarray) -> float:
        """One optimizer step of a train block; returns the loss before it."""
        self._entry(block, ("train",), "train block")
        return float(self._session.run(block, inputs)["loss"])

    def grads(self, block: str, wrt: tuple[str, ...] | str = (),
              **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Gradients of a train block's loss for each parameter it trains
        (keyed by parameter name) and for each float input named in `wrt`
        (keyed by the input's name, unprefixed: parameter names always hold
        a dot, input names never do)."""
        entry = self._entry(block, ("train",), "train block")
        wrt = (wrt,) if isinstance(wrt, str) else tuple(wrt)
        if not wrt:
            out = self._session.run(f"{block}.grads", inputs)
            out.pop("loss")
            return out
        floats = [t.name for t in entry.inputs if t.dtype in ("f32", "f64")]
        for name in wrt:
            if name not in floats:
                raise InvalidArgumentError(
                    f"wrt: '{name}' is not a float input of train block '{block}'; "
                    f"its float inputs are: {', '.join(floats) or 'none'}")
        out = self._session.run(f"{block}.input_grads", inputs)
        out.pop("loss")
        return {k: v for k, v in out.items() if k not in floats or k in wrt}

    @property
    def state(self):
        """name -> writable numpy view of the optimizer state (`fit.step`,
        `fit.lr`, `fit.fc1.weight.exp_avg`, ...; dlc/ops/optim.py names
        them), as `params` (cuda: the same refresh)."""
        if self.target == "cuda":
            self._session.refresh_params()
        return self._session.states

    def get_lr(self, block: str) -> float:
        """The learning rate of train block `block`'s next step."""
        return float(self._lr(block))

    def set_lr(self, block: str, lr: float) -> None:
        """Sets the learning rate of `block`'s next steps (a schedule's
        step), with no recompilation."""
        self._lr(block)[...] = lr

    def _lr(self, block: str) -> np.ndarray:
        self._entry(block, ("train",), "train block")
        return self.state[f"{block}.lr"]

    def save(self, path: str | os.PathLike, optimizer: bool = False) -> None:
        """Writes the params as safetensors; with `optimizer`, the optimizer
        state too, so that `load` resumes training exactly."""
        self._session.save(str(path), optimizer)

    def load(self, path: str | os.PathLike, strict: bool = True) -> list[str]:
        """Loads params from safetensors (see dlc.runtime.Session.load), and
        the optimizer state a checkpoint holds: with strict=False, the names
        of the params the file lacks, sorted."""
        return self._session.load(str(path), strict)

    def init_params(self, seed: int) -> None:
        self._session.init_params(seed)

    def summary(self) -> str:
        return summary(self.graph, self.loops)

    def fit(self, block: str, data, **options) -> training.History:
        """Trains train block `block` over a data set for some epochs, with
        validation, metrics, callbacks and progress: see dlc.training.fit."""
        return training.fit(self, block, data, **options)

    def predict(self, model: str, data, batch_size: int | None = 256) -> dict[str, np.ndarray]:
        """Runs `model` over a data set in batches: {output name: all rows}."""
        return training.predict(self, model, data, batch_size)

    def evaluate(self, model: str, data, metrics=("accuracy",), labels: str | np.ndarray = "t",
                 batch_size: int | None = 256) -> dict[str, float]:
        """{metric: value} of `model` over a data set (dlc.training.evaluate)."""
        return training.evaluate(self, model, data, metrics, labels, batch_size)

    def draw(self, path: str | os.PathLike | None = None, format: str | None = None) -> str:
        """Each model's layers, shapes and parameter counts as a Graphviz
        graph: the DOT text, also written to `path` (rendered by the `dot`
        program unless the format, by default the suffix, is dot)."""
        return draw.draw(self.graph.source, self.graph.file, path, format)

    def __repr__(self) -> str:
        entries = ", ".join(f"{n} ({fn.kind})" for n, fn in self.graph.functions.items()
                            if fn.kind in ("model", "train"))
        return f"<dlc.CompiledProgram {self.graph.file!r} target={self.target}: {entries}>"


class Params(Mapping):
    """name -> writable numpy view of a param; `params[name] = array`
    copies the array in, checking its shape and dtype (converting within a
    kind, f64 -> f32, as inputs are)."""

    def __init__(self, session):
        self._session = session

    def __getitem__(self, name: str) -> np.ndarray:
        return self._session.params[name]

    def __setitem__(self, name: str, value) -> None:
        self._session.set_param(name, value)

    def __iter__(self):
        return iter(self._session.params)

    def __len__(self) -> int:
        return len(self._session.params)

    def __repr__(self) -> str:
        return f"<dlc params: {', '.join(self._session.params)}>"


def workspace_bytes(entry: LoopEntry, syms: dict[str, int]) -> int:
    """Bytes of an entry's workspace for given symbol values (as the
    compiled workspace function computes them)."""
    return evaluate(layout(entry)[1], syms)


def _bytes(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def workspace_lines(g: GraphProgram, loops: LoopProgram) -> list[str]:
    """Peak workspace per inference and training entry: `a + b per <sym>`
    when it grows linearly with the symbolic sizes (sampled at multiples of
    64, where slot alignment adds nothing), else its value at 64."""
    names = [v.name for v in loops.syms]
    lines = []
    for e in loops.entries:
        fn = g.functions.get(e.name)
        if fn is None or fn.kind not in ("model", "train"):
            continue
        b1, b2, b3 = (workspace_bytes(e, {n: k for n in names}) for k in (64, 128, 192))
        per = (b2 - b1) // 64
        if not per:
            amount = _bytes(b1)
        elif b3 - b2 == b2 - b1 == per * 64:
            base = b1 - 64 * per
            amount = (f"{_bytes(base)} + " if base else "") + f"{_bytes(per)} per {'/'.join(names)}"
        else:
            amount = f"{_bytes(b1)} at {', '.join(f'{n}=64' for n in names)}"
        what = "inference" if fn.kind == "model" else "training step"
        lines.append(f"peak workspace, {what} {e.name}: {amount}")
    return lines


def summary(g: GraphProgram, loops: LoopProgram | None = None) -> str:
    """Layers with output shapes and parameter counts, per model; totals;
    with the loop program, the peak workspace of inference and training."""
    def count(t) -> int:
        return int(np.prod(t.shape, dtype=np.int64))

    rows = [("layer", "op", "output", "params")]
    per_layer: dict[str, int] = {}
    for p in g.params.values():
        per_layer[p.layer] = per_layer.get(p.layer, 0) + count(p.type)
    lines = []
    for fn in g.functions.values():
        if fn.kind != "model":
            continue
        ins = ", ".join(f"{v.name}: {v.type}" for v in fn.inputs)
        lines.append(f"model {fn.name}({ins})")
        table = rows + [(ly.name, ly.op, str(ly.out), f"{per_layer.get(ly.name, 0):,}")
                        for ly in g.layers.values() if ly.model == fn.name]
        widths = [max(len(r[i]) for r in table) for i in range(4)]
        for r in table:
            lines.append("  " + "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                                          for i, (c, w) in enumerate(zip(r, widths))))
        for name, v in fn.outputs.items():
            lines.append(f"  output {name}: {v.type}")
        # Every tensor of the layers the model uses, as the layer rows and the
        # total count them (batchnorm's counter too, though inference reads none).
        n = sum(per_layer[layer] for layer in {g.params[p].layer for p in fn.params})
        lines.append(f"  parameters: {n:,}")
    for fn in g.functions.values():
        if fn.kind == "train" and fn.optimizer:
            opt = fn.optimizer
            hp = ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else format(v, 'g')}"
                           for k, v in opt.hparams.items())
            on = f" on {', '.join(opt.on)}" if opt.on else ""
            lines.append(f"train {fn.name}: {opt.kind}({hp}){on}")
    total = sum(count(p.type) for p in g.params.values())
    lines.append(f"total parameters: {total:,} in {len(g.params)} tensors "
                 f"({sum(count(p.type) * (8 if p.type.dtype == 'f64' else 4) for p in g.params.values()):,} bytes)")
    if loops is not None:
        lines += workspace_lines(g, loops)
    return "\n".join(lines)


def compile(source: str | os.PathLike, target: str = "cpu", seed: int = 0,
            num_threads: int = 0, arch: str | None = None, cpu: str | None = None) -> CompiledProgram:
    """Compile a .dl file (a path) or source text; returns a program with
    parameters initialised from `seed`. target: 'cpu' or 'cuda' (`arch`: the
    GPU architecture, default sm_80); without a usable GPU, 'cuda' raises
    dlc.errors.UnavailableError. cpu: an LLVM CPU name to build for instead
    of this machine's (default: $DLC_CPU, else the host), e.g. 'x86-64-v3'
    for any CPU with AVX2 and FMA."""
    if target not in driver.TARGETS:
        raise DlcError(f"target '{target}' is not available; targets: {', '.join(driver.TARGETS)}")
    if arch is not None and target != "cuda":
        raise DlcError("arch applies to target 'cuda' only")
    text, file = read(source)
    progress = CompileProgress(Path(file).name)
    try:
        with tempfile.TemporaryDirectory(prefix="dlc-build-") as d, compiler.Build(Path(d), cpu) as build:
            art = driver.build(text, file, target=target, arch=arch, progress=progress, cpu=cpu,
                               sink=build.add if target == "cpu" else None)
            library = compiler.shared_library(art.llvm_modules, cpu, progress=progress,
                                              build=build if target == "cpu" else None)
    finally:
        progress.done()
    return CompiledProgram(art.graph, library, seed, num_threads, target, art.loops)


def read(source: str | os.PathLike) -> tuple[str, str]:
    try:
        return driver.read_source(source)
    except OSError as e:
        raise DlcError(f"cannot read '{source}': {e.strerror}") from None


__all__ = ["compile", "CompiledProgram", "summary"]
