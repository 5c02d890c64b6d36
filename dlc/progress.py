"""What a long compile is doing, for a person at a terminal: once it has
taken DELAY_S, a line on stderr redrawn in place at each stage (a pass, the
LLVM build's object groups), cleared when the compile ends. Nothing is
written when stderr is not a terminal (logs), nor for a quick compile."""
from __future__ import annotations

import sys
import time

DELAY_S = 1.0


class CompileProgress:
    def __init__(self, what: str, file=None, delay_s: float | None = None):
        self.what, self.file = what, sys.stderr if file is None else file
        self.delay_s = DELAY_S if delay_s is None else delay_s
        self.tty = bool(getattr(self.file, "isatty", lambda: False)())
        self.t0, self.shown = time.perf_counter(), False

    def stage(self, text: str) -> None:
        elapsed = time.perf_counter() - self.t0
        if self.tty and elapsed >= self.delay_s:
            self.file.write(f"\rdlc: compiling {self.what}: {text} ({elapsed:.1f} s)\x1b[K")
            self.file.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            self.file.write("\r\x1b[K")
            self.file.flush()
            self.shown = False


QUIET = CompileProgress("", file=None, delay_s=float("inf"))
