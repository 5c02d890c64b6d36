"""python -m tests.fuzz --minutes N [--seed S] [--out DIR]

Generates random programs (seeds S, S+1, ...) and checks each against
PyTorch and the metamorphic relations (tests/fuzz/checks.py) until N minutes
have passed. Each failing program is written to DIR as it was found
(`unreduced/`), and the first few of each kind are delta-debugged to a
minimal reproducer: `<kind>-seed<S>.dl` (the program, with the failure in
its header) and `.json` (the fuzzer's form, for `--replay`). At the end:
programs, comparisons, skips, mismatches by kind.

The checks run in a worker process, so a crash of the compiled code (a
signal) is recorded as a failure and the run goes on with a new worker.

    python -m tests.fuzz --minutes 10
    python -m tests.fuzz --replay /tmp/dlc-fuzz/forward-seed123.json
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from .ir import Block, Node, Program, emit
from .worker import Worker


# ------------------------------------------------------------ serialising

def to_json(prog: Program) -> str:
    return json.dumps(dataclasses.asdict(prog), indent=1)


def _tuples(v):
    if isinstance(v, list):
        return tuple(_tuples(e) for e in v)
    return v


def from_json(text: str) -> Program:
    data = json.loads(text)
    blocks = []
    for b in data["blocks"]:
        nodes = []
        for n in b.pop("nodes"):
            attrs = {k: _tuples(v) for k, v in n.pop("attrs").items()}
            shape = n.pop("shape")
            nodes.append(Node(attrs=attrs, shape=_tuples(shape) if shape is not None else None, **n))
        b["outputs"] = [tuple(o) for o in b["outputs"]]
        blocks.append(Block(nodes=nodes, **b))
    return Program(blocks)


# ------------------------------------------------------------------- run

def signature(f) -> str:
    """What a reduction must keep: the kind, and for errors the message."""
    if f.kind in ("crash", "runtime_error", "harness_error"):
        last = [line for line in f.detail.strip().splitlines() if line.strip()][-1:]
        return f.kind + ": " + re.sub(r"\d+", "N", last[0] if last else "")
    if f.kind == "generator_bug":
        m = re.search(r"error: ([^\n]*)", f.detail)
        return f.kind + ": " + re.sub(r"'[^']*'|\d+", "_", m.group(1) if m else f.detail[:80])
    return f.kind


def write_case(path: Path, prog: Program, seed: int, failures, note: str) -> None:
    text, _ = emit(prog)
    head = [f"# {note}", f"# compiled with dlc.compile(source, seed={seed}); checks: tests/fuzz/checks.py"]
    for f in failures[:6]:
        for i, line in enumerate(str(f).splitlines()[:12]):
            head.append(("# - " if i == 0 else "#   ") + line)
    path.with_suffix(".dl").write_text("\n".join(head) + "\n" + text)
    path.with_suffix(".json").write_text(to_json(prog))


def main(argv=None) -> int:
    from .checks import GROUPS, KIND_GROUP
    from .generate import generate
    from .reduce import reduce, size

    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=None, help="first program's seed (default: from the clock)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "dlc-fuzz")
    ap.add_argument("--size", choices=("small", "normal"), default="normal")
    ap.add_argument("--reduce-seconds", type=float, default=150.0,
                    help="time to delta-debug one failure (0: don't)")
    ap.add_argument("--reductions-per-kind", type=int, default=2)
    ap.add_argument("--replay", type=Path, help="check a saved .json program and print the failures")
    args = ap.parse_args(argv)

    worker = Worker()
    if args.replay:
        prog = from_json(args.replay.read_text())
        seed = int(re.search(r"seed(\d+)", args.replay.name).group(1)) if "seed" in args.replay.name else 0
        out = worker.check(prog, seed, GROUPS)
        print(out.text)
        for f in out.failures:
            print(f)
        worker.close()
        return 1 if out.failures else 0

    seed0 = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    args.out.mkdir(parents=True, exist_ok=True)
    # The libraries of random programs don't belong in the user's cache.
    os.environ.setdefault("DLC_CACHE_DIR", str(args.out / "cache"))
    (args.out / "unreduced").mkdir(exist_ok=True)
    print(f"fuzzing for {args.minutes:g} min from seed {seed0}; failures go to {args.out}", flush=True)
    deadline = time.monotonic() + 60 * args.minutes
    programs = comparisons = skipped = 0
    compile_s = check_s = 0.0
    bad_programs: collections.Counter = collections.Counter()
    bad_comparisons: collections.Counter = collections.Counter()
    reduced_kinds: collections.Counter = collections.Counter()
    found: list[str] = []
    seed = seed0
    while time.monotonic() < deadline:
        prog = generate(seed, args.size)
        out = worker.check(prog, seed, GROUPS)
        programs += 1
        comparisons += out.comparisons
        skipped += out.skipped
        compile_s += out.compile_s
        check_s += out.check_s
        kinds = list(dict.fromkeys(f.kind for f in out.failures))
        for f in out.failures:
            bad_comparisons[f.kind] += 1
        status = ", ".join(f"{k} x{sum(f.kind == k for f in out.failures)}" for k in kinds) or "ok"
        print(f"seed {seed}: {out.comparisons} comparisons, {out.skipped} skipped, "
              f"compile {out.compile_s:.1f} s, checks {out.check_s:.1f} s: {status}", flush=True)
        for kind in kinds:
            bad_programs[kind] += 1
            fails = [f for f in out.failures if f.kind == kind]
            write_case(args.out / "unreduced" / f"{kind}-seed{seed}", prog, seed, fails,
                       f"{kind}, as generated (seed {seed})")
            for f in fails[:3]:
                print("   ", str(f).splitlines()[0][:300])
            left = deadline - time.monotonic()
            if (args.reduce_seconds <= 0 or reduced_kinds[kind] >= args.reductions_per_kind
                    or left < 20):
                continue
            reduced_kinds[kind] += 1
            sig = signature(fails[0])
            group = KIND_GROUP.get(kind)
            groups = (group,) if group else ()
            if kind in ("crash", "runtime_error", "harness_error"):
                groups = GROUPS if fails[0].where != "compile" else ()

            def still_fails(cand, sig=sig, groups=groups):
                res = worker.check(cand, seed, groups)
                return any(signature(f) == sig for f in res.failures)

            t0 = time.monotonic()
            small, tried = reduce(prog, still_fails, min(args.reduce_seconds, left + 30))
            final = worker.check(small, seed, groups).failures
            final = [f for f in final if signature(f) == sig] or fails
            path = args.out / f"{kind}-seed{seed}"
            write_case(path, small, seed, final, f"{kind}: minimal reproducer (seed {seed})")
            found.append(str(path.with_suffix(".dl")))
            print(f"    reduced {size(prog)} -> {size(small)} (nodes, sizes) in "
                  f"{time.monotonic() - t0:.0f} s, {tried} candidates: {path.with_suffix('.dl')}",
                  flush=True)
        seed += 1
    worker.close()
    print()
    print(f"programs: {programs} (seeds {seed0}..{seed - 1}, size {args.size})")
    print(f"comparisons: {comparisons} made, {skipped} skipped (numerical hazards in the reference)")
    print(f"time: compile {compile_s:.0f} s, checks {check_s:.0f} s")
    if bad_programs:
        print("mismatches by kind (programs, failing comparisons):")
        for kind, n in bad_programs.most_common():
            print(f"  {kind}: {n} programs, {bad_comparisons[kind]} comparisons")
    else:
        print("mismatches: none")
    for p in found:
        print(f"reproducer: {p}")
    return 1 if bad_programs else 0


if __name__ == "__main__":
    sys.exit(main())
