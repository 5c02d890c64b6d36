"""The checks in a child process: a crash of compiled code (a signal) or a
hang becomes a failure of the program, and the next one gets a new worker."""
from __future__ import annotations

import multiprocessing as mp

from .ir import Program, emit


def _serve(conn) -> None:
    import torch
    torch.set_num_threads(1)
    from .checks import check
    while True:
        job = conn.recv()
        if job is None:
            return
        prog, seed, groups = job
        conn.send(check(prog, seed, groups))


class Worker:
    """The checks in a child process (a crash there is a result, not the end)."""

    def __init__(self):
        self.proc = None

    def start(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()

    def check(self, prog: Program, seed: int, groups, timeout: float = 600):
        from .checks import Failure, Outcome
        if self.proc is None or not self.proc.is_alive():
            self.start()
        try:
            self.conn.send((prog, seed, tuple(groups)))
            if self.conn.poll(timeout):
                return self.conn.recv()
        except (EOFError, OSError):
            pass
        self.proc.join(1)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
            why = f"no result after {timeout:.0f} s (killed)"
        else:
            why = f"the process died (exit code {self.proc.exitcode})"
        self.proc = None
        text = emit(prog)[0]
        return Outcome(text=text, failures=[Failure("crash", "worker", why)])

    def close(self):
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(5)


