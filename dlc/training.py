"""Training loops: fit, predict and evaluate over data sets, callbacks
(early stopping, best weights, checkpoints, learning-rate schedules) and
the History that fit returns.

    history = prog.fit("fit", {"x": X, "t": T}, epochs=20, batch_size=64,
                       validation=Validation("moons", {"x": Xv, "t": Tv}, labels="t"),
                       metrics=["accuracy"], callbacks=[EarlyStopping("val_accuracy")])
    history.plot("curves.png")

Data is a dict of arrays named like the entry's inputs (names it does not
use are ignored, so one dict can hold inputs and labels), sliced along axis
0, or any re-iterable of such dicts, one batch each (a user's own loader).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .errors import DlcError, InvalidArgumentError

Metric = Callable[[dict, dict], float]


@dataclass
class Validation:
    """Held-out data that `model` runs on after each epoch. `labels` is the
    name of an array in `data` or the array itself; a callable metric sees
    it under the name 'labels' when it is given as an array."""
    model: str
    data: Mapping[str, Any]
    labels: str | np.ndarray = "t"
    batch_size: int | None = 256


@dataclass
class History:
    """What fit did: per-epoch mean loss, per-step losses, validation
    metrics per epoch ('val_accuracy', ...), the learning rate and the wall
    time of each epoch."""
    loss: list[float] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    lr: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.loss)

    def __repr__(self) -> str:
        last = ", ".join(f"{k}={v[-1]:.4g}" for k, v in [("loss", self.loss), *self.metrics.items()] if v)
        return f"History(epochs={self.epochs}{', ' if last else ''}{last})"

    def __getitem__(self, name: str) -> list[float]:
        if name in ("loss", "lr", "time"):
            return getattr(self, name)
        try:
            return self.metrics[name]
        except KeyError:
            raise KeyError(f"history has no '{name}'; it has: "
                           f"{', '.join(['loss', 'lr', 'time', *self.metrics])}") from None

    def plot(self, path, dpi: int = 100, size: tuple[float, float] = (5.0, 4.0)) -> None:
        """Draws the loss (per step, faint, and per epoch) and each metric,
        train against validation, side by side, `size` inches a panel, to
        `path` (PNG, SVG or PDF by its suffix)."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise DlcError("History.plot needs matplotlib: pip install 'dlc[plot]'") from None
        names = sorted({n.removeprefix("val_") for n in self.metrics} - {"loss"})
        fig = Figure(figsize=(size[0] * (1 + len(names)), size[1]), dpi=dpi)
        axes = fig.subplots(1, 1 + len(names), squeeze=False)[0]
        epochs = np.arange(1, self.epochs + 1)
        if self.step_loss and self.epochs:
            steps = np.arange(1, len(self.step_loss) + 1) * self.epochs / len(self.step_loss)
            axes[0].plot(steps, self.step_loss, color="C0", alpha=0.25, linewidth=0.8)
        for ax, name in zip(axes, ["loss", *names]):
            train = self.loss if name == "loss" else self.metrics.get(name)
            if train:
                ax.plot(epochs, train, color="C0", marker=".", label="train")
            if f"val_{name}" in self.metrics:
                ax.plot(epochs, self.metrics[f"val_{name}"], color="C1", marker=".", label="validation")
            ax.set_xlabel("epoch")
            ax.set_title(name)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path)


class Callback:
    """Hooks fit calls; `run` is the TrainingRun (prog, block, history;
    set run.stop = True to end training after this epoch). on_step_end is
    called only for callbacks that define it, as it costs every step."""

    def on_train_begin(self, run: TrainingRun) -> None:
        pass

    def on_epoch_end(self, run: TrainingRun, epoch: int, logs: dict[str, float]) -> None:
        pass

    def on_train_end(self, run: TrainingRun) -> None:
        pass


@dataclass
class TrainingRun:
    prog: Any
    block: str
    history: History
    stop: bool = False


def _monitored(logs: dict[str, float], monitor: str, who: str) -> float:
    try:
        return logs[monitor]
    except KeyError:
        raise InvalidArgumentError(f"{who}: no '{monitor}' to monitor; an epoch gives: "
                                   f"{', '.join(logs)}") from None


def _mode(mode: str, monitor: str) -> str:
    """'auto': maximise accuracies, minimise anything else."""
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    if mode not in ("min", "max"):
        raise InvalidArgumentError(f"mode must be 'min', 'max' or 'auto', not {mode!r}")
    return mode


class _Monitor(Callback):
    """Tracks the best value of a monitored figure."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        self.monitor, self.mode, self.min_delta = monitor, _mode(mode, monitor), min_delta
        self.best, self.best_epoch = None, None

    def _improved(self, logs: dict[str, float], epoch: int) -> bool:
        value = _monitored(logs, self.monitor, type(self).__name__)
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.best_epoch = value, epoch
        return better


class EarlyStopping(_Monitor):
    """Stops when `monitor` has not improved by more than `min_delta` for
    `patience` epochs."""

    def __init__(self, monitor: str = "loss", patience: int = 5, mode: str = "auto",
                 min_delta: float = 0.0):
        super().__init__(monitor, mode, min_delta)
        self.patience, self.wait, self.stopped_epoch = patience, 0, None

    def on_train_begin(self, run):
        self.best, self.best_epoch, self.wait, self.stopped_epoch = None, None, 0, None

    def on_epoch_end(self, run, epoch, logs):
        if self._improved(logs, epoch):
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            run.stop, self.stopped_epoch = True, epoch


class BestWeights(_Monitor):
    """Keeps a copy of the params at the best `monitor` value and restores
    it when training ends."""

    def __init__(self, monitor: str = "loss", mode: str = "auto"):
        super().__init__(monitor, mode)
        self.weights: dict[str, np.ndarray] | None = None

    def on_train_begin(self, run):
        self.best, self.best_epoch, self.weights = None, None, None

    def on_epoch_end(self, run, epoch, logs):
        if self._improved(logs, epoch):
            self.weights = {k: v.copy() for k, v in run.prog.params.items()}

    def on_train_end(self, run):
        if self.weights is not None:
            for k, v in self.weights.items():
                run.prog.params[k] = v


class Checkpoint(Callback):
    """Saves safetensors every `every` epochs to `path`, a format string
    given `epoch` and the epoch's figures ('ckpt-{epoch:03d}.safetensors');
    with `optimizer`, the optimizer state too, so load() resumes exactly."""

    def __init__(self, path: str, every: int = 1, optimizer: bool = True):
        if every < 1:
            raise InvalidArgumentError(f"Checkpoint: every must be at least 1, not {every}")
        self.path, self.every, self.optimizer = str(path), every, optimizer
        self.saved: list[str] = []

    def on_epoch_end(self, run, epoch, logs):
        if epoch % self.every == 0:
            path = self.path.format(epoch=epoch, **logs)
            run.prog.save(path, optimizer=self.optimizer)
            self.saved.append(path)


class _Schedule(Callback):
    """A learning-rate schedule, stepped after every epoch as a
    torch.optim.lr_scheduler is. It keeps its position across fit calls,
    like a torch scheduler object; `lr` is the rate it last set."""

    def __init__(self):
        self.last_epoch, self.base_lr, self.lr = 0, None, None

    def on_train_begin(self, run):
        if self.base_lr is None:
            self.base_lr = self.lr = _initial_lr(run.prog, run.block)

    def on_epoch_end(self, run, epoch, logs):
        self.last_epoch += 1
        self.lr = self._next(logs)
        run.prog.set_lr(run.block, self.lr)


def _initial_lr(prog, block: str) -> float:
    """The block's lr as a Python float: the program's exact hyperparameter
    while the session still holds it (the session rounds it to f32), so a
    schedule computes what torch computes from the same number."""
    lr = prog.get_lr(block)
    fn = prog.graph.functions.get(block)
    declared = fn.optimizer.hparams.get("lr") if fn is not None and fn.optimizer else None
    if declared is not None and np.float32(declared) == np.float32(lr):
        return float(declared)
    return lr


class StepLR(_Schedule):
    """lr times gamma every step_size epochs (torch.optim.lr_scheduler.StepLR)."""

    def __init__(self, step_size: int, gamma: float = 0.1):
        super().__init__()
        self.step_size, self.gamma = step_size, gamma

    def _next(self, logs):
        if self.last_epoch % self.step_size:
            return self.lr
        return self.lr * self.gamma


class CosineAnnealing(_Schedule):
    """Cosine from the initial lr down to eta_min over T_max epochs, then
    back up (torch.optim.lr_scheduler.CosineAnnealingLR's recursive form)."""

    def __init__(self, T_max: int, eta_min: float = 0.0):
        super().__init__()
        self.T_max, self.eta_min = T_max, eta_min

    def _next(self, logs):
        e, T = self.last_epoch, self.T_max
        if (e - 1 - T) % (2 * T) == 0:
            return self.lr + (self.base_lr - self.eta_min) * (1 - math.cos(math.pi / T)) / 2
        return ((1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T))
                * (self.lr - self.eta_min) + self.eta_min)


class ReduceOnPlateau(_Schedule):
    """lr times factor when `monitor` has not improved for `patience` epochs
    (torch.optim.lr_scheduler.ReduceLROnPlateau, same arguments)."""

    def __init__(self, monitor: str = "loss", mode: str = "auto", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float = 0.0, eps: float = 1e-8):
        super().__init__()
        if factor >= 1.0:
            raise InvalidArgumentError("ReduceOnPlateau: factor must be below 1")
        if threshold_mode not in ("rel", "abs"):
            raise InvalidArgumentError(f"threshold_mode must be 'rel' or 'abs', not {threshold_mode!r}")
        self.monitor, self.mode = monitor, _mode(mode, monitor)
        self.factor, self.patience = factor, patience
        self.threshold, self.threshold_mode = threshold, threshold_mode
        self.cooldown, self.min_lr, self.eps = cooldown, min_lr, eps
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = 0

    def _better(self, a: float) -> bool:
        t = self.threshold
        if self.threshold_mode == "rel":
            return a < self.best * (1 - t) if self.mode == "min" else a > self.best * (1 + t)
        return a < self.best - t if self.mode == "min" else a > self.best + t

    def _next(self, logs):
        current = _monitored(logs, self.monitor, "ReduceOnPlateau")
        if self._better(current):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        lr = self.lr
        if self.num_bad_epochs > self.patience:
            new = max(lr * self.factor, self.min_lr)
            if lr - new > self.eps:
                lr = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        return lr


# ------------------------------------------------------------------ metrics

def _metric(spec) -> tuple[str, Metric]:
    if callable(spec):
        return getattr(spec, "__name__", "metric"), spec
    if spec == "accuracy":
        return "accuracy", lambda out, data: float(
            np.mean(np.argmax(next(iter(out.values())), axis=-1) == data["labels"]))
    if spec == "mse":
        return "mse", _mse
    raise InvalidArgumentError(f"unknown metric {spec!r}; metrics are 'accuracy', 'mse', a "
                               "callable(outputs, data) -> float, and in fit 'loss'")


def _mse(out: dict, data: dict) -> float:
    name, y = next(iter(out.items()))
    t = data["labels"]
    if y.shape != t.shape:   # no broadcasting: [n, 1] against [n] would give n x n
        raise InvalidArgumentError(f"mse: output '{name}' has shape {list(y.shape)}, the labels "
                                   f"{list(t.shape)}")
    return float(np.mean((y - t) ** 2))


def _labelled(data: Mapping[str, Any], labels) -> dict[str, Any]:
    """`data` with the labels also under 'labels', where accuracy and mse
    read them."""
    if isinstance(labels, str):
        if labels not in data:
            raise InvalidArgumentError(f"labels: the data has no '{labels}'; it has: {', '.join(data)}")
        labels = data[labels]
    return {**data, "labels": np.asarray(labels)}


def evaluate(prog, model: str, data: Mapping[str, Any], metrics=("accuracy",),
             labels: str | np.ndarray = "t", batch_size: int | None = 256) -> dict[str, float]:
    """Runs `model` over `data` in batches and returns {metric name: value},
    each computed once over all the outputs."""
    fns = [_metric(m) for m in ([metrics] if isinstance(metrics, str) or callable(metrics) else metrics)]
    out = predict(prog, model, data, batch_size)
    full = _labelled(data, labels)
    return {name: float(fn(out, full)) for name, fn in fns}


def predict(prog, model: str, data, batch_size: int | None = 256) -> dict[str, np.ndarray]:
    """Runs `model` over `data` (a dict of arrays, sliced in batches of
    `batch_size`, None for one run; or an iterable of batch dicts) and
    concatenates each output along axis 0."""
    entry = prog._entry(model, ("infer",), "model")
    names = [t.name for t in entry.inputs]
    if isinstance(data, Mapping):
        arrays, n = _inputs(prog, model, data)
        size = n if batch_size is None else batch_size
        batches = ({k: a[i:i + size] for k, a in arrays.items()} for i in range(0, n, max(size, 1)))
    else:
        batches = (_pick(b, names, model) for b in data)
    parts: dict[str, list[np.ndarray]] = {}
    for b in batches:
        for k, v in prog._session.run(model, b).items():
            parts.setdefault(k, []).append(v)
    return {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in parts.items()}


def _loss(prog, block: str, data: Mapping[str, Any], batch_size: int | None) -> float:
    """The train block's loss over `data`, changing nothing: its gradient
    entry in batches (dropout active, batchnorm on batch statistics, as in
    training), the mean of the batches' losses weighted by their sizes."""
    arrays, n = _inputs(prog, block, data)
    size = n if batch_size is None else batch_size
    total = 0.0
    for i in range(0, n, size):
        batch = {k: a[i:i + size] for k, a in arrays.items()}
        total += float(prog._session.run(f"{block}.grads", batch)["loss"]) * min(size, n - i)
    return total / n


def _pick(batch: Mapping[str, Any], names: list[str], entry: str) -> Mapping[str, Any]:
    """A loader's batch, as the entry's inputs."""
    if len(batch) == len(names):   # the common case: exactly the inputs (the runtime checks names)
        return batch
    missing = [k for k in names if k not in batch]
    if missing:
        raise InvalidArgumentError(f"'{entry}' needs input {', '.join(map(repr, missing))}; "
                                   f"a batch has: {', '.join(batch) or 'nothing'}")
    return {k: batch[k] for k in names}


def _inputs(prog, entry: str, data: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
    """The entry's inputs from `data`, converted once to their dtypes (the
    runtime's rules), and their common length along axis 0."""
    from .runtime import _as_input
    plan = prog._runtime._plans[entry]
    missing = [name for name, _, _ in plan.inputs if name not in data]
    if missing:
        raise InvalidArgumentError(f"'{entry}' needs input {', '.join(map(repr, missing))}; "
                                   f"the data has: {', '.join(data) or 'nothing'}")
    arrays = {name: _as_input(what, data[name], dtype) for name, dtype, what in plan.inputs}
    lengths = {k: (a.shape[0] if a.ndim else None) for k, a in arrays.items()}
    if None in lengths.values() or len(set(lengths.values())) > 1:
        raise InvalidArgumentError(f"'{entry}': the inputs must have one length along axis 0; "
                                   + ", ".join(f"'{k}' has shape {list(a.shape)}" for k, a in arrays.items()))
    return arrays, next(iter(lengths.values()), 0)


# ----------------------------------------------------------------- progress

class Progress:
    """Per-epoch progress on `file`: on a TTY, a bar redrawn in place (at
    most every 0.1 s, so it costs nothing per step) and kept as a line for
    the epochs that `log_every` keeps; elsewhere one line per kept epoch."""

    BAR = 24

    def __init__(self, file, epochs: int, log_every: int, tty: bool):
        self.file, self.epochs, self.log_every, self.tty = file, epochs, log_every, tty
        self.last: dict[str, float] = {}
        self.drawn = 0.0

    def start(self, epoch: int, steps: int | None):
        self.epoch, self.steps, self.t0 = epoch, steps, time.perf_counter()

    def update(self, losses: list[float]):
        now = time.perf_counter()
        if now - self.drawn >= 0.1:
            self.drawn = now
            self.file.write("\r" + self._line(losses, now) + "\x1b[K")
            self.file.flush()

    def end(self, losses: list[float], logs: dict[str, float], last: bool):
        """The epoch's line; `last`: training ends with it (kept)."""
        self.last = {k: v for k, v in logs.items() if k.startswith("val_")}
        line = self._line(losses, time.perf_counter(), done=True)
        keep = last or self.epoch == 1 or self.epoch % self.log_every == 0
        if self.tty:
            self.file.write("\r" + line + "\x1b[K" + ("\n" if keep else ""))
        elif keep:
            self.file.write(line + "\n")
        self.file.flush()

    def _line(self, losses: list[float], now: float, done: bool = False) -> str:
        n, width = len(losses), len(str(self.epochs))
        parts = [f"epoch {self.epoch:{width}d}/{self.epochs}"]
        if self.tty and self.steps:
            fill = round(self.BAR * n / self.steps)
            head = "" if fill == self.BAR else ">"
            parts.append("[" + "=" * fill + head + " " * (self.BAR - fill - len(head)) + "]")
        parts.append(f"{n}/{self.steps}" if self.steps else f"{n} steps")
        dt = now - self.t0
        parts.append(f"{n / dt:.0f} steps/s" if dt > 0 else "")
        if losses:
            parts.append(f"loss {sum(losses) / n:.4f}")
        parts += [f"{k} {v:.4f}" for k, v in self.last.items()]
        if done:
            parts.append(f"{dt:.2f} s" if dt >= 1 else f"{dt * 1e3:.1f} ms")
        return "  ".join(p for p in parts if p)


# ---------------------------------------------------------------------- fit

def fit(prog, block: str, data, epochs: int = 1, batch_size: int = 32, shuffle: bool = True,
        seed: int | np.random.Generator = 0, validation: Validation | tuple | None = None,
        metrics=(), callbacks: Iterable[Callback] = (), verbose: int = 1, log_every: int = 1,
        file=None, step=None) -> History:
    """Trains `block` for `epochs` epochs; returns the History.

    data: a dict of arrays named like the block's inputs, cut into batches of
    `batch_size` along axis 0 (the last may be smaller), in an order shuffled
    per epoch by a numpy Generator from `seed` (an int, or a Generator whose
    stream it continues: with a Generator `rng`, an epoch trains on
    rng.permutation(n) in slices); or a re-iterable of batch dicts.
    validation: Validation(model, data, labels) or that tuple; `metrics`
    ('accuracy', 'mse', callable(outputs, data) -> float; 'loss': the
    block's loss, when the validation data holds its inputs) are computed on
    it after each epoch, as 'val_<name>'. verbose: 0 silent, 1 a progress bar on
    a TTY and a line per epoch elsewhere, 2 lines only; `log_every` keeps the
    first, every log_every-th and the last epoch's line. file: default stdout.
    step: how a batch (a dict) is trained, returning its loss; default one
    step of `block` (dlc.distributed.DataParallel.fit passes its own).
    """
    if epochs < 1 or batch_size < 1 or log_every < 1:
        raise InvalidArgumentError("epochs, batch_size and log_every must be at least 1")
    entry = prog._entry(block, ("train",), "train block")
    names = [t.name for t in entry.inputs]
    if isinstance(data, Mapping):
        arrays, n = _inputs(prog, block, data)
        if n == 0:
            raise InvalidArgumentError(f"fit: the data for '{block}' has no examples")
        steps = -(-n // batch_size)
        rng = np.random.default_rng(seed)
    else:
        if iter(data) is data and epochs > 1:
            raise InvalidArgumentError(
                "fit: data is an iterator, which one epoch would exhaust; pass a re-iterable "
                "(a list, or an object whose __iter__ starts an epoch)")
        steps = len(data) if hasattr(data, "__len__") else None
    if isinstance(validation, tuple):
        validation = Validation(*validation)
    specs = [metrics] if isinstance(metrics, str) or callable(metrics) else list(metrics)
    val_loss = "loss" in specs
    fns = [_metric(m) for m in specs if m != "loss"]
    if specs and validation is None:
        raise InvalidArgumentError("fit: metrics are computed on validation data; pass validation=")
    val_data = _labelled(validation.data, validation.labels) if fns else None

    file = sys.stdout if file is None else file
    progress = None
    if verbose:
        tty = verbose == 1 and bool(getattr(file, "isatty", lambda: False)())
        progress = Progress(file, epochs, log_every, tty)
    bar = progress if progress is not None and progress.tty else None
    callbacks = list(callbacks)
    per_step = [cb.on_step_end for cb in callbacks if hasattr(cb, "on_step_end")]
    has_lr = f"{block}.lr" in prog.state
    if step is None:
        run_entry = prog._session.run

        def step(b):
            return float(run_entry(block, b)["loss"])
    history = History()
    run = TrainingRun(prog, block, history)
    for cb in callbacks:
        cb.on_train_begin(run)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        if progress is not None:
            progress.start(epoch, steps)
        if has_lr:
            history.lr.append(prog.get_lr(block))
        if isinstance(data, Mapping):
            order = arrays
            if shuffle:   # one gather, then contiguous slices: rng.permutation(n)'s batches, cheaper
                perm = rng.permutation(n)
                order = {k: a[perm] for k, a in arrays.items()}
            batches = ({k: a[i:i + batch_size] for k, a in order.items()} for i in range(0, n, batch_size))
        else:
            batches = (_pick(b, names, block) for b in data)
        losses: list[float] = []
        for b in batches:
            loss = step(b)
            losses.append(loss)
            for hook in per_step:
                hook(run, loss)
            if bar is not None:
                bar.update(losses)
        if not losses:
            raise InvalidArgumentError(f"fit: epoch {epoch} had no batches")
        logs = {"loss": sum(losses) / len(losses)}
        history.step_loss += losses
        history.loss.append(logs["loss"])
        if val_loss:
            logs["val_loss"] = _loss(prog, block, validation.data, validation.batch_size)
        if fns:
            out = predict(prog, validation.model, validation.data, validation.batch_size)
            for name, fn in fns:
                logs[f"val_{name}"] = float(fn(out, val_data))
        for name, value in logs.items():
            if name != "loss":
                history.metrics.setdefault(name, []).append(value)
        history.time.append(time.perf_counter() - t0)
        for cb in callbacks:
            cb.on_epoch_end(run, epoch, logs)
        if progress is not None:
            progress.end(losses, logs, last=run.stop or epoch == epochs)
        if run.stop:
            break
    for cb in callbacks:
        cb.on_train_end(run)
    return history
